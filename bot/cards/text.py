"""Card text: measure lines by their rendered ink, break them, and fit a headline into a box.

Breaking is on spaces for space-separated scripts and between characters for Chinese and
Japanese (never before closing or after opening punctuation); a word wider than the line is
cut between characters. A headline is drawn at the largest size that fits, down to a minimum;
below that it is cut at a word boundary with an ellipsis. Widths come from Pillow's shaped
`getlength`/`getbbox`, per run of one font, so what is measured is what is drawn.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from PIL import ImageDraw, ImageFont, features

from bot.cards.fonts import FontChain, FontFace, is_neutral, pil_font

ELLIPSIS = "…"
MAX_TITLE_CHARS = 600  # more can never fit a card; measuring it would only cost time
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_NO_LINE_START = set(
    "、。，．,.:;!?）」』】〕〉》〙〗｝]〟’”…‥ー々ゝゞヽヾ・：；！？％)ぁぃぅぇぉっゃゅょァィゥェォッャュョ"
)
_NO_LINE_END = set("（「『【〔〈《〘〖｛[〝‘“(")
_TRAILING_JUNK = " ,;:-–—、，：；"
# Without libraqm Pillow cannot shape or reorder text, and refuses a direction or language.
HAS_RAQM = bool(features.check_feature("raqm"))


def clean_text(text: str) -> str:
    """NFC, one space for any run of whitespace, no bidi override/embedding controls (a feed
    could reverse a headline with U+202E), capped at MAX_TITLE_CHARS."""
    text = _BIDI_CONTROLS.sub("", unicodedata.normalize("NFC", text))
    text = " ".join(text.split())
    return text[:MAX_TITLE_CHARS]


_RTL_LANGUAGES = ("ar", "he", "iw", "fa", "ur", "ps", "yi", "ug", "ckb", "sd", "dv")


def paragraph_direction(text: str, language: str = "") -> str:
    """'rtl' for a right-to-left headline, else 'ltr'. Not the first strong character alone (the
    Unicode default): an Arabic headline often opens with a Latin name ("G20 تجتمع …"). An RTL
    `language` decides; otherwise whichever direction most letters have."""
    if language.lower().split("-")[0] in _RTL_LANGUAGES:
        return "rtl"
    rtl = ltr = 0
    for char in text:
        kind = unicodedata.bidirectional(char)
        rtl += kind in ("R", "AL")
        ltr += kind == "L"
    return "rtl" if rtl > ltr else "ltr"


def line_spacing(text: str) -> float:
    """Baseline-to-baseline distance as a multiple of the font size, by the scripts present:
    Arabic and Indic marks reach far above and below Latin letters."""
    tall = any(
        "\u0600" <= c <= "\u08ff" or "\u0900" <= c <= "\u0dff" or "\u0e00" <= c <= "\u0eff" for c in text
    )
    if tall:
        return 1.42
    if any(_breaks_anywhere(c) or "\uac00" <= c <= "\ud7af" or "\u0590" <= c <= "\u05ff" for c in text):
        return 1.3
    return 1.17


def _breaks_anywhere(char: str) -> bool:
    """Chinese/Japanese characters: a line may break before or after each."""
    p = ord(char)
    return (
        0x2E80 <= p <= 0x2FFF
        or 0x3000 <= p <= 0x30FF
        or 0x3100 <= p <= 0x31FF
        or 0x3400 <= p <= 0x4DBF
        or 0x4E00 <= p <= 0x9FFF
        or 0xF900 <= p <= 0xFAFF
        or 0xFF00 <= p <= 0xFFEF
        or 0x20000 <= p <= 0x3FFFF
    )


@dataclass
class Token:
    """An unbreakable piece of text; `space` = a space separates it from the previous one."""

    text: str
    space: bool


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    for word in text.split(" "):
        if not word:
            continue
        start = len(tokens)
        for char in word:
            glue = len(tokens) > start and (
                (char in _NO_LINE_START or is_neutral(char))
                or tokens[-1].text[-1] in _NO_LINE_END
                or not (_breaks_anywhere(char) or _breaks_anywhere(tokens[-1].text[-1]))
            )
            if glue:
                tokens[-1].text += char
            else:
                tokens.append(Token(char, space=len(tokens) == start and start > 0))
    return tokens


def join(tokens: list[Token]) -> str:
    return "".join((" " if t.space and i else "") + t.text for i, t in enumerate(tokens))


@dataclass(frozen=True)
class Shape:
    """A line as drawn: runs of one font each, left to right, and its ink box (x from the line's
    origin, y from its baseline) and advance width."""

    text: str
    runs: tuple[tuple[str, ImageFont.FreeTypeFont, str | None, float], ...]  # text, font, direction, x
    advance: float
    ink: tuple[float, float, float, float]  # left, top, right, bottom

    @property
    def width(self) -> float:
        """Horizontal room the line needs: its advance, widened by ink that overhangs it."""
        return max(self.advance, self.ink[2]) - min(0.0, self.ink[0])


class TextStyle:
    """Text of one size in a font chain, in a paragraph direction, shaped for a language."""

    def __init__(self, chain: FontChain, size: int, direction: str, language: str = "") -> None:
        self.chain, self.size, self.direction = chain, size, direction
        self.language = (language or None) if HAS_RAQM else None
        self._cache: dict[str, Shape] = {}

    def font(self, face: FontFace) -> ImageFont.FreeTypeFont:
        return pil_font(face.path, face.index, self.size)

    def shape(self, text: str) -> Shape:
        if text in self._cache:
            return self._cache[text]
        runs = self.chain.runs(text)
        if self.direction == "rtl":
            runs.reverse()  # runs of different fonts, placed right to left
        placed: list[tuple[str, ImageFont.FreeTypeFont, str | None, float]] = []
        x, ink = 0.0, (0.0, 0.0, 0.0, 0.0)
        for run_text, face in runs:
            font = self.font(face)
            direction: str | None = (
                self.direction
                if len(runs) == 1
                else ("rtl" if paragraph_direction(run_text) == "rtl" else "ltr")
            )
            direction = direction if HAS_RAQM else None
            left, top, right, bottom = font.getbbox(
                run_text, direction=direction, anchor="ls", language=self.language
            )
            box = (x + left, float(top), x + right, float(bottom))
            ink = (
                box
                if not placed
                else (min(ink[0], box[0]), min(ink[1], box[1]), max(ink[2], box[2]), max(ink[3], box[3]))
            )
            placed.append((run_text, font, direction, x))
            x += font.getlength(run_text, direction=direction, language=self.language)
        shape = Shape(text, tuple(placed), x, ink)
        self._cache[text] = shape
        return shape

    def draw(
        self, draw: ImageDraw.ImageDraw, origin: tuple[float, float], shape: Shape, fill: tuple[int, ...]
    ) -> None:
        """Draws `shape` with its origin (left end of the advance, baseline) at `origin`."""
        x0, baseline = origin
        for run_text, font, direction, x in shape.runs:
            draw.text(
                (x0 + x, baseline),
                run_text,
                font=font,
                fill=fill,
                anchor="ls",
                direction=direction,
                language=self.language,
            )


def _split_long(token: Token, style: TextStyle, width: float) -> list[Token]:
    """A word wider than the line, cut between characters (marks stay on their letter)."""
    pieces: list[Token] = []
    current = ""
    for char in token.text:
        if current and not is_neutral(char) and style.shape(current + char).width > width:
            pieces.append(Token(current, space=token.space if not pieces else False))
            current = char
        else:
            current += char
    pieces.append(Token(current, space=token.space if not pieces else False))
    return pieces


def wrap(tokens: list[Token], style: TextStyle, width: float) -> list[list[Token]]:
    """Tokens in lines, each as wide as `width` at most (greedy, by rendered width)."""
    lines: list[list[Token]] = []
    line: list[Token] = []
    queue = list(tokens)
    while queue:
        token = queue.pop(0)
        if style.shape(join([*line, token])).width <= width:
            line.append(token)
            continue
        if not line and style.shape(token.text).width > width:
            queue[:0] = _split_long(token, style, width)
            line.append(queue.pop(0))
            continue
        lines.append(line)
        line = [Token(token.text, space=False)]
        if style.shape(token.text).width > width:
            line = []
            queue.insert(0, Token(token.text, space=False))
    if line:
        lines.append(line)
    return lines


def ellipsize(tokens: list[Token], style: TextStyle, width: float, *, forced: bool) -> str:
    """The line of `tokens` within `width`: unchanged if it fits and not `forced`, else cut at a
    token boundary (between characters for a single long word) and ended with an ellipsis."""
    text = join(tokens)
    if not forced and style.shape(text).width <= width:
        return text
    kept = list(tokens)
    while kept:
        candidate = join(kept).rstrip(_TRAILING_JUNK) + ELLIPSIS
        if style.shape(candidate).width <= width:
            return candidate
        kept.pop()
    first = tokens[0].text if tokens else ""
    while first and style.shape(first + ELLIPSIS).width > width:
        first = first[:-1]
    return first + ELLIPSIS if first else ""


@dataclass(frozen=True)
class Block:
    """Lines of text placed in a box: `shapes` with baselines `line_height` apart; `ascent` is
    the first baseline's distance from the top, `height` the whole block's ink height."""

    style: TextStyle
    shapes: tuple[Shape, ...]
    line_height: float
    ascent: float
    height: float
    truncated: bool


def block(style: TextStyle, lines: list[str], line_height: float, truncated: bool) -> Block:
    shapes = tuple(style.shape(line) for line in lines)
    if not shapes:
        return Block(style, (), line_height, 0.0, 0.0, truncated)
    ascent = max(-s.ink[1] for s in shapes)
    descent = max(s.ink[3] for s in shapes)
    height = ascent + line_height * (len(shapes) - 1) + descent
    return Block(style, shapes, line_height, ascent, height, truncated)


def fit_text(
    text: str,
    chain: FontChain,
    box: tuple[float, float],
    sizes: tuple[int, int],
    direction: str,
    language: str = "",
) -> Block:
    """`text` wrapped into a box of (width, height) at the largest size in (max, min) that
    fits; at the minimum size, the lines that fit with the last one ellipsized."""
    width, height = box
    biggest, smallest = sizes
    tokens = tokenize(text)
    spacing = line_spacing(text)

    def attempt(size: int) -> Block:
        style = TextStyle(chain, size, direction, language)
        lines = [join(line) for line in wrap(tokens, style, width)]
        return block(style, lines, size * spacing, truncated=False)

    found = attempt(smallest)
    if found.height <= height:
        low, high = smallest, biggest  # the largest fitting size, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            candidate = attempt(middle)
            if candidate.height <= height:
                low, found = middle, candidate
            else:
                high = middle - 1
        return found
    style = found.style
    lines = wrap(tokens, style, width)
    count = len(lines)
    while (
        count > 1 and block(style, [join(x) for x in lines[:count]], found.line_height, True).height > height
    ):
        count -= 1
    kept = [join(line) for line in lines[: count - 1]]
    rest = [t for line in lines[count - 1 :] for t in line]
    kept.append(ellipsize(lines[count - 1], style, width, forced=len(rest) > len(lines[count - 1])))
    return block(style, kept, found.line_height, truncated=True)
