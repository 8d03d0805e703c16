"""Operator-supplied regular expressions, run by RE2 so that no pattern can stall the daemon.

Python's `re` backtracks: `(a+)+$` on a 46-character link takes seconds, and holds the GIL
while it does (the daemon then ignores even SIGTERM). RE2 matches in time linear in the text,
at the price of a few features (backreferences, look-around, possessive and atomic groups).
A pattern that needs one is refused when the configuration loads, with the feature named.

`Pattern` is a pydantic field type (`include_url: Pattern | None`); `IgnoreCasePattern` is the
case-insensitive one. Both compile once, at validation.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, ClassVar

import re2
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

# What a pattern ever sees of a text (a link, a paragraph): RE2 is linear, but the text is
# encoded to UTF-8 on every call, so an unbounded input is still an unbounded cost.
SUBJECT_MAX = 10_000  # characters

# RE2's complaint (its operator or escape) -> the feature an operator would recognize.
_FEATURES = (
    ("invalid perl operator: (?<=", "a look-behind"),
    ("invalid perl operator: (?<!", "a negative look-behind"),
    ("invalid perl operator: (?=", "a look-ahead"),
    ("invalid perl operator: (?!", "a negative look-ahead"),
    ("invalid perl operator: (?>", "an atomic group"),
    ("invalid perl operator: (?(", "a conditional group"),
    ("invalid perl operator: (?#", "a comment group"),
    ("invalid perl operator: (?P", "a named backreference (?P=name)"),
    ("invalid perl operator: (?x", "the verbose flag (?x)"),
    ("invalid perl operator: (?a", "the ASCII flag (?a)"),
    ("invalid perl operator: (?u", "the unicode flag (?u)"),
    ("invalid perl operator: (?L", "the locale flag (?L)"),
    ("invalid escape sequence: \\Z", "\\Z (write \\z for the end of the text)"),
    ("invalid escape sequence: \\", "a backreference"),
    ("bad repetition operator: *+", "a possessive quantifier"),
    ("bad repetition operator: ++", "a possessive quantifier"),
    ("bad repetition operator: ?+", "a possessive quantifier"),
    ("bad repetition operator: }+", "a possessive quantifier"),
    ("invalid repetition size", "a repetition count above 1000"),
    ("pattern too large", "more states than the engine's memory budget allows"),
)


class PatternError(ValueError):
    """A pattern that is not a regular expression, or uses what RE2 cannot run."""


def compile_re2(source: str, *, ignore_case: bool = False) -> Any:
    """`source` compiled by RE2; PatternError saying what is wrong (and which feature) if not."""
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    options.case_sensitive = not ignore_case
    try:
        return re2.compile(source, options)
    except re2.error as exc:
        raise PatternError(_explain(source, exc)) from None


def _explain(source: str, exc: Exception) -> str:
    detail = exc.args[0] if exc.args else exc
    reason = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    try:
        with warnings.catch_warnings():  # Python warns of nested sets and the like: not our case
            warnings.simplefilter("ignore")
            re.compile(source)
    except re.error as python_error:
        return f"{source!r} is not a valid regular expression: {python_error}"
    except (RecursionError, OverflowError) as other:
        return f"{source!r} is not a usable regular expression: {other}"
    for prefix, feature in _FEATURES:
        if reason.startswith(prefix):
            return (
                f"uses {feature}, which the linear-time engine (RE2) does not support: {source!r} ({reason})"
            )
    return f"the linear-time engine (RE2) cannot run {source!r}: {reason}"


class Pattern:
    """A compiled, case-sensitive RE2 pattern; also a pydantic field type (from a string)."""

    IGNORE_CASE: ClassVar[bool] = False
    __slots__ = ("_compiled", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._compiled = compile_re2(source, ignore_case=self.IGNORE_CASE)

    def search(self, text: str) -> bool:
        """Whether the pattern occurs in `text` (its first SUBJECT_MAX characters)."""
        return self._compiled.search(text[:SUBJECT_MAX]) is not None

    def sub(self, replacement: str, text: str) -> str:
        """`text` with every match replaced by `replacement` (literally; `\\1` is not expanded).

        Only the first SUBJECT_MAX characters are searched; the rest is kept as it is.
        """
        head, tail = text[:SUBJECT_MAX], text[SUBJECT_MAX:]
        return str(self._compiled.sub(lambda _match: replacement, head)) + tail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and type(other) is type(self) and other.source == self.source

    def __hash__(self) -> int:
        return hash((type(self), self.source))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda pattern: pattern.source, when_used="always"
            ),
        )

    @classmethod
    def _validate(cls, value: Any) -> Pattern:
        if type(value) is cls:
            return value
        if isinstance(value, Pattern):  # the other case option: same source, compiled anew
            value = value.source
        if not isinstance(value, str):
            raise ValueError("must be a string holding a regular expression")
        return cls(value)


class IgnoreCasePattern(Pattern):
    """A Pattern that matches regardless of letter case."""

    IGNORE_CASE: ClassVar[bool] = True
    __slots__ = ()
