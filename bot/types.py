"""The values that travel from a feed to a platform: Story, Post, Receipt and their parts.

They are frozen so that a stage can hand them on without fearing that the next stage changes
them under it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Story:
    """One news story, cleaned and normalized from a feed entry."""

    uid: str  # stable per feed: the entry's guid, else its canonical link
    feed: str
    url: str  # canonical: tracking parameters and fragment removed
    title: str
    lead: str = ""
    author: str = ""
    published: datetime | None = None  # timezone-aware; None only before first-seen is known
    tags: tuple[str, ...] = ()
    section: str = ""
    categories: tuple[str, ...] = ()  # every category as the feed gave it (section included)
    image: str = ""
    image_alt: str = ""  # the image's caption, for alt text
    language: str = ""
    breaking: str = ""  # the label of the `[[priority]]` rule it matched ("🔴 BREAKING"), or ""

    def to_json(self) -> str:
        """The story as a JSON document (for the store)."""
        # Flat fields (strings and tuples of strings): a shallow copy is `asdict`'s result
        # without its deep copy of every value.
        data = {f.name: getattr(self, f.name) for f in _STORY_FIELDS}
        data["published"] = self.published.isoformat() if self.published else None
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Story:
        """Rebuild a story stored with `to_json`."""
        data: dict[str, Any] = json.loads(text)
        published = data.pop("published", None)
        data["tags"] = tuple(data.get("tags", ()))
        data["categories"] = tuple(data.get("categories", ()))
        return cls(**data, published=datetime.fromisoformat(published) if published else None)


_STORY_FIELDS = fields(Story)


@dataclass(frozen=True)
class Button:
    text: str
    url: str


@dataclass(frozen=True)
class Facet:
    """A rich-text span in UTF-8 byte offsets (start inclusive, end exclusive), as Bluesky wants."""

    start: int
    end: int
    kind: Literal["link", "tag", "mention"]
    value: str


@dataclass(frozen=True)
class Length:
    """How long a post is by its platform's own counting."""

    unit: str  # "graphemes", "weighted", "utf16"
    used: int
    limit: int


@dataclass(frozen=True)
class Published:
    """A post as the platform has it: what a later edit or deletion refers to."""

    remote_id: str
    url: str = ""
    posted_at: datetime | None = None  # when the platform accepted it (Telegram: 48 h to delete)


@dataclass(frozen=True)
class Digest:
    """A roundup of the stories since the last one (newest first, at most the channel's max)."""

    title: str
    stories: tuple[Story, ...]
    more: int = 0  # stories left out beyond the max
    at: datetime | None = None


class PostPayload(Protocol):
    """What a channel's render hands its own send besides text, buttons and media (an embed, a
    link card, a fallback text): each channel has its own frozen dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """The payload as JSON data (`preview --json` shows it as `extra`)."""
        ...


@dataclass(frozen=True)
class Payload:
    """A base for channels' payload dataclasses: `to_dict` drops empty values."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(json.dumps(asdict(self), ensure_ascii=False))  # tuples -> lists
        return {k: v for k, v in data.items() if v not in (None, "", [], {})}


@dataclass(frozen=True)
class Post:
    """One story rendered for one channel: exactly what would be sent."""

    channel: str
    type: str
    story: Story
    text: str
    length: Length
    parse_mode: str | None = None
    buttons: tuple[Button, ...] = ()
    media: tuple[str, ...] = ()
    facets: tuple[Facet, ...] = ()
    payload: PostPayload | None = None  # the channel's own typed extras
    digest: Digest | None = None  # set when the post is a roundup of several stories

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape `preview --json` prints."""
        return {
            "channel": self.channel,
            "type": self.type,
            "story": story_dict(self.story),
            "text": self.text,
            "parse_mode": self.parse_mode,
            "buttons": [{"text": b.text, "url": b.url} for b in self.buttons],
            "media": list(self.media),
            "facets": [asdict(f) for f in self.facets],
            "length": asdict(self.length),
            "extra": self.payload.to_dict() if self.payload is not None else {},
            "digest": _digest_dict(self.digest) if self.digest is not None else None,
        }


def _digest_dict(digest: Digest) -> dict[str, Any]:
    return {
        "title": digest.title,
        "stories": [story_dict(s) for s in digest.stories],
        "more": digest.more,
        "at": digest.at.isoformat() if digest.at else None,
    }


def story_dict(s: Story) -> dict[str, Any]:
    """The story as `preview --json` shows it."""
    return {
        "id": s.uid,
        "feed": s.feed,
        "url": s.url,
        "title": s.title,
        "tags": list(s.tags),
        "section": s.section,
        "published": s.published.isoformat() if s.published else None,
        "image": s.image or None,
        "breaking": s.breaking,
    }


@dataclass(frozen=True)
class Receipt:
    """What the platform answered for a post that went out."""

    remote_id: str = ""
    url: str = ""
    note: str = ""  # e.g. "already posted (duplicate content)"


@dataclass(frozen=True)
class Decision:
    """Why a story goes, or does not go, to one channel (channel None: about the story itself)."""

    channel: str | None
    decision: str
    rule: str | None = None
    detail: str = ""

    @property
    def queues(self) -> bool:
        """An outbox row follows: a post, or a story collected for a digest-only channel."""
        return self.decision in ("queued", "collected")
