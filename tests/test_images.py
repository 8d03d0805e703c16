"""bot.images: header-only sizes, the bounded download, and shrinking without decompression bombs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import cast

import pytest
from PIL import Image

from bot.images import MAX_PIXELS, FetchedImage, ImageRefused, fetch_image, image_info, shrink_image
from bot.net import AddressGuard, BlockedAddress, http_client
from channels.bluesky import shrink_image as bluesky_shrink
from tests.feedserver import FeedServer, Route

BOMB_SIDE = 13_300


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A 1-bit grey PNG of side x side pixels, all zero: about 21 KB, 177 MP once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def peak_rss_growth_mb(action: object) -> float:
    """MB the process's peak RSS grew while `action()` ran (Linux: the peak is reset first)."""
    status = Path("/proc/self/status")
    clear_refs = Path("/proc/self/clear_refs")
    if not status.exists() or not clear_refs.exists():
        raise AssertionError("measuring RSS needs Linux /proc/self/status and /proc/self/clear_refs")

    def field(name: str) -> int:
        for line in status.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])  # kB
        raise AssertionError(f"no {name} in /proc/self/status")

    clear_refs.write_text("5")  # resets VmHWM to the current RSS
    before = field("VmRSS")
    try:
        action()  # type: ignore[operator]
    except ImageRefused:
        pass
    return (field("VmHWM") - before) / 1024


def test_the_bomb_is_small_and_refused_before_decoding() -> None:
    data = bomb_png()
    assert len(data) < 40_000
    with pytest.raises(ImageRefused, match=r"13300x13300 pixels, over the 40,000,000-pixel cap"):
        image_info(data)
    for action in (
        lambda: shrink_image(data, "image/png", max_bytes=1_000_000, max_side=2000),
        lambda: bluesky_shrink(data, "image/png"),
    ):
        with pytest.raises(ImageRefused, match="13300x13300"):
            action()
        assert peak_rss_growth_mb(action) < 20


async def test_fetch_image_refuses_the_bomb_and_rss_stays_small() -> None:
    data = bomb_png()
    with FeedServer() as server:
        server.routes["/thumb.png"] = Route(body=data, content_type="image/png")
        async with http_client(user_agent="t", timeout=5, guard=AddressGuard(allow_private=True)) as client:
            with pytest.raises(ImageRefused, match="13300x13300"):
                await fetch_image(client, server.url("/thumb.png"), max_bytes=15_000_000)
    # The control: decoding it as the old thumbnail code did would need 177 MB for the
    # 1-bit pixels alone and 530 MB as RGB; only header bytes are read here.
    assert peak_rss_growth_mb(lambda: image_info(data)) < 5


SMALL = Image.new("RGB", (64, 48), (200, 30, 30))


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_image_info_agrees_with_pillow(fmt: str, kind: str) -> None:
    for image in (SMALL, Image.new("RGBA", (3000, 7), (0, 0, 0, 0)), Image.new("L", (1, 999))):
        for options in ({}, {"lossless": True}) if fmt == "WEBP" else ({},):
            data = encoded(image if fmt != "JPEG" else image.convert("RGB"), fmt, **options)
            assert image_info(data) == (kind, *Image.open(io.BytesIO(data)).size)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a JPEG, PNG, GIF or WebP"),
        (b"<html>hello</html>", "not a JPEG"),
        (b"BM" + b"\0" * 100, "not a JPEG"),  # BMP: decodes, but is no web format
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 4, "unreadable image/png header"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "unreadable image/jpeg header"),
        # headers claiming huge sizes, with no pixel data at all
        (b"\xff\xd8\xff\xc0\x00\x11\x08\xfd\xe8\xfd\xe8\x03" + b"\0" * 9, "65000x65000 pixels"),
        (b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0\xfe\x3f\0\xfe\x3f\0", "16383x16383 pixels"),
        (b"GIF89a\xff\xff\xff\xff" + b"\0" * 10, "65535x65535 pixels"),
    ],
)
def test_image_info_refusals(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRefused, match=reason):
        image_info(data)


