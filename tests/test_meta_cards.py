"""Share cards the way Instagram gets them: stories from the real feeds in the corpus (long
Indonesian headlines, CJK, RTL), photos of odd sizes or missing, rendered by the channel,
served by siar and downloaded and accepted by the strict fake; samples in tests/output/meta/."""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bot.cleaning import CleaningRules
from bot.normalize import parse_feed
from bot.types import Story
from tests.meta_world import World, seed_story, world

CORPUS = Path(os.environ.get("SIAR_CORPUS", Path(__file__).parents[2] / "shared" / "corpus"))
OUTPUT = Path(__file__).parent / "output" / "meta"


def corpus_story(relative: str) -> Story:
    """The story with the longest headline in one of the corpus's real feeds."""
    path = CORPUS / "news" / relative
    if not path.is_file():
        pytest.fail(f"news corpus not found at {path}; set SIAR_CORPUS to shared/corpus")
    stories = parse_feed(path.read_bytes(), "http://127.0.0.1/feed", {}, CleaningRules(), "corpus").stories
    return max(stories, key=lambda s: len(s.title))


def photo(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), (200, 120, 40))
    for y in range(0, height, max(1, height // 12)):  # stripes: the crop is visible
        image.paste((40, 90, 160), (0, y, width, y + max(1, height // 24)))
    out = io.BytesIO()
    image.save(out, "JPEG")
    return out.getvalue()


CASES = {
    # name: (feed in the corpus or None for the seed, title override, language, photo size or None)
    "tempo-long-id-tall-photo": ("indonesia/gtrdp__twitter-clustering/tempo.xml", "", "id", (400, 2000)),
    "tempo-missing-photo": ("indonesia/gtrdp__twitter-clustering/tempo.xml", "", "id", None),
    "guardian-tiny-photo": ("other/rbren__rss-parser/guardian.rss", "", "en", (160, 120)),
    "seed-panorama": (None, "", "id", (3000, 600)),
    "cjk": (
        None,
        "東京都、新型コロナウイルスの新規感染者数が過去最多に　専門家「医療体制は危機的」",
        "ja",
        (1200, 800),
    ),
    "rtl": (
        None,
        "الرئيس الإندونيسي يلتقي وفد مجموعة العشرين في جاكرتا لبحث التعاون الاقتصادي",
        "ar",
        (1200, 800),
    ),
}


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, ig_quota=100) as w:
        yield w


@pytest.mark.parametrize("case", sorted(CASES))
async def test_corpus_stories_give_cards_instagram_accepts(w: World, case: str) -> None:
    feed, title, language, size = CASES[case]
    story = corpus_story(feed) if feed else seed_story()
    image = w.meta.serve_image(f"{case}.jpg", photo(*size)) if size else f"{w.meta.media_url}/gone.jpg"
    story = dataclasses.replace(story, title=title or story.title, language=language, image=image)
    channel = await w.start(w.instagram())
    post = channel.render(story)
    await channel.send(post, idempotency_key=case)
    (published,) = w.meta.instagram.published  # the fake downloaded it and found it valid
    async with httpx.AsyncClient() as client:
        data = (await client.get(published.container.params["image_url"])).content
    card = Image.open(io.BytesIO(data))
    assert (card.format, card.size) == ("JPEG", (1080, 1350))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    card.save(OUTPUT / f"{case}.png")


async def test_a_card_is_made_once_and_changes_with_the_story(w: World) -> None:
    channel = w.instagram()
    story = dataclasses.replace(seed_story(), image="")
    post = channel.render(story)
    (first,) = await channel.prepare_media(post)
    made = first.stat().st_mtime_ns
    (again,) = await channel.prepare_media(channel.render(story))
    assert again == first and again.stat().st_mtime_ns == made
    corrected = channel.render(dataclasses.replace(story, title=story.title + " (ralat)"))
    assert corrected.media[0] != post.media[0]


async def test_old_cards_are_pruned(w: World) -> None:
    channel = w.instagram()
    (path,) = await channel.prepare_media(channel.render(dataclasses.replace(seed_story(), image="")))
    old = time.time() - 8 * 86400
    os.utime(path, (old, old))
    assert channel.store.prune() == 1 and not path.exists()


async def test_channels_share_the_card_route_until_the_last_one_closes(w: World) -> None:
    first = await w.start(w.instagram(cards_dir="cards-a"))
    second = await w.start(w.threads(media="card", cards_dir="cards-b"))
    story = dataclasses.replace(seed_story(), image="")
    posts = [first.render(story), second.render(dataclasses.replace(story, uid="other"))]
    await first.prepare_media(posts[0])
    await second.prepare_media(posts[1])
    async with httpx.AsyncClient() as client:
        assert [(await client.get(p.media[0])).status_code for p in posts] == [200, 200]
        await first.close()
        assert (await client.get(posts[1].media[0])).status_code == 200
        await second.close()
        with pytest.raises(httpx.ConnectError):  # the last user gave the server back
            await client.get(posts[1].media[0])
    replacement = await w.start(w.instagram(cards_dir="cards-a"))  # e.g. after a reload
    async with httpx.AsyncClient() as client:
        assert (await client.get(posts[0].media[0])).status_code == 200
    await replacement.close()
