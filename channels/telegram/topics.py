"""Reader topics: which stories a subscriber gets, and the topic keyboard's choices.

Topics are keys: "s:<section>" and "t:<tag>" (casefolded); a subscriber without topics gets
everything.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from bot.render import hashtag
from bot.types import Story
from channels.telegram.store import Subscriber


def story_topics(story: Story) -> set[str]:
    """The topic keys a story belongs to."""
    keys = {f"t:{t.casefold()}" for t in story.tags}
    if story.section:
        keys.add(f"s:{story.section.casefold()}")
    return keys


def wants(subscriber: Subscriber, story: Story) -> bool:
    """Whether `subscriber` gets `story`: no topics = everything, else any topic in common."""
    if not subscriber.topics:
        return True
    return bool(story_topics(story) & set(subscriber.topics))


def offered_topics(sections: Sequence[str], stories: Sequence[Story], top_tags: int) -> list[tuple[str, str]]:
    """(key, label) of the configured sections, then the `top_tags` most frequent tags that
    make a hashtag (not "2020": digits alone are no topic a reader picks)."""
    out: dict[str, str] = {}
    for name in sections:
        out.setdefault(f"s:{name.casefold()}", name)
    counts = Counter(t.casefold() for s in stories for t in s.tags)
    labels = {t.casefold(): t for s in stories for t in s.tags}
    tags = 0
    for tag, _ in counts.most_common():
        if tags >= top_tags:
            break
        if hashtag(labels[tag]) is None or f"t:{tag}" in out:
            continue
        out[f"t:{tag}"] = "#" + labels[tag]
        tags += 1
    return list(out.items())


def toggle(current: tuple[str, ...] | None, key: str, offered: Sequence[str]) -> tuple[str, ...] | None:
    """The topics after pressing `key` (None = everything, which shows every topic as on)."""
    chosen = set(offered) if current is None else set(current)
    chosen ^= {key}
    if not chosen or chosen >= set(offered):
        return None
    return tuple(sorted(chosen))


def topic_data(key: str) -> str:
    """Callback data for a topic button (short and fixed-size: Telegram allows 64 bytes)."""
    return "tp:" + hashlib.sha1(key.encode()).hexdigest()[:12]
