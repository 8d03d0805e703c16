"""What is under a card's text: the darkening gradient over a photo, the plain branded
background, and the label colour that reads on the accent."""

from __future__ import annotations

from PIL import Image

from bot.cards.settings import RGB


def luminance(rgb: RGB) -> float:
    """WCAG relative luminance of an sRGB colour: 0 for black, 1 for white."""

    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ink_on(background: RGB) -> RGB:
    """Black or white, whichever reads better on `background`."""
    return (17, 17, 17) if luminance(background) > 0.18 else (255, 255, 255)


def plain_background(size: tuple[int, int], colour: RGB) -> Image.Image:
    """The site's colour, darkening towards the bottom: a card for stories without a photo."""
    height = size[1]
    darker = tuple(round(c * 0.55) for c in colour)
    column = Image.linear_gradient("L").resize((1, height))
    top = Image.new("RGB", (1, height), colour)
    bottom = Image.new("RGB", (1, height), darker)
    return Image.composite(bottom, top, column).resize(size)


def darken_bottom(card: Image.Image, start: float, full: float, colour: RGB, strength: float) -> Image.Image:
    """`card` under a gradient of `colour`: clear above `start`, 85% of `strength` at `full`
    (where the text begins), `strength` at the bottom."""
    height = card.height
    values = []
    for y in range(height):
        if y <= start:
            t = 0.0
        elif y >= full:
            t = 0.85 + 0.15 * min(1.0, (y - full) / max(1.0, height - full))
        else:
            x = (y - start) / max(1.0, full - start)
            t = 0.85 * x * x * (3 - 2 * x)  # smoothstep: no visible edge where it begins
        values.append(round(255 * strength * t))
    mask = Image.new("L", (1, height))
    mask.putdata(values)
    return Image.composite(Image.new("RGB", card.size, colour), card, mask.resize(card.size))
