"""Recording fakes for tests: a channel whose answers a test scripts, and a settable clock."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime, timedelta

from bot.channel import AlreadyDone, ChannelContext, ChannelSettings, Permanent
from bot.counting import Budget, count_graphemes
from bot.registry import ChannelType, Plugin
from bot.render import PostRenderer
from bot.types import Digest, Length, Post, Published, Receipt, Story


class Settings(ChannelSettings):
    """`type = "fake"`: registered by the `fake_type` fixture (tests/conftest.py)."""

    type: str = "fake"
    token: str = ""
    rate_limit: str = "1000/s"
    secret_keys = ("token",)


class FakeChannel:
    """Records what it was asked to send; each `script` entry is an exception to raise or None."""

    def __init__(
        self,
        name: str = "fake",
        settings: ChannelSettings | None = None,
        context: ChannelContext | None = None,
    ) -> None:
        self.name = name
        self.type = "fake"
        self.resumable = False
        self.resume_window: float | None = None
        self.can_edit = True
        self.can_delete = True
        self.edited: list[tuple[Post, Published]] = []
        self.deleted: list[Published] = []
        self.gone: set[str] = set()  # remote ids deleted (a second deletion: AlreadyDone)
        self.digests: list[Post] = []  # digest posts sent (also in `sent`)
        self.settings = settings or Settings(type="fake")
        self.sent: list[Post] = []
        self.attempts: list[str] = []  # idempotency keys, one per send call
        self.script: deque[BaseException | None] = deque()
        self.block: asyncio.Event | None = None  # when set, send waits for it (a slow platform)
        self.started = False
        self.closed = False
        self.start_errors: deque[BaseException] = deque()  # raised by the next start() calls

    async def start(self) -> None:
        if self.start_errors:
            raise self.start_errors.popleft()
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def render(self, story: Story) -> Post:
        text = f"{story.title}\n{story.url}"
        return Post(
            channel=self.name,
            type=self.type,
            story=story,
            text=text,
            length=Length("graphemes", count_graphemes(text), 500),
        )

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        self.attempts.append(idempotency_key)
        if self.block is not None:
            await self.block.wait()
        if self.script:
            outcome = self.script.popleft()
            if outcome is not None:
                raise outcome
        self.sent.append(post)
        if post.digest is not None:
            self.digests.append(post)
        return Receipt(remote_id=f"remote-{len(self.sent)}", url=f"https://fake/{len(self.sent)}")

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        if not self.can_edit:  # strict like the kit's default: a platform that cannot edit says so
            raise Permanent(f"{self.type} posts cannot be edited")
        if not published.remote_id:
            raise Permanent("nothing to edit: the post has no platform id")
        self.attempts.append(idempotency_key)
        if self.script:
            outcome = self.script.popleft()
            if outcome is not None:
                raise outcome
        self.edited.append((post, published))
        return Receipt(remote_id=published.remote_id, note="edited")

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        if not self.can_delete:
            raise Permanent(f"{self.type} posts cannot be deleted")
        if not published.remote_id:
            raise Permanent("nothing to delete: the post has no platform id")
        self.attempts.append(idempotency_key)
        if self.script:
            outcome = self.script.popleft()
            if outcome is not None:
                raise outcome
        if published.remote_id in self.gone:
            raise AlreadyDone("the post is gone already")
        self.gone.add(published.remote_id)
        self.deleted.append(published)
        return Receipt(remote_id=published.remote_id, note="deleted")

    def render_digest(self, digest: Digest) -> Post:
        text = "\n".join([digest.title, *(f"- {s.title}" for s in digest.stories)])
        return Post(
            channel=self.name,
            type=self.type,
            story=digest.stories[0],
            text=text,
            length=Length("graphemes", count_graphemes(text), 4000),
            digest=digest,
        )


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> FakeChannel:
    return FakeChannel(name, settings, context)


PLUGIN = Plugin("fake", (ChannelType("fake", Settings, create),))


class Clock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2020, 10, 9, 7, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def renderer_for_tests(context: ChannelContext, template: str) -> PostRenderer:
    return PostRenderer("test", template, context)


GRAPHEMES_500 = Budget("graphemes", 500, count_graphemes)
