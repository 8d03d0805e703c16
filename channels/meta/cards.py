"""Share cards on disk and on the web: Instagram (and Threads image posts) publish an image that
Meta downloads from a public URL, so the card is rendered into a folder and served by siar's
HTTP server under `/cards/` (`[http] public_url` + `cards/<name>.jpg`).

A card's name is a hash of everything drawn on it (story, size, `[cards]` look), so `render`
can name its URL without I/O, the same story always gets the same file, and a changed title or
look gets a new one. Files older than a week are removed (Meta fetches within minutes).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from bot.cards import CardSettings
from bot.config import HttpConfig
from bot.types import Story
from bot.web import HttpServer, release_server, shared_server

log = logging.getLogger("siar.cards")
PREFIX = "/cards"
NAME = re.compile(r"^[0-9a-f]{32}-\d{3,4}x\d{3,4}\.jpg$")
KEEP_SECONDS = 7 * 86400.0
MAX_PHOTO_BYTES = 30 * 1024 * 1024  # bot/cards refuses larger photos anyway

PhotoFetcher = Callable[[Story], Awaitable[bytes | None]]


def card_alt_text(story: Story, limit: int) -> str:
    """A card's alt text: the headline written on it, then what the photo shows."""
    text = story.title
    if story.image and story.image_alt and story.image_alt != story.title:
        text = f"{text}. {story.image_alt}" if text else story.image_alt
    return text[:limit]


class CardStore:
    """The cards of one folder and the public URL they are served at."""

    def __init__(self, folder: Path, public_url: str, settings: CardSettings, site_name: str) -> None:
        self.folder = folder
        self.public_url = public_url.rstrip("/") + "/" if public_url else ""
        self.settings = settings
        self.site_name = site_name

    def name(self, story: Story, size: tuple[int, int]) -> str:
        """The card's file name: a hash of what is drawn on it, then its size."""
        look = self.settings.model_dump_json()
        drawn = "\n".join((story.feed, story.uid, story.title, story.section, story.image, story.language))
        digest = hashlib.sha256(f"{drawn}\n{self.site_name}\n{look}\n{size}".encode()).hexdigest()[:32]
        return f"{digest}-{size[0]}x{size[1]}.jpg"

    def url(self, story: Story, size: tuple[int, int]) -> str:
        """Where Meta downloads the card (empty without a public URL)."""
        return f"{self.public_url}cards/{self.name(story, size)}" if self.public_url else ""

    def path(self, story: Story, size: tuple[int, int]) -> Path:
        return self.folder / self.name(story, size)

    async def ensure(self, story: Story, size: tuple[int, int], photo: PhotoFetcher) -> Path:
        """The card's file, rendered (with the story's photo, or plain) when not there yet."""
        path = self.path(story, size)
        if path.exists():
            return path
        data = await photo(story) if story.image else None
        from bot.cards import render_card  # Pillow and fontTools: only once a card is drawn

        jpeg = await asyncio.to_thread(
            render_card,
            story.title,
            story.section,
            self.site_name,
            data,
            size,
            self.settings,
            language=story.language,
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(jpeg)
        partial.replace(path)  # atomic: the server never serves half a card
        self.prune()
        return path

    def prune(self, now: float | None = None) -> int:
        """Remove cards older than a week; the number removed."""
        now = time.time() if now is None else now
        removed = 0
        for path in self.folder.glob("*.jpg"):
            try:
                if NAME.match(path.name) and now - path.stat().st_mtime > KEEP_SECONDS:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed


class CardRoutes:
    """`GET /cards/<name>.jpg` on one HTTP server, from every folder a channel added. One per
    server (not per app), so that a reload's new channels and the old ones share it."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.folders: list[Path] = []
        self.users = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PREFIX + "/{name}", self.serve)]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if NAME.match(name):
            for folder in self.folders:
                path = folder / name
                if path.is_file():
                    return web.Response(
                        body=await asyncio.to_thread(path.read_bytes),
                        content_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=86400"},
                    )
        raise web.HTTPNotFound()


_BY_SERVER: dict[HttpServer, CardRoutes] = {}


async def serve_cards(http: HttpConfig | None, folder: Path) -> CardRoutes:
    """Serve `folder` at /cards/ on the process's server for `[http] listen` (started if
    needed). Give it back with `stop_serving`."""
    server = shared_server(http or HttpConfig())
    routes = _BY_SERVER.get(server)
    try:
        if routes is None:
            routes = CardRoutes(server)
            server.add_routes(routes.routes(), prefix=PREFIX)
            _BY_SERVER[server] = routes
        if folder not in routes.folders:
            routes.folders.append(folder)
        routes.users += 1
        await server.start()
    except BaseException:
        if routes is not None:
            await stop_serving(routes)
        else:
            await release_server(server)
        raise
    log.info("share cards served at %s", server.external_url(PREFIX + "/"))
    return routes


async def stop_serving(routes: CardRoutes) -> None:
    """One channel fewer; the last one takes /cards/ down and gives the server back."""
    routes.users -= 1
    if routes.users <= 0 and _BY_SERVER.get(routes.server) is routes:
        del _BY_SERVER[routes.server]
        routes.server.remove_routes(PREFIX)
    await release_server(routes.server)
