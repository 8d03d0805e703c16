"""Editorial rules applied while polling: which stories are breaking news (`[[priority]]`), and
the correction check of stories already stored (bot.corrections).

```toml
[[priority]]
title_pattern = "^(BREAKING|Breaking News|Berita Terkini):"   # RE2, like the filters
label = "🔴 BREAKING"                                          # the template's {{ breaking }}

[[priority]]
feeds = ["nasional"]
sections = ["Bencana"]
```

Within a rule every key given must match (a list matches when any of its items does); the first
rule that matches labels the story, and its outbox rows jump every channel's queue (priority 1).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, model_validator

from bot.corrections import CorrectionBatch
from bot.patterns import Pattern
from bot.types import Story

if TYPE_CHECKING:
    from bot.config import Config
    from bot.normalize import ParsedFeed

DEFAULT_LABEL = "🔴 BREAKING"


class PriorityRule(BaseModel):
    """One `[[priority]]` table."""

    model_config = ConfigDict(extra="forbid")

    feeds: list[str] = []  # feed names
    sections: list[str] = []  # case-insensitive
    tags: list[str] = []  # case-insensitive, any of the story's tags or categories
    title_pattern: Pattern | None = None  # RE2, searched in the title
    label: str = DEFAULT_LABEL

    @model_validator(mode="after")
    def _says_something(self) -> PriorityRule:
        if not (self.feeds or self.sections or self.tags or self.title_pattern is not None):
            raise ValueError("give at least one of feeds, sections, tags or title_pattern")
        if not self.label.strip():
            raise ValueError("label must not be empty (it marks the story as breaking)")
        return self

    def matches(self, story: Story) -> bool:
        """Whether every condition this rule gives holds for `story`."""
        if self.feeds and story.feed not in self.feeds:
            return False
        if self.sections and story.section.casefold() not in _folded(self.sections):
            return False
        if self.tags and not {t.casefold() for t in (*story.tags, *story.categories)} & _folded(self.tags):
            return False
        return self.title_pattern is None or self.title_pattern.search(story.title)


def breaking_label(story: Story, rules: Sequence[PriorityRule]) -> str:
    """The label of the first rule `story` matches, or "" (not breaking news)."""
    for rule in rules:
        if rule.matches(story):
            return rule.label
    return ""


def label(stories: Iterable[Story], rules: Sequence[PriorityRule]) -> list[Story]:
    """`stories` with `breaking` set by `rules` (pure)."""
    return [replace(s, breaking=breaking_label(s, rules)) for s in stories]


class Editorial:
    """What a poll applies of the editorial rules: labels new stories, and gives the store the
    correction check to run in the poll's transaction."""

    def __init__(
        self, config: Config, targets: Mapping[str, Any], channels: Mapping[str, Any] | None = None
    ) -> None:
        self.config = config
        self.targets = targets  # channel settings by name (those the poll routes to)
        self.channels = channels if channels is not None else {}  # running channels: can_edit

    def label(self, stories: Iterable[Story]) -> list[Story]:
        return label(stories, self.config.priority)

    def corrections(
        self, feed: str, parsed: ParsedFeed, known: Container[str] | None = None
    ) -> CorrectionBatch:
        """The check of `parsed`'s known entries (run by Stories.record_poll); `known`: the
        uids the store holds (the others are new: nothing of theirs is out to correct)."""
        stories = parsed.stories if known is None else [s for s in parsed.stories if s.uid in known]
        return CorrectionBatch(
            feed=feed,
            stories=self.label(stories),
            hashes=parsed.hashes,
            settings=self.targets,
            can_edit={n: bool(getattr(c, "can_edit", False)) for n, c in self.channels.items()},
            turned_off={
                n: off["edit"]
                for n, c in self.channels.items()
                if "edit" in (off := getattr(c, "turned_off", {}))
            },
            hosts=tuple(self.config.site.hosts),
        )


def _folded(items: list[str]) -> set[str]:
    return {i.strip().casefold() for i in items}
