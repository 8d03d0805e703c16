"""A share card: the story's photo filling the frame, a dark gradient rising from the bottom, and
over it the section label, the headline and the site's logo or name, all inside safe margins."""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, features

from bot.cards.backdrop import darken_bottom, ink_on, plain_background
from bot.cards.fonts import FONT_LOCK, FontChain, chain_for, cjk_region, load_face
from bot.cards.photo import PhotoRefused, decode_photo, fill_card
from bot.cards.settings import CardSettings, hex_to_rgb
from bot.cards.text import (
    Block,
    Shape,
    TextStyle,
    clean_text,
    ellipsize,
    fit_text,
    paragraph_direction,
    tokenize,
)

log = logging.getLogger("siar.cards")

INSTAGRAM_PORTRAIT = (1080, 1350)  # 4:5, the tallest a feed post may be
LINK_PREVIEW = (1200, 630)  # og:image / Twitter large card, ~1.91:1
MIN_SIDE, MAX_SIDE = 200, 4096
JPEG_QUALITY = 88
LOGO_MAX_PIXELS = 16_000_000
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CardLayout:
    """Where everything goes on a card of `size`. `safe` is the box all text and the logo stay
    in; boxes are (left, top, right, bottom) of the drawn ink or shape."""

    size: tuple[int, int]
    safe: Box
    direction: str
    title: Block
    title_origins: tuple[tuple[float, float], ...]  # (x, baseline) of each line
    title_box: Box
    label: Shape | None
    label_style: TextStyle | None
    label_box: Box | None  # the accent box around the label
    brand_box: Box
    brand_name: Shape | None  # None when a logo is drawn
    brand_style: TextStyle
    brand_origin: tuple[float, float]
    gradient_top: float


def _geometry(size: tuple[int, int]) -> dict[str, int]:
    width, height = size
    unit = min(width, height)
    return {
        "margin_x": round(width * 0.065),
        "margin_y": round(unit * 0.065),
        "brand": max(22, round(unit * 0.042)),
        "gap": round(unit * 0.04),
        "label": max(15, round(unit * 0.027)),
        "label_gap": round(unit * 0.028),
        # Link previews are shown small: their headline may take a larger share of the height.
        "title_max": round(unit * (0.082 if height > width else 0.1)),
        "title_min": max(18, round(unit * 0.047)),
    }


