"""The lead photo of a card: decoded defensively, made upright RGB, cropped to fill the card.

Feeds choose the photo, so its size is checked in the header before any pixel is decoded, only
the common web formats are opened, big JPEGs decode at 1/2-1/8 scale (draft mode), and CMYK,
palette, grey, 16-bit and alpha images all end up as plain sRGB.
"""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageCms, ImageFilter, ImageOps

MAX_PIXELS = 40_000_000  # 40 MP: more than any news photo; a 13,000² PNG bomb is 169 MP
MAX_BYTES = 30_000_000
FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
_SRGB = ImageCms.createProfile("sRGB")
# An upright crop from the top of the frame: faces and headline subjects sit high in news
# photos, so a tall photo keeps its upper part and a wide one its middle.
CROP_TOP_WEIGHT = 0.3


class PhotoRefused(Exception):
    """The photo is not used (too big, not an image, broken); the message says why."""


def _open(data: bytes) -> Image.Image:
    if len(data) > MAX_BYTES:
        raise PhotoRefused(f"{len(data):,} bytes is over the {MAX_BYTES:,}-byte limit")
    with warnings.catch_warnings():
        # Pillow only warns between 89 and 179 MP; our own limit below is far lower.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as exc:
            raise PhotoRefused(f"too large to decode ({exc})") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise PhotoRefused(f"not a JPEG, PNG, WebP or GIF image ({exc})") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise PhotoRefused(f"{width}×{height} pixels: an empty image")
    if width * height > MAX_PIXELS:
        raise PhotoRefused(f"{width}×{height} pixels is over the {MAX_PIXELS // 1_000_000} MP limit")
    return image


def _transposed(image: Image.Image) -> bool:
    """Whether the EXIF orientation swaps width and height (orientations 5-8)."""
    try:
        return int(image.getexif().get(0x0112, 1)) in (5, 6, 7, 8)
    except Exception:  # a broken EXIF block is ignored, as browsers do
        return False


def _to_srgb(image: Image.Image, backdrop: tuple[int, int, int]) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = image.point(lambda v: v * (1 / 256)).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "RGBA", "CMYK", "L"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            mode = "RGBA" if image.mode == "RGBA" else "RGB"
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=mode)
            if converted is not None:
                image = converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: the naive conversion below
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, backdrop)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_photo(data: bytes, size: tuple[int, int], backdrop: tuple[int, int, int]) -> Image.Image:
    """The photo as an upright sRGB image, decoded no larger than needed to fill `size`;
    transparent parts show `backdrop`. Raises PhotoRefused."""
    image = _open(data)
    try:
        width, height = image.size
        target_w, target_h = size[::-1] if _transposed(image) else size
        if image.format == "JPEG":
            # Cover scale: the smaller side ratio decides how much of the photo is kept.
            cover = max(target_w / width, target_h / height)
            image.draft("RGB", (math.ceil(width * cover), math.ceil(height * cover)))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_srgb(image, backdrop)
    except PhotoRefused:
        raise
    except Exception as exc:  # decoders raise many kinds for hostile or truncated data
        raise PhotoRefused(f"cannot be decoded ({type(exc).__name__}: {exc})") from exc


def _blurred_fill(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The photo stretched over the card and blurred to a wash of its colours (cheap: the blur
    runs on a small copy)."""
    small = ImageOps.fit(image, (max(1, size[0] // 16), max(1, size[1] // 16)))
    small = small.filter(ImageFilter.GaussianBlur(2))
    return small.resize(size, Image.Resampling.BICUBIC)


def fill_card(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The photo cropped to fill `size` (centred across, upper-middle down). A photo that the
    crop would cut to under 40% of its area (a panorama on a portrait card) or enlarge over 3
    times is shown whole, high on the card, over a blurred wash of its own colours; a thumbnail
    too small even for that (under half the card either way at 2×) gives the wash alone."""
    width, height = image.size
    target_w, target_h = size
    cover = max(target_w / width, target_h / height)
    kept = (target_w / cover) * (target_h / cover) / (width * height)
    if kept >= 0.4 and cover <= 3:
        crop_w, crop_h = target_w / cover, target_h / cover
        left = (width - crop_w) / 2
        top = (height - crop_h) * CROP_TOP_WEIGHT
        return image.resize(
            size, Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h), reducing_gap=3.0
        )
    card = _blurred_fill(image, size)
    fit = min(target_w / width, (target_h * 0.62) / height, 2.0)
    shown_w, shown_h = max(1, round(width * fit)), max(1, round(height * fit))
    if shown_w < target_w / 2 and shown_h < target_h / 2:
        return card
    shown = image.resize((shown_w, shown_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    # High on the card, where the headline block below does not cover it.
    top = max(0, round(target_h * 0.34 - shown.height / 2))
    card.paste(shown, ((target_w - shown.width) // 2, top))
    return card
