"""The Facebook, Instagram and Threads channels against the strict Graph fake: what arrives,
the share card Meta downloads, ids as TOML strings or integers, and rendering limits."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from bot.channel import AlreadyDone, ChannelUnavailable, Permanent
from bot.config import HttpConfig
from bot.counting import count_threads
from bot.types import Digest, Published, Story
from channels.meta import facebook, instagram, threads
from tests.fake_graph import IG_USER_ID, PAGE_ID, THREADS_USER_ID, ContainerPlan
from tests.fake_graph_rules import ig_caption_problem, threads_length, threads_links
from tests.meta_world import FOLLOW, World, jpeg, seed_story, world

SEED_TAGS = ["#VladimirPutin", "#Rusia", "#KonflikArmeniaAzerbaijan"]


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path) as w:
        yield w


def story_with_photo(w: World) -> Story:
    url = w.meta.serve_image("lead.jpg", jpeg(1600, 900))
    return dataclasses.replace(seed_story(), image=url)


# --- Facebook ------------------------------------------------------------------------------------


async def test_facebook_page_post_with_message_and_link(w: World) -> None:
    channel = w.facebook()
    await channel.start()
    story = seed_story()
    post = channel.render(story)
    assert post.text.startswith(story.title) and story.lead[:40] in post.text
    assert " ".join(SEED_TAGS) in post.text and post.text.endswith(FOLLOW)
    assert story.url not in post.text  # the link goes as `link`: Facebook shows its preview
    receipt = await channel.send(post, idempotency_key="1")
    (arrived,) = w.meta.page.posts
    assert (arrived.message, arrived.link) == (post.text, story.url)
    assert receipt.remote_id == arrived.id and receipt.url == f"https://www.facebook.com/{arrived.id}"
    token_seen = next(r for r in w.meta.requests if r.endpoint == "POST feed")
    assert "access_token" not in token_seen.params  # the token travels in the header only


# --- Instagram -----------------------------------------------------------------------------------


async def test_instagram_posts_the_card_meta_downloads(w: World) -> None:
    channel = w.instagram()
    await channel.start()
    story = story_with_photo(w)
    post = channel.render(story)
    card_url = post.media[0]
    assert card_url.startswith(w.http.public_url + "cards/") and card_url.endswith("-1080x1350.jpg")
    assert post.text.endswith(f"{FOLLOW}\nBaca selengkapnya: link di bio")
    assert "https://" not in post.text  # links do not work in captions
    w.meta.instagram.plans.append(ContainerPlan(in_progress_polls=2))
    receipt = await channel.send(post, idempotency_key="1")
    (published,) = w.meta.instagram.published
    params = published.container.params
    assert params["image_url"] == card_url and params["caption"] == post.text
    assert params["alt_text"] == f"{story.title}. {story.image_alt}"
    assert receipt.remote_id == published.id and receipt.url.endswith(published.id)
    polls = [r for r in w.meta.requests if r.endpoint == "GET container"]
    assert len(polls) == 3  # IN_PROGRESS twice, then FINISHED
    async with httpx.AsyncClient() as client:  # what Meta downloaded is served by siar
        answer = await client.get(card_url)
    image = Image.open(io.BytesIO(answer.content))
    assert (answer.status_code, image.format, image.size) == (200, "JPEG", (1080, 1350))
    assert answer.headers["content-type"] == "image/jpeg"


async def test_instagram_login_uses_graph_instagram_com(w: World) -> None:
    channel = w.instagram(login="instagram", api_base_url=w.meta.instagram_url)
    await channel.start()
    receipt = await channel.send(channel.render(story_with_photo(w)), idempotency_key="1")
    assert receipt.remote_id == w.meta.instagram.published[0].id
    assert {r.host for r in w.meta.requests} == {"instagram"}


async def test_story_without_image_gets_a_plain_card(w: World) -> None:
    channel = w.instagram()
    await channel.start()
    story = dataclasses.replace(seed_story(), image="")
    await channel.send(channel.render(story), idempotency_key="1")
    (published,) = w.meta.instagram.published
    async with httpx.AsyncClient() as client:
        data = (await client.get(published.container.params["image_url"])).content
    card = Image.open(io.BytesIO(data)).convert("RGB")
    assert card.size == (1080, 1350)
    assert card.getpixel((540, 300)) == pytest.approx((13, 33, 64), abs=6)  # [cards] background


async def test_card_route_serves_only_card_names(w: World) -> None:
    channel = w.instagram()
    await channel.start()
    base = w.http.public_url
    async with httpx.AsyncClient() as client:
        for path in ("cards/../config.toml", "cards/x.jpg", "cards/", f"cards/{'0' * 32}-1080x1350.jpg"):
            assert (await client.get(base + path)).status_code == 404, path


async def test_instagram_needs_a_public_url(w: World) -> None:
    w.http = w.http.model_copy(update={"public_url": ""})
    with pytest.raises(ChannelUnavailable, match=r"\[http\] public_url"):
        w.instagram()
    with pytest.raises(ChannelUnavailable, match=r"\[http\] public_url"):
        w.threads(media="card")
    w.threads()  # text posts need no card


def test_caption_keeps_the_cta_and_stays_within_instagram_rules(tmp_path: Path) -> None:
    w = World(None, tmp_path, world_http())  # type: ignore[arg-type]
    channel = instagram.create(
        "ig",
        instagram.Settings(type="instagram", account_id="1", access_token="t", hashtags={"max": 30}),  # type: ignore[arg-type]
        w.context(),
    )
    many_tags = tuple(f"tag{i}" for i in range(40))
    hashes = " ".join(f"#h{i}" for i in range(50))
    story = dataclasses.replace(seed_story(), title=hashes, lead="x " * 3000, tags=many_tags)
    post = channel.render(story)
    assert ig_caption_problem(post.text, 2200, 30, 20) is None
    assert post.text.endswith("Baca selengkapnya: link di bio") and FOLLOW in post.text


def world_http() -> HttpConfig:
    return HttpConfig(public_url="https://news.example.com/siar/")


# --- Threads -------------------------------------------------------------------------------------


async def test_threads_text_post_with_link_preview_and_one_topic(w: World) -> None:
    channel = w.threads()
    await channel.start()
    story = seed_story()
    post = channel.render(story)
    assert count_threads(post.text) == post.length.used <= 500
    assert story.url in post.text and post.media == ()
    receipt = await channel.send(post, idempotency_key="1")
    (published,) = w.meta.threads.published
    params = published.container.params
    assert params["media_type"] == "TEXT" and params["text"] == post.text
    assert params["link_attachment"] == story.url
    assert params["topic_tag"] == "VladimirPutin"
    assert receipt.remote_id == published.id


async def test_threads_card_post(w: World) -> None:
    channel = w.threads(media="card", topic_tag="Berita Dunia")
    await channel.start()
    post = channel.render(story_with_photo(w))
    await channel.send(post, idempotency_key="1")
    (published,) = w.meta.threads.published
    params = published.container.params
    assert params["media_type"] == "IMAGE" and params["image_url"] == post.media[0]
    assert "link_attachment" not in params and params["topic_tag"] == "Berita Dunia"


def test_threads_text_has_at_most_five_links_and_500_characters(tmp_path: Path) -> None:
    w = World(None, tmp_path, world_http())  # type: ignore[arg-type]
    channel = threads.create(
        "th",
        threads.Settings.model_validate({"type": "threads", "account_id": "1", "access_token": "t"}),
        w.context(),
    )  # type: ignore[arg-type]
    domains = " ".join(f"site{i}.com" for i in range(9))
    story = dataclasses.replace(seed_story(), title=f"Links {domains}", lead=f"{domains} " + "🇮🇩" * 200)
    post = channel.render(story)
    assert threads_length(post.text) <= 500
    assert threads_links(post.text, story.url) <= 5


@pytest.mark.parametrize("value", ["A.B & C", "#Tag", "x" * 80, ""])
def test_topic_tags_are_what_threads_accepts(value: str) -> None:
    tag = threads.topic_tag(value)
    assert "." not in tag and "&" not in tag and "#" not in tag and len(tag) <= 50


# --- ids and settings ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int", "str"])
async def test_ids_as_toml_strings_or_integers(w: World, kind: str) -> None:
    def given(value: str) -> int | str:
        return int(value) if kind == "int" else value

    fb = w.facebook(page_id=given(PAGE_ID))
    ig = w.instagram(account_id=given(IG_USER_ID))
    th = w.threads(account_id=given(THREADS_USER_ID))
    assert (fb.settings.page_id, ig.settings.account_id, th.settings.account_id) == (
        PAGE_ID,
        IG_USER_ID,
        THREADS_USER_ID,
    )
    for channel in (fb, ig, th):
        await channel.start()
        await channel.send(channel.render(story_with_photo(w)), idempotency_key="1")
    assert len(w.meta.page.posts) == len(w.meta.instagram.published) == len(w.meta.threads.published) == 1


@pytest.mark.parametrize("bad", [True, "abc", "12 34", 1.5, "", "١٢٣"])
def test_bad_ids_are_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ValidationError, match="page_id"):
        facebook.Settings.model_validate({"type": "facebook", "page_id": bad})
    with pytest.raises(ValidationError, match="account_id"):
        threads.Settings.model_validate({"type": "threads", "account_id": bad})


def test_settings_refuse_bad_versions_urls_and_card_sizes() -> None:
    with pytest.raises(ValidationError, match="graph_version"):
        facebook.Settings.model_validate({"type": "facebook", "page_id": 1, "graph_version": "21"})
    with pytest.raises(ValidationError, match="api_base_url"):
        facebook.Settings.model_validate({"type": "facebook", "page_id": 1, "api_base_url": "graph.fb"})
    with pytest.raises(ValidationError, match="aspect ratio"):
        instagram.Settings.model_validate({"type": "instagram", "account_id": 1, "card_size": [1440, 600]})
    ig = instagram.Settings.model_validate({"type": "instagram", "account_id": 1, "login": "instagram"})
    assert ig.api_base_url == "https://graph.instagram.com"


# --- corrections and retractions -------------------------------------------------------------


async def test_facebook_edits_the_message_of_a_corrected_story(w: World) -> None:
    channel = await w.start(w.facebook())
    story = seed_story()
    receipt = await channel.send(channel.render(story), idempotency_key="1")
    published = Published(receipt.remote_id, receipt.url)
    corrected = channel.render(dataclasses.replace(story, title=story.title + " (ralat)"))
    assert channel.can_edit
    edited = await channel.edit(corrected, published, idempotency_key="2")
    (post,) = w.meta.page.posts
    assert post.message == corrected.text and edited.remote_id == post.id
    with pytest.raises(AlreadyDone):
        await channel.edit(corrected, published, idempotency_key="3")
    await channel.delete(published, idempotency_key="4")
    assert post.deleted
    with pytest.raises(AlreadyDone):
        await channel.delete(published, idempotency_key="5")
    with pytest.raises(Permanent, match="gone"):
        await channel.edit(corrected, published, idempotency_key="6")


@pytest.mark.parametrize("platform", ["instagram", "threads"])
async def test_instagram_and_threads_delete_but_cannot_edit(w: World, platform: str) -> None:
    channel = await w.start(w.instagram() if platform == "instagram" else w.threads())
    account = w.meta.instagram if platform == "instagram" else w.meta.threads
    receipt = await channel.send(channel.render(story_with_photo(w)), idempotency_key="1")
    assert channel.can_delete and not channel.can_edit
    await channel.delete(Published(receipt.remote_id, receipt.url), idempotency_key="2")
    assert account.published[0].deleted
    with pytest.raises(AlreadyDone):
        await channel.delete(Published(receipt.remote_id, receipt.url), idempotency_key="3")


async def test_threads_delete_without_the_permission_names_it(w: World) -> None:
    w.meta.add_token(
        "THnodelete",
        host="threads",
        user_id=THREADS_USER_ID,
        scopes={"threads_basic", "threads_content_publish"},
    )
    channel = await w.start(w.threads(access_token="THnodelete"))
    receipt = await channel.send(channel.render(seed_story()), idempotency_key="1")
    with pytest.raises(Permanent, match="threads_delete"):
        await channel.delete(Published(receipt.remote_id), idempotency_key="2")


# --- digests ---------------------------------------------------------------------------------


async def test_a_digest_goes_to_every_meta_channel_within_its_rules(w: World) -> None:
    base = seed_story()
    stories = tuple(
        dataclasses.replace(base, uid=f"d{i}", title=f"Berita nomor {i} hari ini", url=f"{base.url}-{i}")
        for i in range(8)
    )
    digest = Digest("Ringkasan pagi", stories, more=2)
    for channel in (await w.start(w.facebook()), await w.start(w.instagram()), await w.start(w.threads())):
        post = channel.render_digest(digest)
        await channel.send(post, idempotency_key=f"digest-{channel.type}")
    (page_post,) = w.meta.page.posts
    assert "Berita nomor 7" in page_post.message and page_post.link == ""
    (media,) = w.meta.instagram.published
    assert ig_caption_problem(media.text, 2200, 30, 20) is None and "https://" not in media.text
    assert media.container.params["image_url"].startswith(w.http.public_url + "cards/")
    (thread,) = w.meta.threads.published
    assert threads_length(thread.text) <= 500 and threads_links(thread.text) <= 5
    assert thread.text.startswith("Ringkasan pagi")