def test_shrink_keeps_small_web_images_and_reencodes_the_rest() -> None:
    png = encoded(SMALL, "PNG")
    assert shrink_image(png, "image/png", max_bytes=1_000_000, max_side=2000) == (png, "image/png")
    gif = encoded(SMALL, "GIF")
    data, kind = shrink_image(gif, "image/gif", max_bytes=1_000_000, max_side=2000)
    assert kind == "image/jpeg" and Image.open(io.BytesIO(data)).size == (64, 48)
    kept = shrink_image(gif, "image/gif", max_bytes=1_000_000, max_side=2000, keep=frozenset({"image/gif"}))
    assert kept == (gif, "image/gif")
    # a transparent PNG lands on white, not black
    clear = encoded(Image.new("RGBA", (50, 50), (0, 0, 0, 0)), "PNG")
    data, _ = shrink_image(clear, "image/png", max_bytes=1_000_000, max_side=20)
    shrunk = Image.open(io.BytesIO(data))
    assert shrunk.size == (20, 20) and cast(tuple[int, int], shrunk.convert("L").getextrema())[0] > 240
    with pytest.raises(ImageRefused, match="not a readable image"):
        shrink_image(png[:60] + b"\0" * 40, "image/png", max_bytes=10, max_side=10)


def test_a_big_jpeg_is_decoded_at_reduced_scale() -> None:
    big = encoded(Image.new("RGB", (6000, 4000), (10, 120, 200)), "JPEG", quality=90)
    data, kind = shrink_image(big, "image/jpeg", max_bytes=200_000, max_side=1000)
    assert kind == "image/jpeg" and max(Image.open(io.BytesIO(data)).size) <= 1000
    # draft() decodes at 1/4 scale here: 1500x1000 RGB (4.5 MB), not 6000x4000 (72 MB)
    growth = peak_rss_growth_mb(lambda: shrink_image(big, "image/jpeg", max_bytes=200_000, max_side=1000))
    assert growth < 40, growth


async def test_fetch_image_answers(tmp_path: Path) -> None:
    png = encoded(SMALL, "PNG")
    with FeedServer() as server:
        server.routes["/a.png"] = Route(body=png, content_type="text/plain")  # the bytes decide
        server.routes["/page"] = Route(body=b"<html></html>", content_type="image/png")
        server.routes["/gone.png"] = Route(status=404, body=b"no")
        server.routes["/big.png"] = Route(body=png, content_type="image/png")
        server.routes["/gz.png"] = Route(body=png, headers={"Content-Encoding": "gzip"})
        async with http_client(user_agent="t", timeout=5, guard=AddressGuard(allow_private=True)) as client:
            got = await fetch_image(client, server.url("/a.png"), max_bytes=100_000)
            assert got == FetchedImage(png, "image/png", 64, 48)
            for path, reason in [
                ("/page", "not a JPEG"),
                ("/gone.png", "HTTP 404"),
                ("/gz.png", "Content-Encoding: gzip"),
            ]:
                with pytest.raises(ImageRefused, match=reason):
                    await fetch_image(client, server.url(path), max_bytes=100_000)
            with pytest.raises(ImageRefused, match="over the 100-byte cap"):
                await fetch_image(client, server.url("/big.png"), max_bytes=100)
            with pytest.raises(ImageRefused, match="64x48 pixels"):
                await fetch_image(client, server.url("/a.png"), max_bytes=100_000, max_pixels=3000)
            for url in ((tmp_path / "x.png").as_uri(), "data:image/png;base64,AAAA", "ftp://h/x.png"):
                with pytest.raises(ImageRefused, match="not an http"):
                    await fetch_image(client, url, max_bytes=100_000)
        async with http_client(user_agent="t", timeout=5, guard=AddressGuard()) as strict:
            with pytest.raises(BlockedAddress, match="loopback"):
                await fetch_image(strict, server.url("/a.png"), max_bytes=100_000)
        assert [p for p, _ in server.requests].count("/a.png") == 2
    assert MAX_PIXELS == 40_000_000
