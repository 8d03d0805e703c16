"""Share cards: real feed headlines on photos of the odd shapes news photos come in."""

from __future__ import annotations

import io
import logging
import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter, features
from pydantic import ValidationError

from bot.cards import (
    INSTAGRAM_PORTRAIT,
    LINK_PREVIEW,
    CardSettings,
    PhotoRefused,
    check_card_settings,
    decode_photo,
    layout_card,
    render_card,
)
from bot.cards.compose import CardLayout
from bot.cards.fonts import chain_for, cjk_region, pil_font
from bot.cards.text import ELLIPSIS, TextStyle, paragraph_direction
from bot.cleaning import CleaningRules
from bot.normalize import parse_feed

CORPUS = Path(os.environ.get("SIAR_CORPUS", Path(__file__).parents[2] / "shared" / "corpus"))
OUTPUT = Path(__file__).parent / "output" / "cards"
SIZES = [INSTAGRAM_PORTRAIT, LINK_PREVIEW]
SETTINGS = CardSettings()
BACKGROUND = (0x0D, 0x21, 0x40)

LONG_ID = (
    "Presiden Jokowi Minta Menteri Percepat Penyaluran Bantuan Sosial bagi Korban Banjir Bandang "
    "di Kabupaten Luwu Utara, Sulawesi Selatan, yang Menewaskan Puluhan Warga"
)
CJK_TITLES = {
    "zh": "国务院常务会议部署进一步稳定经济增长措施，加大对中小企业和个体工商户的支持力度",
    "ja": "東京都、新型コロナウイルスの新規感染者数が過去最多に　専門家「医療体制は危機的」",
}
RTL_TITLES = {
    "ar": "الرئيس الإندونيسي يلتقي وفد مجموعة العشرين في جاكرتا لبحث التعاون الاقتصادي",
    "he": "ראש הממשלה נפגש עם נשיא ארה״ב בוושינגטון לשיחות על הסכם חדש",
    "ar-latin-first": "G20 تجتمع في جاكرتا لبحث التعاون الاقتصادي وأزمة الغذاء العالمية",
}
TITLE_300 = (
    "Pemerintah Provinsi DKI Jakarta Resmi Memperpanjang Pembatasan Sosial Berskala Besar "
    "Transisi Hingga Akhir Bulan Depan, Gubernur Menegaskan Bahwa Perkantoran, Pusat "
    "Perbelanjaan, Rumah Ibadah dan Transportasi Umum Tetap Wajib Menerapkan Protokol "
    "Kesehatan Ketat Serta Membatasi Kapasitas Pengunjung Hingga Lima Puluh Persen Saja"
)


# --- test photos, in the shapes real news photos come in -------------------------------------


