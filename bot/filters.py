"""Which stories a feed or a channel wants: the filter keys and their pure decision."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, field_validator

from bot.durations import Duration
from bot.types import Story


class Filters(BaseModel):
    """Filter keys accepted by `[[feeds]]` and by `[channels.NAME]` alike."""

    model_config = ConfigDict(extra="forbid")

    include_categories: list[str] = []  # keep only stories with one of these (case-insensitive)
    exclude_categories: list[str] = []
    include_url: str | None = None  # regex searched in the story's canonical link
    include_keywords: list[str] = []  # in title or lead (case-insensitive)
    exclude_keywords: list[str] = []
    max_age: Duration | None = None  # older stories (by published time) are not sent

    @field_validator("include_url")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


def rejection(story: Story, filters: Filters, now: datetime) -> tuple[str, str] | None:
    """None when `story` passes `filters`, else (rule key, human detail) of the first rule it fails."""
    categories = {c.casefold() for c in (*story.categories, story.section, *story.tags) if c}
    if filters.include_categories and not categories & _folded(filters.include_categories):
        return "include_categories", f"categories {sorted(categories)} match none of the list"
    excluded = categories & _folded(filters.exclude_categories)
    if excluded:
        return "exclude_categories", f"category {sorted(excluded)[0]!r} is excluded"
    if filters.include_url and not re.search(filters.include_url, story.url):
        return "include_url", f"link does not match {filters.include_url!r}"
    text = f"{story.title}\n{story.lead}".casefold()
    if filters.include_keywords and not any(k.casefold() in text for k in filters.include_keywords):
        return "include_keywords", "no keyword of the list in title or lead"
    for keyword in filters.exclude_keywords:
        if keyword.casefold() in text:
            return "exclude_keywords", f"contains {keyword!r}"
    if filters.max_age is not None and story.published is not None:
        age = (now - story.published).total_seconds()
        if age > filters.max_age:
            return "max_age", f"published {int(age)}s ago, older than {int(filters.max_age)}s"
    return None


def _folded(items: list[str]) -> set[str]:
    return {i.strip().casefold() for i in items}