def _union(a: Box | None, b: Box) -> Box:
    return b if a is None else (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _label_text(section: str, language: str) -> str:
    text = clean_text(section)
    # Turkish and Azeri dotted/dotless i upper-case differently from str.upper().
    return text if language.lower().startswith(("tr", "az")) else text.upper()


def layout_card(
    story_title: str,
    section: str,
    site_name: str,
    size: tuple[int, int],
    settings: CardSettings,
    *,
    has_photo: bool,
    language: str = "",
    logo_size: tuple[int, int] | None = None,
) -> CardLayout:
    """The card's layout, computed from rendered text widths; `logo_size` is the logo's pixel
    size when one is drawn. A card without a photo centres its text block vertically.
    `settings.site_name`, when set, replaces `site_name`."""
    with FONT_LOCK:
        return _layout(story_title, section, site_name, size, settings, has_photo, language, logo_size)


def _layout(
    story_title: str,
    section: str,
    site_name: str,
    size: tuple[int, int],
    settings: CardSettings,
    has_photo: bool,
    language: str,
    logo_size: tuple[int, int] | None,
) -> CardLayout:
    width, height = size
    g = _geometry(size)
    safe: Box = (g["margin_x"], g["margin_y"], width - g["margin_x"], height - g["margin_y"])
    text_width = safe[2] - safe[0]
    title = clean_text(story_title)
    chain: FontChain = chain_for(settings.font, cjk_region(title + section, language))
    title = chain.usable_text(title)
    direction = paragraph_direction(title, language)

    brand_style = TextStyle(chain, g["brand"], "ltr", language)
    brand_name: Shape | None = None
    brand_origin = (safe[0], safe[3])
    if logo_size is not None:
        brand_box: Box = (safe[0], safe[3] - logo_size[1], safe[0] + logo_size[0], safe[3])
    else:
        name = chain.usable_text(clean_text(settings.site_name or site_name))
        brand_style = TextStyle(chain, g["brand"], paragraph_direction(name), language)
        brand_name = brand_style.shape(ellipsize(tokenize(name), brand_style, text_width * 0.7, forced=False))
        ink = brand_name.ink
        brand_origin = (safe[0] - min(0.0, ink[0]), safe[3] - ink[3])
        brand_box = (brand_origin[0] + ink[0], brand_origin[1] + ink[1], brand_origin[0] + ink[2], safe[3])
    brand_top = min(brand_box[1], safe[3] - g["brand"])

    label_text = chain.usable_text(_label_text(section, language))
    label_style = TextStyle(chain, g["label"], paragraph_direction(label_text), language)
    pad_x, pill_h = round(g["label"] * 0.7), round(g["label"] * 1.8)
    label = (
        label_style.shape(ellipsize(tokenize(label_text), label_style, text_width - 2 * pad_x, forced=False))
        if label_text
        else None
    )
    label_room = pill_h + g["label_gap"] if label else 0

    title_bottom = brand_top - g["gap"]
    room = title_bottom - safe[1] - label_room
    title_room = room if not has_photo or width > height else min(room, height * 0.42)
    # Without a photo the headline is the picture: it may grow into the empty space.
    biggest = g["title_max"] if has_photo else round(g["title_max"] * 1.2)
    block = fit_text(title, chain, (text_width, title_room), (biggest, g["title_min"]), direction, language)
    top = title_bottom - block.height
    if not has_photo:  # centre label + title in the space above the brand
        top = safe[1] + label_room + (room - block.height) / 2
    origins: list[tuple[float, float]] = []
    title_box: Box | None = None
    for i, shape in enumerate(block.shapes):
        baseline = top + block.ascent + i * block.line_height
        x = (
            safe[0] - min(0.0, shape.ink[0])
            if direction == "ltr"
            else (safe[2] - max(shape.advance, shape.ink[2]))
        )
        origins.append((x, baseline))
        title_box = _union(
            title_box, (x + shape.ink[0], baseline + shape.ink[1], x + shape.ink[2], baseline + shape.ink[3])
        )
    title_box = title_box or (safe[0], top, safe[0], top)

    label_box: Box | None = None
    if label is not None:
        pill_w = label.width + 2 * pad_x
        left = safe[0] if direction == "ltr" else safe[2] - pill_w
        label_box = (left, top - g["label_gap"] - pill_h, left + pill_w, top - g["label_gap"])
    text_top = label_box[1] if label_box else title_box[1]
    gradient_top = max(0.0, text_top - height * 0.22)
    return CardLayout(
        size,
        safe,
        direction,
        block,
        tuple(origins),
        title_box,
        label,
        label_style,
        label_box,
        brand_box,
        brand_name,
        brand_style,
        brand_origin,
        gradient_top,
    )


@lru_cache(maxsize=8)
def _logo(path: str, mtime: float, box: tuple[int, int]) -> Image.Image:
    """The logo PNG scaled to fit `box` (cached per file version and box)."""
    with Image.open(path, formats=("PNG",)) as image:
        if image.width * image.height > LOGO_MAX_PIXELS:
            raise ValueError(f"{image.width}×{image.height} is too large for a logo")
        image.load()
        logo = image.convert("RGBA")
    scale = min(box[0] / logo.width, box[1] / logo.height)
    return logo.resize(
        (max(1, round(logo.width * scale)), max(1, round(logo.height * scale))), Image.Resampling.LANCZOS
    )


def load_logo(path: str, size: tuple[int, int]) -> Image.Image:
    """The logo at `path` scaled for a card of `size`; OSError/ValueError if unusable."""
    g = _geometry(size)
    box = (round((size[0] - 2 * g["margin_x"]) * 0.45), round(g["brand"] * 1.25))
    return _logo(path, os.stat(path).st_mtime, box)


def check_card_settings(settings: CardSettings) -> list[str]:
    """Problems that would spoil every card (one line each, naming the file): for startup."""
    problems: list[str] = []
    if not features.check_feature("raqm"):
        problems.append(
            "cards: Pillow has no libraqm text layout (install libfribidi0): Arabic "
            "and Hebrew headlines would be drawn unshaped, in the wrong order"
        )
    if settings.font:
        try:
            load_face(settings.font)
        except Exception as exc:
            problems.append(f"cards.font: {exc}")
    if settings.logo:
        try:
            load_logo(settings.logo, INSTAGRAM_PORTRAIT)
        except Exception as exc:
            problems.append(f"cards.logo: {settings.logo}: not a usable PNG ({exc})")
    return problems


def _draw_text(card: Image.Image, layout: CardLayout, settings: CardSettings) -> None:
    draw = ImageDraw.Draw(card)
    text = hex_to_rgb(settings.colors.text)
    for shape, origin in zip(layout.title.shapes, layout.title_origins, strict=True):
        layout.title.style.draw(draw, origin, shape, text)
    if layout.label and layout.label_box and layout.label_style:
        accent = hex_to_rgb(settings.colors.accent)
        left, top, right, bottom = layout.label_box
        draw.rectangle((left, top, right - 1, bottom - 1), fill=accent)
        ink = layout.label.ink
        x = left + (right - left - layout.label.width) / 2 - min(0.0, ink[0])
        baseline = (top + bottom) / 2 - (ink[1] + ink[3]) / 2
        layout.label_style.draw(draw, (x, baseline), layout.label, ink_on(accent))
    if layout.brand_name is not None:
        layout.brand_style.draw(draw, layout.brand_origin, layout.brand_name, text)


def render_card(
    story_title: str,
    section: str,
    site_name: str,
    photo: bytes | None,
    size: tuple[int, int],
    settings: CardSettings,
    *,
    language: str = "",
) -> bytes:
    """A JPEG of exactly `size` (baseline JFIF, sRGB: the one format Instagram publishes).
    Without a usable `photo` (None, refused or undecodable) the card is plain, in the site's
    colours. `settings.site_name`, when set, replaces `site_name`."""
    if not all(MIN_SIDE <= side <= MAX_SIDE for side in size):
        raise ValueError(f"card size {size}: each side must be {MIN_SIDE}-{MAX_SIDE} pixels")
    colours = settings.colors
    background = hex_to_rgb(colours.background)
    image: Image.Image | None = None
    if photo:
        try:
            image = fill_card(decode_photo(photo, size, background), size)
        except PhotoRefused as exc:
            log.warning("share card for %r: photo not used: %s", story_title[:80], exc)
    logo: Image.Image | None = None
    if settings.logo:
        try:
            logo = load_logo(settings.logo, size)
        except (OSError, ValueError) as exc:
            log.error("share cards: logo %s is not usable (%s); writing the site name", settings.logo, exc)
    layout = layout_card(
        story_title,
        section,
        site_name,
        size,
        settings,
        has_photo=image is not None,
        language=language,
        logo_size=logo.size if logo else None,
    )
    if image is None:
        card = plain_background(size, background)
    else:
        full = (layout.label_box or layout.title_box)[1]
        gradient = hex_to_rgb(colours.gradient)
        card = darken_bottom(image, layout.gradient_top, full, gradient, colours.gradient_strength)
    with FONT_LOCK:
        _draw_text(card, layout, settings)
    if logo is not None:
        card.paste(logo, (round(layout.brand_box[0]), round(layout.brand_box[1])), logo)
    out = io.BytesIO()
    card.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, subsampling=0)
    return out.getvalue()