def scene(width: int, height: int, seed: int = 1) -> Image.Image:
    """A photo-like picture: bright sky, buildings, a white street at the bottom (the worst case
    for white text), sensor noise."""
    sky = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB",
        (
            sky.point(lambda v: 120 + v // 2),
            sky.point(lambda v: 170 + v // 3),
            Image.new("L", (width, height), 235),
        ),
    )
    draw = ImageDraw.Draw(image)
    for i in range(12):
        x = (seed * 97 + i * 131) % width
        w, h = width // 10 + (i * 37) % (width // 6 + 1), height // 6 + (i * 53) % (height // 3 + 1)
        draw.rectangle(
            (x, height - h - height // 5, x + w, height),
            fill=((i * 70 + seed * 30) % 200 + 30, (i * 40) % 180 + 40, (i * 90) % 160 + 50),
        )
    draw.ellipse((width * 0.6, height * 0.1, width * 0.75, height * 0.1 + width * 0.15), fill=(255, 240, 180))
    draw.rectangle((0, height * 0.82, width, height), fill=(250, 250, 245))
    noise = Image.effect_noise((width, height), 30).convert("RGB")
    return Image.blend(image, noise, 0.1).filter(ImageFilter.GaussianBlur(1))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def exif_rotated_jpeg() -> bytes:
    """400×200 as stored (left half red, right half blue), EXIF orientation 6: shown as 200×400
    with red on top."""
    image = Image.new("RGB", (400, 200), (220, 0, 0))
    ImageDraw.Draw(image).rectangle((200, 0, 399, 199), fill=(0, 0, 220))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (600, 400), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    ImageDraw.Draw(image).rectangle((300, 0, 599, 399), fill=1)
    return encode(image, "PNG", transparency=0)  # left half transparent


def png_bomb(side: int = 13_000) -> bytes:
    """A valid greyscale PNG of side×side pixels (169 MP for 13,000): ~170 KB on the wire."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


PHOTOS: dict[str, bytes] = {
    "landscape_3x2": encode(scene(1600, 1067), "JPEG", quality=88),
    "panorama_4x1": encode(scene(4000, 1000, 2), "JPEG", quality=85),
    "tall_1x5": encode(scene(600, 3000, 3), "JPEG", quality=85),
    "tiny_120x90": encode(scene(120, 90, 4), "JPEG", quality=80),
    "cmyk": encode(scene(1200, 800, 5).convert("CMYK"), "JPEG", quality=90),
    "palette_alpha": palette_png_with_transparency(),
    "exif_rotated": exif_rotated_jpeg(),
    "webp": encode(scene(1000, 1000, 6), "WEBP", quality=80),
}
TRUNCATED = PHOTOS["landscape_3x2"][: len(PHOTOS["landscape_3x2"]) // 2]


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def changed_box(a: Image.Image, b: Image.Image, threshold: int = 48) -> tuple[int, int, int, int] | None:
    """Bounding box of the pixels that differ clearly between two renders (JPEG noise aside)."""
    diff = ImageChops.difference(a.convert("L"), b.convert("L")).point(lambda v: 255 if v > threshold else 0)
    return diff.getbbox()


def inside(
    box: tuple[float, float, float, float], outer: tuple[float, float, float, float], slack: float = 0.0
) -> bool:
    return (
        box[0] >= outer[0] - slack
        and box[1] >= outer[1] - slack
        and box[2] <= outer[2] + slack
        and box[3] <= outer[3] + slack
    )


def save_sample(name: str, jpeg: bytes) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    decoded(jpeg).save(OUTPUT / f"{name}.png")


# --- headlines from the real feeds --------------------------------------------------------------


def corpus_titles() -> list[tuple[str, str, str]]:
    """(title, section, language) of the 3 longest headlines of each real news feed."""
    news = CORPUS / "news"
    files = sorted(p for p in news.rglob("*") if p.suffix in (".xml", ".rss", ".atom"))
    files.append(Path(__file__).parent / "data" / "medcom-internasional.xml")  # Indonesian
    if len(files) < 10:
        pytest.fail(f"news corpus not found at {news}; set SIAR_CORPUS to shared/corpus")
    found: list[tuple[str, str, str]] = []
    for path in files:
        stories = parse_feed(
            path.read_bytes(), "http://127.0.0.1/feed", {}, CleaningRules(), "corpus"
        ).stories
        for story in sorted(stories, key=lambda s: len(s.title), reverse=True)[:3]:
            found.append((story.title, story.section, story.language))
    return found


def test_corpus_has_headlines_in_several_languages() -> None:
    titles = corpus_titles()
    assert len(titles) >= 30
    assert {"id", "it", "pt", "en"} <= {lang[:2].lower() for _, _, lang in titles if lang}


@pytest.mark.parametrize("size", SIZES, ids=["portrait", "link"])
def test_corpus_headlines_stay_inside_the_safe_margins(size: tuple[int, int]) -> None:
    titles = [
        *corpus_titles(),
        (LONG_ID, "Nasional", "id"),
        (TITLE_300, "Megapolitan", "id"),
        *((t, "国际", lang) for lang, t in CJK_TITLES.items()),
        *((t, "دولي", lang) for lang, t in RTL_TITLES.items()),
    ]
    for title, section, language in titles:
        for has_photo in (True, False):
            layout = layout_card(
                title, section, "tempo.co", size, SETTINGS, has_photo=has_photo, language=language
            )
            where = f"{title[:50]!r} on {size} (photo: {has_photo})"
            assert inside(layout.title_box, layout.safe), where
            assert layout.label_box is None or inside(layout.label_box, layout.safe), where
            assert inside(layout.brand_box, layout.safe), where
            assert layout.label_box is None or layout.label_box[3] <= layout.title_box[1], where
            assert layout.title_box[3] <= layout.brand_box[1], where
            width = layout.safe[2] - layout.safe[0]
            assert all(shape.width <= width for shape in layout.title.shapes), where


# --- output: format, size, photos of every odd shape --------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=["portrait", "link"])
@pytest.mark.parametrize("kind", sorted(PHOTOS))
def test_every_photo_shape_gives_a_jpeg_of_exactly_the_size(kind: str, size: tuple[int, int]) -> None:
    title, section, language = corpus_titles()[sorted(PHOTOS).index(kind) * 3]
    jpeg = render_card(title, section, "tempo.co", PHOTOS[kind], size, SETTINGS, language=language)
    image = decoded(jpeg)
    assert (image.format, image.size, image.mode) == ("JPEG", size, "RGB")
    assert jpeg[:3] == b"\xff\xd8\xff" and b"JFIF" in jpeg[:20]  # plain JFIF, as Instagram wants
    plain = decoded(render_card(title, section, "tempo.co", None, size, SETTINGS, language=language))
    assert changed_box(image, plain) is not None, "the photo was not used"
    save_sample(f"{kind}_{size[0]}x{size[1]}", jpeg)


def test_cmyk_jpeg_keeps_its_colours() -> None:
    cyan = encode(Image.new("CMYK", (300, 300), (255, 0, 0, 0)), "JPEG", quality=95)
    image = decode_photo(cyan, (100, 100), BACKGROUND)
    assert image.size == (150, 150)  # draft mode: decoded at 1/2 scale, still covering 100×100
    r, g, b = image.getpixel((75, 75))  # type: ignore[misc]
    assert r < 60 and g > 190 and b > 190, (r, g, b)


def test_palette_png_transparency_shows_the_backdrop() -> None:
    image = decode_photo(PHOTOS["palette_alpha"], (100, 100), BACKGROUND)
    assert image.mode == "RGB"
    assert image.getpixel((10, 10)) == BACKGROUND
    assert image.getpixel((590, 10)) == (200, 30, 30)


def test_exif_orientation_is_applied() -> None:
    image = decode_photo(PHOTOS["exif_rotated"], INSTAGRAM_PORTRAIT, BACKGROUND)
    assert image.size == (200, 400)
    top, bottom = image.getpixel((100, 20)), image.getpixel((100, 380))
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0], (top, bottom)  # type: ignore[index]


def test_big_jpeg_decodes_at_reduced_scale() -> None:
    big = encode(scene(6000, 4000), "JPEG", quality=70)
    image = decode_photo(big, INSTAGRAM_PORTRAIT, BACKGROUND)
    assert image.size == (3000, 2000)  # draft mode: 1/2 scale still covers 1080×1350


@pytest.mark.parametrize("bad", ["truncated", "bomb", "html", "empty_gif"])
def test_unusable_photo_gives_the_plain_branded_card(bad: str, caplog: pytest.LogCaptureFixture) -> None:
    data = {
        "truncated": TRUNCATED,
        "bomb": png_bomb(),
        "html": b"<html>not an image</html>",
        "empty_gif": b"GIF89a\x00\x00\x00\x00\x00\x00\x00;",
    }[bad]
    started = time.perf_counter()
    with pytest.raises(PhotoRefused) as refused:
        decode_photo(data, INSTAGRAM_PORTRAIT, BACKGROUND)
    if bad == "bomb":
        assert "MP limit" in str(refused.value)  # refused from the header, before decoding
        assert time.perf_counter() - started < 1.0
    with caplog.at_level(logging.WARNING, logger="siar.cards"):
        card = decoded(render_card(LONG_ID, "Nasional", "tempo.co", data, INSTAGRAM_PORTRAIT, SETTINGS))
    assert "photo not used" in caplog.text
    plain = decoded(render_card(LONG_ID, "Nasional", "tempo.co", None, INSTAGRAM_PORTRAIT, SETTINGS))
    assert changed_box(card, plain) is None
    assert card.getpixel((20, 20)) == pytest.approx(BACKGROUND, abs=6)


def test_size_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="card size"):
        render_card("x", "", "site", None, (100, 5000), SETTINGS)


# --- text: fitting, shrinking, ellipsis, safe margins in real pixels ---------------------------


def test_font_shrinks_for_long_titles_then_stops_at_the_minimum_and_ellipsizes() -> None:
    def layout(title: str) -> CardLayout:
        return layout_card(title, "Nasional", "tempo.co", INSTAGRAM_PORTRAIT, SETTINGS, has_photo=True)

    short, long_, huge = layout("Gempa Guncang Cianjur"), layout(LONG_ID), layout(TITLE_300)
    sizes = [x.title.style.size for x in (short, long_, huge)]
    assert sizes[0] > sizes[1] > sizes[2], sizes
    assert sizes[2] == layout(TITLE_300 + " " + TITLE_300).title.style.size  # the minimum
    assert not short.title.truncated and not long_.title.truncated
    assert huge.title.truncated
    lines = [s.text for s in huge.title.shapes]
    assert lines[-1].endswith(ELLIPSIS)
    shown = " ".join(lines)[: -len(ELLIPSIS)].rstrip(" ,").split(" ")
    assert shown == TITLE_300.split(" ")[: len(shown)], "not cut at a word boundary"
    assert len(" ".join(lines)) < len(TITLE_300)


@pytest.mark.parametrize("size", SIZES, ids=["portrait", "link"])
@pytest.mark.parametrize(
    "title",
    [LONG_ID, TITLE_300, "Kata" * 60, CJK_TITLES["zh"], RTL_TITLES["ar"]],
    ids=["long_id", "300_chars", "one_huge_word", "zh", "ar"],
)
def test_drawn_text_stays_inside_the_safe_margins(title: str, size: tuple[int, int]) -> None:
    card = decoded(render_card(title, "Internasional", "tempo.co", None, size, SETTINGS))
    empty = decoded(render_card("", "", "", None, size, SETTINGS))
    layout = layout_card(title, "Internasional", "tempo.co", size, SETTINGS, has_photo=False)
    drawn = changed_box(card, empty)
    assert drawn is not None
    assert inside(drawn, layout.safe, slack=2), (drawn, layout.safe)
    assert drawn[2] - drawn[0] > (layout.safe[2] - layout.safe[0]) * 0.5  # the text really is there


def test_cjk_title_is_drawn_with_real_glyphs_not_boxes() -> None:
    for language, title in CJK_TITLES.items():
        chain = chain_for("", cjk_region(title, language))
        assert chain.usable_text(title) == title, (
            "no CJK font on this machine: install Debian's fonts-noto-cjk (scripts/system-deps.sh)"
        )
        for char in set(title) - {" ", "\u3000"}:
            face = chain.face_for(char)
            assert face is not None and face.has(char), char
            font = pil_font(face.path, face.index, 48)
            glyph, notdef = Image.new("L", (80, 80)), Image.new("L", (80, 80))
            ImageDraw.Draw(glyph).text((10, 60), char, font=font, fill=255, anchor="ls")
            ImageDraw.Draw(notdef).text((10, 60), "\u0378", font=font, fill=255, anchor="ls")
            assert notdef.getbbox() is not None  # U+0378 is unassigned: the font draws .notdef
            assert glyph.getbbox() is not None and glyph.tobytes() != notdef.tobytes(), (char, face.name)
    card = render_card(
        CJK_TITLES["ja"], "国際", "朝日", PHOTOS["landscape_3x2"], INSTAGRAM_PORTRAIT, SETTINGS, language="ja"
    )
    save_sample("ja_portrait", card)


def test_mixed_chinese_and_latin_uses_each_script_font() -> None:
    title = "苹果发布iPhone 16，售价5999元起"
    chain = chain_for("", cjk_region(title, "zh"))
    chain.usable_text(title)
    runs = chain.runs(title)
    assert "".join(text for text, _ in runs) == title
    assert len({face.path for _, face in runs}) == 2
    style = TextStyle(chain, 60, "ltr", "zh")
    assert style.shape(title).advance == pytest.approx(sum(style.shape(t).advance for t, _ in runs), abs=2)


def first_letter_marked(title: str, style: TextStyle, mark: str) -> str:
    """`title` with a combining `mark` on its first letter: the first letter's ink changes, its
    width does not, so nothing else on the line moves."""
    word = title.split(" ")[0]
    assert style.shape(word[0] + mark + word[1:]).advance == pytest.approx(style.shape(word).advance)
    return title[0] + mark + title[1:]


def first_letter_box(
    title: str, mark: str, language: str = ""
) -> tuple[tuple[int, int, int, int], tuple[float, ...], CardLayout]:
    """Where the first logical letter of the card's first title line is drawn (found by drawing
    the line again with a combining mark on that letter), and the line's ink box."""
    layout = layout_card(title, "", "", LINK_PREVIEW, SETTINGS, has_photo=False, language=language)
    style, shape = layout.title.style, layout.title.shapes[0]
    origin = layout.title_origins[0]
    marked = style.shape(first_letter_marked(shape.text, style, mark))
    plain_line, marked_line = Image.new("L", LINK_PREVIEW), Image.new("L", LINK_PREVIEW)
    style.draw(ImageDraw.Draw(plain_line), origin, shape, (255,))
    style.draw(ImageDraw.Draw(marked_line), origin, marked, (255,))
    box = changed_box(plain_line, marked_line)
    assert box is not None, "the mark was not drawn"
    x, baseline = origin
    line = (x + shape.ink[0], baseline + shape.ink[1], x + shape.ink[2], baseline + shape.ink[3])
    return box, line, layout


@pytest.mark.parametrize("language", sorted(RTL_TITLES))
def test_rtl_title_is_shaped_and_starts_at_the_right(language: str) -> None:
    assert features.check_feature("raqm"), "Pillow lacks libraqm: install Debian's libfribidi0"
    title = RTL_TITLES[language]
    language = "" if language == "ar-latin-first" else language  # no hint: the letters decide
    assert paragraph_direction(title) == "rtl"
    marks = {"ar": "\u064e", "he": "\u05b8", "": "\u0323"}
    box, line, layout = first_letter_box(title, marks[language], language)
    assert box[0] > line[0] + (line[2] - line[0]) * 0.85, (box, line)  # drawn at the right end
    assert line[2] >= layout.safe[2] - 4  # right-aligned
    save_sample(
        f"{language or 'ar_mixed'}_link",
        render_card(
            title,
            "חדשות" if language == "he" else "دولي",
            "siar",
            PHOTOS["landscape_3x2"],
            LINK_PREVIEW,
            SETTINGS,
            language=language,
        ),
    )


def test_ltr_title_starts_at_the_left() -> None:
    box, line, layout = first_letter_box("Pemerintah Umumkan Kenaikan Harga BBM Mulai Hari Ini", "\u0323")
    assert box[2] < line[0] + (line[2] - line[0]) * 0.15, (box, line)
    assert line[0] <= layout.safe[0] + 4


def test_bidi_override_in_a_feed_title_is_ignored() -> None:
    layout = layout_card("\u202eBerita Terkini\u202c", "", "", LINK_PREVIEW, SETTINGS, has_photo=False)
    assert [s.text for s in layout.title.shapes] == ["Berita Terkini"]


def test_characters_without_any_font_are_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="siar.cards"):
        layout = layout_card("Harga BBM \U000f0001 Naik", "", "", LINK_PREVIEW, SETTINGS, has_photo=False)
    assert [s.text for s in layout.title.shapes] == ["Harga BBM Naik"]
    assert "no font has" in caplog.text and "U+F0001" in caplog.text


