"""Which stories a feed or a channel wants: the filter keys and their pure decision."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from bot.durations import Duration
from bot.patterns import Pattern
from bot.types import Story


class Filters(BaseModel):
    """Filter keys accepted by `[[feeds]]` and by `[channels.NAME]` alike."""

    model_config = ConfigDict(extra="forbid")

    include_categories: list[str] = []  # keep only stories with one of these (case-insensitive)
    exclude_categories: list[str] = []
    include_url: Pattern | None = None  # regex (RE2) searched in the story's canonical link
    include_keywords: list[str] = []  # in title or lead (case-insensitive)
    exclude_keywords: list[str] = []
    max_age: Duration | None = None  # older stories (by published time) are not sent


def rejection(story: Story, filters: Filters, now: datetime) -> tuple[str, str] | None:
    """None when `story` passes `filters`, else (rule key, human detail) of the first rule it fails."""
    categories = {c.casefold() for c in (*story.categories, story.section, *story.tags) if c}
    if filters.include_categories and not categories & _folded(filters.include_categories):
        return "include_categories", f"categories {sorted(categories)} match none of the list"
    excluded = categories & _folded(filters.exclude_categories)
    if excluded:
        return "exclude_categories", f"category {sorted(excluded)[0]!r} is excluded"
    if filters.include_url is not None and not filters.include_url.search(story.url):
        return "include_url", f"link does not match {filters.include_url.source!r}"
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
