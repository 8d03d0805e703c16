"""Fonts for share cards: which font draws each character of a headline.

A `FontChain` is the card's font (or the bundled one) followed by fonts installed on the host,
picked by their character maps the first time a headline needs a script the earlier ones lack
(Chinese/Japanese from `fonts-noto-cjk`, Kannada from `fonts-noto-core`, …). A character that no
font has is left out and logged once per script, rather than drawn as a box.
"""

from __future__ import annotations

import bisect
import logging
import threading
import unicodedata
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTCollection, TTFont
from PIL import ImageFont

log = logging.getLogger("siar.cards")

BUNDLED_FONT = Path(__file__).resolve().parent.parent / "assets" / "fonts" / "SiarCardSans-Bold.ttf"
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
# Pillow's fonts wrap FreeType faces, which one thread at a time may use: cards are measured
# and drawn under this lock (photo decoding and JPEG encoding run outside it).
FONT_LOCK = threading.RLock()


class CardFontError(Exception):
    """A configured font file cannot be used; the message names the file."""


class Coverage:
    """The characters a font maps to glyphs, kept as a sorted array (CJK fonts map ~65,000)."""

    def __init__(self, codepoints: Iterable[int]) -> None:
        self._points = array("I", sorted(codepoints))

    def __contains__(self, codepoint: object) -> bool:
        if not isinstance(codepoint, int):
            return False
        i = bisect.bisect_left(self._points, codepoint)
        return i < len(self._points) and self._points[i] == codepoint

    def __len__(self) -> int:
        return len(self._points)


@dataclass(frozen=True, eq=False)
class FontFace:
    """One face of a font file (`index` > 0 only inside .ttc collections)."""

    path: str
    index: int
    name: str
    coverage: Coverage

    def has(self, char: str) -> bool:
        return ord(char) in self.coverage


def _face_name(font: TTFont) -> str:
    return str(font["name"].getDebugName(4) or font["name"].getDebugName(1) or "?")


def _weight(font: TTFont) -> int:
    return int(font["OS/2"].usWeightClass) if "OS/2" in font else 400


def load_face(path: str | Path, index: int = 0) -> FontFace:
    """The face at `path` (a .ttf/.otf, or face `index` of a .ttc), or CardFontError."""
    try:
        font = TTFont(str(path), fontNumber=index, lazy=True)
        cmap = font.getBestCmap()
        if not cmap:
            raise CardFontError(f"font {path}: has no Unicode character map")
        return FontFace(str(path), index, _face_name(font), Coverage(cmap))
    except CardFontError:
        raise
    except Exception as exc:  # fontTools raises many kinds for a broken or foreign file
        raise CardFontError(f"font {path}: not a usable TrueType/OpenType font ({exc})") from exc