# --- branding and settings ----------------------------------------------------------------------


def test_logo_is_drawn_in_the_brand_box(tmp_path: Path) -> None:
    logo = Image.new("RGBA", (400, 100), (0, 0, 0, 0))
    ImageDraw.Draw(logo).rectangle((0, 0, 399, 99), fill=(255, 0, 255, 255))
    (tmp_path / "logo.png").write_bytes(encode(logo, "PNG"))
    settings = CardSettings(logo="logo.png").resolved(tmp_path)
    assert settings.logo == str(tmp_path / "logo.png")
    assert check_card_settings(settings) == []
    card = decoded(
        render_card(LONG_ID, "Nasional", "tempo.co", PHOTOS["landscape_3x2"], INSTAGRAM_PORTRAIT, settings)
    )
    layout = layout_card(
        LONG_ID, "Nasional", "tempo.co", INSTAGRAM_PORTRAIT, settings, has_photo=True, logo_size=(200, 50)
    )
    x0, y0 = layout.brand_box[:2]
    r, g, b = card.getpixel((int(x0) + 20, int(y0) + 20))  # type: ignore[misc]
    assert r > 200 and g < 60 and b > 200, (r, g, b)
    save_sample("logo_portrait", encode(card, "JPEG"))


def test_broken_logo_is_reported_and_the_site_name_written(tmp_path: Path) -> None:
    (tmp_path / "logo.png").write_bytes(b"not a png")
    settings = CardSettings(logo=str(tmp_path / "logo.png"))
    assert any(p.startswith("cards.logo:") and "logo.png" in p for p in check_card_settings(settings))
    jpeg = render_card("Judul", "Nasional", "tempo.co", None, LINK_PREVIEW, settings)
    assert decoded(jpeg).size == LINK_PREVIEW


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValidationError, match="#rrggbb"):
        CardSettings.model_validate({"colors": {"accent": "yellow"}})
    with pytest.raises(ValidationError, match="PNG"):
        CardSettings(logo="logo.svg")
    with pytest.raises(ValidationError, match="gradient_strength"):
        CardSettings.model_validate({"colors": {"gradient_strength": 1.5}})
    with pytest.raises(ValidationError, match="extra"):
        CardSettings.model_validate({"colour": {}})
    problems = check_card_settings(CardSettings(font="/nonexistent/font.ttf"))
    assert problems == [problems[0]] and problems[0].startswith("cards.font: font /nonexistent/font.ttf")


