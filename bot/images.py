"""Story images: one bounded download and one bounded shrink, both refusing decompression bombs.

An image's pixel count is read from its header by this module before Pillow sees the data:
a 21 KB PNG can claim 13,300 x 13,300 pixels (177 MP: 530 MB as RGB), and Pillow's own guard
only warns below 179 MP; its WebP opener even allocates the canvas at open time.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

# Pillow is imported where an image is decoded (shrink_image): fetching and sizing an image
# reads its header alone, and a daemon that shrinks none never loads Pillow.

# 40 MP: above 8K UHD (33 MP) and most camera originals, far below Pillow's 89 MP warning.
# Worst case decode: 160 MB (RGBA PNG); a JPEG decodes at 1/2..1/8 scale through draft().
MAX_PIXELS = 40_000_000
WEB_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
_PILLOW_FORMAT = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageRefused(ValueError):
    """The image cannot be used; `reason` says why (HTTP status, size, format, pixel count)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FetchedImage:
    data: bytes
    content_type: str  # sniffed from the bytes, not the server's header
    width: int
    height: int


def image_info(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """(content type, width, height) read from the header alone, without decoding.

    ImageRefused when `data` is not a JPEG, PNG, GIF or WebP image, its header is unreadable,
    or it has more than `max_pixels` pixels.
    """
    kind = sniff(data)
    if kind is None:
        raise ImageRefused("not a JPEG, PNG, GIF or WebP image")
    size = _header_size(data, kind)
    if size is None or size[0] <= 0 or size[1] <= 0:
        raise ImageRefused(f"unreadable {kind} header")
    width, height = size
    if width * height > max_pixels:
        raise ImageRefused(f"{width}x{height} pixels, over the {max_pixels:,}-pixel cap")
    return kind, width, height


def sniff(data: bytes) -> str | None:
    """The image type the bytes start with (JPEG, PNG, GIF or WebP), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    try:
        if kind == "image/png":
            return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" else None
        if kind == "image/gif":
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if kind == "image/webp":
            return _webp_size(data)
        return _jpeg_size(data)
    except struct.error:
        return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame size from the first SOFn segment."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        if marker in (0xD9, 0xDA) or length < 2:  # image end or scan start before any frame
            return None
        at += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # the canvas, for extended and animated files
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


async def fetch_image(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, max_pixels: int = MAX_PIXELS
) -> FetchedImage:
    """The image at `url` (http or https only), at most `max_bytes` long and `max_pixels` large.

    Raises ImageRefused for anything wrong with the answer or the image, and httpx.HTTPError
    (bot.net.BlockedAddress among them when `client` is guarded) when the request fails.
    """
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ImageRefused(f"not an http(s) URL: {url[:200]}")
    # identity: httpx would inflate a whole compressed chunk at once, past any cap.
    headers = {"Accept": "image/jpeg, image/png, image/webp, image/gif", "Accept-Encoding": "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise ImageRefused(f"HTTP {response.status_code} from {url}")
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise ImageRefused(f"compressed image (Content-Encoding: {encoding[:40]})")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ImageRefused(f"{declared} bytes, over the {max_bytes}-byte cap")
        chunks, size = [], 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > max_bytes:
                raise ImageRefused(f"over the {max_bytes}-byte cap")
            chunks.append(chunk)
    data = b"".join(chunks)
    kind, width, height = image_info(data, max_pixels)
    return FetchedImage(data, kind, width, height)


def shrink_image(
    data: bytes,
    content_type: str,
    *,
    max_bytes: int,
    max_side: int,
    max_pixels: int = MAX_PIXELS,
    keep: frozenset[str] = WEB_TYPES,
) -> tuple[bytes, str]:
    """`data` itself when it is within `max_bytes` and `max_side` and its sniffed type is in
    `keep`; else a JPEG re-encoded smaller and smaller until it fits. ImageRefused when the
    image is unreadable, over `max_pixels` (checked before any decoding) or cannot fit.
    `content_type` is the declared type; the bytes decide.
    """
    kind, width, height = image_info(data, max_pixels)
    if len(data) <= max_bytes and kind in keep and max(width, height) <= max_side:
        return data, kind
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above
            with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[kind]]) as image:
                if image.width * image.height > max_pixels:  # a GIF frame may outgrow its screen
                    raise ImageRefused(f"{image.width}x{image.height} pixels, over the cap")
                if kind == "image/jpeg":
                    image.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale
                base = _reduced_rgb(image, max_side)
    except ImageRefused:
        raise
    except Exception as exc:  # Pillow raises many kinds for broken or hostile files
        raise ImageRefused(f"not a readable image ({type(exc).__name__})") from None
    side = max(base.size)
    while True:
        copy = base.copy()
        copy.thumbnail((side, side))
        for quality in (85, 70, 55):
            out = io.BytesIO()
            copy.save(out, "JPEG", quality=quality, optimize=True)
            if out.tell() <= max_bytes:
                return out.getvalue(), "image/jpeg"
        if side <= 100:  # smaller says nothing on a card
            break
        side = max(100, int(side * 0.7))
    raise ImageRefused(f"cannot shrink the image under {max_bytes} bytes")


def _reduced_rgb(image: Any, max_side: int) -> Any:
    """The first frame, at most `max_side` on its longer side, as RGB (transparency on white)."""
    image.load()
    if image.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        frame = image
    else:  # the smallest mode that keeps what the image has ("1" as RGBA would be 32x larger)
        frame = image.convert({"1": "L", "P": "RGBA", "PA": "RGBA"}.get(image.mode, "RGB"))
    frame.thumbnail((max_side, max_side))  # before converting: the big copy is never made
    if frame.mode in ("RGBA", "LA"):
        from PIL import Image

        rgba = frame.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return frame.convert("RGB")