@lru_cache(maxsize=128)
def pil_font(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    """Pillow's font for a face at a pixel size (cached: cards try several sizes)."""
    return ImageFont.truetype(path, size, index=index, layout_engine=ImageFont.Layout.RAQM)


def is_neutral(char: str) -> bool:
    """Marks, spaces and format characters: drawn with the font of the letters around them."""
    category = unicodedata.category(char)
    return category[0] in "MZ" or category in ("Cf", "Cc")


def script_of(char: str) -> str:
    """A readable script-ish name for log lines: 'CJK', 'HIRAGANA', 'KANNADA', 'EMOJI'…"""
    name = unicodedata.name(char, "")
    if not name:
        return f"U+{ord(char):04X}"
    if 0x1F000 <= ord(char) <= 0x1FAFF or 0x2600 <= ord(char) <= 0x27BF:
        return "EMOJI/SYMBOL"
    return name.split()[0]


def cjk_region(text: str, language: str) -> str:
    """Which regional glyph set (Noto CJK face) suits `text`: JP, KR, SC, TC, HK, or ''."""
    lang = language.lower().replace("_", "-")
    if any("\u3040" <= c <= "\u30ff" for c in text) or lang.startswith("ja"):
        return "JP"
    if any("\uac00" <= c <= "\ud7af" or "\u1100" <= c <= "\u11ff" for c in text) or lang.startswith("ko"):
        return "KR"
    if lang in ("zh-hk", "zh-mo", "zh-hant-hk"):
        return "HK"
    if lang.startswith(("zh-tw", "zh-hant")):
        return "TC"
    if lang.startswith("zh") or any("\u4e00" <= c <= "\u9fff" for c in text):
        return "SC"
    return ""


@dataclass(frozen=True)
class _SystemFont:
    path: str
    faces: tuple[tuple[int, str, int], ...]  # (index, full name, weight class)
    coverage: Coverage  # of face 0: a collection's faces share one character set


def _scan(dirs: Iterable[str]) -> list[_SystemFont]:
    found: list[_SystemFont] = []
    files = sorted(
        {
            p
            for d in dirs
            for p in Path(d).expanduser().glob("**/*")
            if p.suffix.lower() in FONT_SUFFIXES and p.is_file()
        }
    )
    for path in files:
        if "emoji" in path.name.lower():  # colour bitmap fonts draw only at fixed sizes
            continue
        try:
            fonts = (
                TTCollection(str(path), lazy=True).fonts
                if path.suffix.lower() in (".ttc", ".otc")
                else [TTFont(str(path), lazy=True)]
            )
            cmap = fonts[0].getBestCmap() or {}
            faces = tuple((i, _face_name(f), _weight(f)) for i, f in enumerate(fonts))
        except Exception as exc:  # one broken font file must not stop the search
            log.debug("skipping font %s: %s", path, exc)
            continue
        if cmap:
            found.append(_SystemFont(str(path), faces, Coverage(cmap)))
    return found


def _style_score(name: str, weight: int, region: str) -> float:
    """Prefer a bold sans of the right CJK region, as the bundled font is a bold sans."""
    lower = name.lower()
    score = 3.0 if "sans" in lower or "hei" in lower or "gothic" in lower else 0.0
    score -= 3.0 if "serif" in lower and "sans" not in lower else 0.0
    score -= 5.0 if "mono" in lower else 0.0
    score -= abs(weight - 700) / 200
    score += 4.0 if region and f"cjk {region.lower()}" in lower else 0.0
    return score


class FontChain:
    """Fonts in order of preference; `face_for(char)` is the first one that has `char`."""

    _system: list[_SystemFont] | None = None  # scanned once per process, on first need
    _lock = threading.Lock()

    def __init__(self, faces: list[FontFace], region: str = "") -> None:
        self.faces = faces
        self.region = region
        self._missing_logged: set[str] = set()
        self._no_font: set[int] = set()

    def face_for(self, char: str) -> FontFace | None:
        for face in self.faces:
            if face.has(char):
                return face
        return None

    def usable_text(self, text: str) -> str:
        """`text` without the characters no font here or on the host can draw (each script
        without a font is logged once); searches the host's fonts for missing scripts."""
        missing = {c for c in text if not is_neutral(c) and self.face_for(c) is None}
        if missing - {chr(p) for p in self._no_font}:
            with FontChain._lock:
                self._add_system_faces({c for c in missing if ord(c) not in self._no_font})
        drop = {c for c in missing if self.face_for(c) is None}
        for char in sorted(drop):
            self._no_font.add(ord(char))
            script = script_of(char)
            if script not in self._missing_logged:
                self._missing_logged.add(script)
                hint = (
                    "colour emoji cannot be drawn on cards"
                    if script == "EMOJI/SYMBOL"
                    else "install a font for them (Debian: fonts-noto-core, fonts-noto-cjk)"
                )
                log.warning(
                    "share cards: no font has %s characters (e.g. %r, U+%04X); they are left out of "
                    "card text; %s",
                    script,
                    char,
                    ord(char),
                    hint,
                )
        return "".join(c for c in text if c not in drop) if drop else text

    def _add_system_faces(self, needed: set[str]) -> None:
        if FontChain._system is None:
            FontChain._system = _scan(SYSTEM_FONT_DIRS)
        while needed:
            best: tuple[tuple[int, float], _SystemFont, tuple[int, str, int]] | None = None
            for font in FontChain._system:
                count = sum(1 for c in needed if ord(c) in font.coverage)
                if not count:
                    continue
                face = max(font.faces, key=lambda f: _style_score(f[1], f[2], self.region))
                key = (count, _style_score(face[1], face[2], self.region))
                if best is None or key > best[0]:
                    best = (key, font, face)
            if best is None:
                return
            _, font, (index, name, _) = best
            chosen = FontFace(font.path, index, name, font.coverage)
            self.faces.append(chosen)
            log.info(
                "share cards: using %s (%s) for %s text",
                name,
                font.path,
                ", ".join(sorted({script_of(c) for c in needed if chosen.has(c)})),
            )
            needed = {c for c in needed if not chosen.has(c)}

    def runs(self, text: str) -> list[tuple[str, FontFace]]:
        """`text` cut where the drawing font changes; marks and spaces stay with their letters.
        Call on `usable_text` output: every letter then has a face."""
        runs: list[tuple[str, FontFace]] = []
        pending = ""  # neutral characters before the first letter
        for char in text:
            face = None if is_neutral(char) else self.face_for(char)
            if face is None:
                if runs:
                    runs[-1] = (runs[-1][0] + char, runs[-1][1])
                else:
                    pending += char
            elif runs and runs[-1][1] is face:
                runs[-1] = (runs[-1][0] + char, face)
            else:
                runs.append((pending + char, face))
                pending = ""
        if pending:
            runs.append((pending, self.faces[0]))
        return runs


_chains: dict[tuple[str, str], FontChain] = {}


def chain_for(font: str, region: str) -> FontChain:
    """The shared chain for a configured font (empty: bundled only) and CJK region."""
    key = (font, region)
    with FontChain._lock:
        if key not in _chains:
            faces = [load_face(font)] if font else []
            _chains[key] = FontChain([*faces, _bundled()], region)
        return _chains[key]


@lru_cache(maxsize=1)
def _bundled() -> FontFace:
    return load_face(BUNDLED_FONT)