# On this red, black text has a contrast of 4.96:1 and white 4.23:1 (WCAG).
@pytest.mark.parametrize(("accent", "dark_text"), [("#ffc21a", True), ("#1a237e", False), ("#e53935", True)])
def test_label_text_reads_on_the_accent_colour(accent: str, dark_text: bool) -> None:
    settings = CardSettings.model_validate({"colors": {"accent": accent}})
    card = decoded(render_card("Judul", "NASIONAL", "siar", None, LINK_PREVIEW, settings))
    layout = layout_card("Judul", "NASIONAL", "siar", LINK_PREVIEW, settings, has_photo=False)
    assert layout.label_box is not None
    pill = card.crop(tuple(round(v) for v in layout.label_box)).convert("L")  # type: ignore[arg-type]
    lowest, highest = cast(tuple[int, int], pill.getextrema())
    assert (lowest < 60) if dark_text else (highest > 200), (accent, lowest, highest)


def test_site_name_from_settings_replaces_the_callers() -> None:
    layout = layout_card(
        "Judul", "", "siar", LINK_PREVIEW, CardSettings(site_name="TEMPO.CO"), has_photo=False
    )
    assert layout.brand_name is not None and layout.brand_name.text == "TEMPO.CO"


def test_cards_rendered_in_threads_equal_those_rendered_one_by_one() -> None:
    jobs = [
        (LONG_ID, "Nasional", PHOTOS["landscape_3x2"], INSTAGRAM_PORTRAIT, "id"),
        (CJK_TITLES["zh"], "国际", PHOTOS["webp"], LINK_PREVIEW, "zh"),
        (RTL_TITLES["ar"], "دولي", None, INSTAGRAM_PORTRAIT, "ar"),
        (TITLE_300, "Megapolitan", PHOTOS["cmyk"], LINK_PREVIEW, "id"),
    ] * 2
    expected = [render_card(t, s, "tempo.co", p, z, SETTINGS, language=lang) for t, s, p, z, lang in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(
            pool.map(lambda j: render_card(j[0], j[1], "tempo.co", j[2], j[3], SETTINGS, language=j[4]), jobs)
        )
    assert got == expected
