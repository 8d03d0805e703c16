"""Test set-up for the Meta channels: the strict Graph fake, siar's HTTP server serving cards at
a public URL the fake can download from, a clock following the fake's, and recorded alerts."""

from __future__ import annotations

import io
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from bot.addresses import AddressGuard
from bot.channel import Alerts, ChannelContext
from bot.cleaning import CleaningRules
from bot.config import HttpConfig
from bot.normalize import parse_feed
from bot.site import CTA, Site
from bot.types import Story
from channels.meta import facebook, instagram, threads
from tests.conftest import SAMPLE
from tests.fake_graph import (
    IG_LOGIN_TOKEN,
    IG_USER_ID,
    PAGE_ID,
    PAGE_TOKEN,
    THREADS_TOKEN,
    THREADS_USER_ID,
    USER_TOKEN,
    FakeGraph,
)

C = TypeVar("C", bound=Any)
FOLLOW = "Ikuti media sosial medcom.id dan dapatkan berbagai keuntungan"
FAST = {"poll_interval": 0.01, "poll_timeout": 2, "timeout": 5}


def seed_story() -> Story:
    parsed = parse_feed(
        SAMPLE.read_bytes(), "https://www.medcom.id/rss/internasional", {}, CleaningRules(), "medcom"
    )
    return next(s for s in parsed.stories if s.uid == "medcom-4KZ9mA2b")


def jpeg(width: int = 1600, height: int = 900) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class World:
    meta: FakeGraph
    tmp: Path
    http: HttpConfig
    alerts: list[tuple[str, str]] = field(default_factory=list)
    channels: list[Any] = field(default_factory=list)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.meta.now, UTC)

    def context(self) -> ChannelContext:
        alerts = Alerts()

        async def record(source: str, message: str) -> None:
            self.alerts.append((source, message))

        alerts.add_sink(record)
        return ChannelContext(
            site=Site(name="medcom.id", url="https://www.medcom.id"),
            cta=CTA(follow_text=FOLLOW),
            base_dir=self.tmp,
            clock=self.now,
            alerts=alerts,
            http=self.http,
            guard_for=lambda feed: AddressGuard(allow_private=True),
        )

    async def start(self, channel: C) -> C:
        await channel.start()
        return channel

    def facebook(self, **keys: Any) -> facebook.FacebookChannel:
        values = {
            "type": "facebook",
            "page_id": PAGE_ID,
            "access_token": PAGE_TOKEN,
            "api_base_url": self.meta.graph_url,
            "timeout": 5,
            **keys,
        }
        channel = facebook.create("fb", facebook.Settings.model_validate(values), self.context())
        self.channels.append(channel)
        return channel

    def instagram(self, **keys: Any) -> instagram.InstagramChannel:
        values = {
            "type": "instagram",
            "account_id": IG_USER_ID,
            "access_token": USER_TOKEN,
            "api_base_url": self.meta.graph_url,
            **FAST,
            **keys,
        }
        if values.get("login") == "instagram":
            values.setdefault("api_base_url", self.meta.instagram_url)
            values["access_token"] = keys.get("access_token", IG_LOGIN_TOKEN)
        channel = instagram.create("ig", instagram.Settings.model_validate(values), self.context())
        self.channels.append(channel)
        return channel

    def threads(self, **keys: Any) -> threads.ThreadsChannel:
        values = {
            "type": "threads",
            "account_id": THREADS_USER_ID,
            "access_token": THREADS_TOKEN,
            "api_base_url": self.meta.threads_url,
            **FAST,
            **keys,
        }
        channel = threads.create("th", threads.Settings.model_validate(values), self.context())
        self.channels.append(channel)
        return channel


@asynccontextmanager
async def world(tmp: Path, **fake: Any) -> AsyncIterator[World]:
    port = free_port()
    http = HttpConfig(listen=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}/")
    async with FakeGraph(**fake) as meta:
        w = World(meta, tmp, http)
        try:
            yield w
        finally:
            for channel in w.channels:
                await channel.close()
