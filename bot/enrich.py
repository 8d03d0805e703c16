"""Optional per-feed enrichment: read the article page's meta tags for what the feed lacks."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from bot.cleaning import fold
from bot.fetch import Fetcher
from bot.net import AddressGuard, guard_for_feed
from bot.types import Story

if TYPE_CHECKING:
    from bot.config import FeedConfig

PAGE_BYTES = 1_500_000


class _MetaReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.meta: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            return
        values = {k.lower(): (v or "") for k, v in attrs}
        key = (values.get("property") or values.get("name") or "").lower().strip()
        if key and "content" in values:
            self.meta.setdefault(key, []).append(fold(values["content"]))


def page_meta(html: str) -> dict[str, list[str]]:
    """Meta tags of an HTML page by lower-case name/property (og:image, keywords, …)."""
    reader = _MetaReader()
    try:
        reader.feed(html)
        reader.close()
    except Exception:  # a broken page only means no enrichment
        pass
    return reader.meta


def enrich_story(story: Story, meta: dict[str, list[str]]) -> Story:
    """`story` with image, lead and tags filled from page meta where the feed had none."""
    changes: dict[str, object] = {}
    image = (meta.get("og:image") or meta.get("twitter:image") or [""])[0]
    if not story.image and image:
        changes["image"] = urljoin(story.url, image)
    description = (meta.get("og:description") or meta.get("description") or [""])[0]
    if not story.lead and description:
        changes["lead"] = description
    if not story.tags:
        tags = list(meta.get("article:tag", []))
        for keywords in meta.get("keywords", []) + meta.get("news_keywords", []):
            tags += [k.strip() for k in keywords.split(",")]
        seen: dict[str, str] = {}
        for tag in tags:
            if tag and tag.casefold() not in seen and tag.casefold() != story.section.casefold():
                seen[tag.casefold()] = tag
        if seen:
            changes["tags"] = tuple(seen.values())
    return dataclasses.replace(story, **changes) if changes else story  # type: ignore[arg-type]


async def enrich(
    story: Story, fetcher: Fetcher, timeout: float = 10.0, feed: FeedConfig | None = None
) -> Story:
    """`story` enriched from its page; unchanged when the page cannot be read in time or its
    address is refused (the page is fetched through `feed`'s address guard; without a feed,
    through one that refuses every private address)."""
    if (story.image and story.lead and story.tags) or not story.url.startswith("http"):
        return story
    guard = guard_for_feed(feed.url, feed.allow_private) if feed is not None else AddressGuard()
    result = await fetcher.fetch(
        story.url, timeout=timeout, guard=guard, accept="text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"
    )
    if result.error or not result.body:
        return story
    html = result.body[:PAGE_BYTES].decode("utf-8", errors="replace")
    return enrich_story(story, page_meta(html))
