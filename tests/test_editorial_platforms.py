"""Corrections, retractions and digests on Mastodon, Discord and X, against their strict fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.channel import AlreadyDone, ChannelContext, Permanent, RetryLater
from bot.counting import count_mastodon, count_x
from bot.site import CTA, Site
from bot.types import Digest, Published, Story
from channels import discord, mastodon, x
from tests.fake_discord import TOKEN, WEBHOOK_ID, Answer, FakeDiscord, check_message
from tests.fake_mastodon import FakeMastodon, Fault, mastodon_length
from tests.fake_x import KEYS, FakeX

CONTEXT = ChannelContext(site=Site(name="medcom.id", language="id", url="https://www.medcom.id"), cta=CTA())


def story(**changes: object) -> Story:
    base = {
        "uid": "1",
        "feed": "f",
        "url": "https://www.medcom.id/nasional/1-banjir-jakarta",
        "title": "Banjir di Jakarta",
        "lead": "Air naik dua meter.",
        "section": "Nasional",
    }
    return Story(**{**base, **changes})  # type: ignore[arg-type]


def many(n: int) -> tuple[Story, ...]:
    return tuple(
        story(uid=str(i), url=f"https://www.medcom.id/n/{i}-berita", title=f"Berita nomor {i} tentang banjir")
        for i in range(n)
    )


# --- Mastodon ------------------------------------------------------------------------------------


@pytest.fixture
def fake_masto() -> Iterator[FakeMastodon]:
    with FakeMastodon() as server:
        yield server


@pytest.fixture
async def masto(fake_masto: FakeMastodon) -> AsyncIterator[mastodon.MastodonChannel]:
    settings = mastodon.Settings.model_validate(
        {"type": "mastodon", "instance": fake_masto.base, "access_token": "secret-token"}
    )
    channel = mastodon.create("masto", settings, replace(CONTEXT))
    await channel.start()
    yield channel
    await channel.close()


async def test_mastodon_correction_puts_the_status_once(
    fake_masto: FakeMastodon, masto: mastodon.MastodonChannel
) -> None:
    assert masto.can_edit and masto.can_delete
    receipt = await masto.send(masto.render(story()), idempotency_key="siar-1")
    published = Published(receipt.remote_id, receipt.url)
    corrected = masto.render(story(title="Banjir di Jakarta Utara"))
    edited = await masto.edit(corrected, published, idempotency_key="siar-2")
    (status,) = fake_masto.statuses
    assert status["content"] == corrected.text and status["edits"] == 1
    assert edited.remote_id == receipt.remote_id and edited.url == receipt.url
    put = [r for r in fake_masto.requests if r[0] == "PUT"]
    assert put[0][1] == f"/api/v1/statuses/{receipt.remote_id}" and put[0][2]["idempotency-key"]
    with pytest.raises(AlreadyDone):  # the instance already shows this text: no second edit
        await masto.edit(corrected, published, idempotency_key="siar-3")
    assert status["edits"] == 1


async def test_mastodon_edit_keeps_the_attachment(fake_masto: FakeMastodon) -> None:
    fake_masto.media["777"] = {"id": "777", "url": "https://fake.example/media/777", "polls_left": 0}
    settings = mastodon.Settings.model_validate(
        {
            "type": "mastodon",
            "instance": fake_masto.base,
            "access_token": "secret-token",
            "upload_image": True,
        }
    )
    channel = mastodon.create("masto", settings, replace(CONTEXT))
    receipt = await channel.send(channel.render(story()), idempotency_key="siar-1")
    fake_masto.statuses[0]["media_ids"] = ["777"]  # as if the upload had worked
    await channel.edit(
        channel.render(story(title="Dikoreksi")), Published(receipt.remote_id), idempotency_key="e"
    )
    await channel.close()
    assert fake_masto.statuses[0]["media_ids"] == ["777"]


async def test_mastodon_edit_errors(fake_masto: FakeMastodon, masto: mastodon.MastodonChannel) -> None:
    receipt = await masto.send(masto.render(story()), idempotency_key="siar-1")
    published = Published(receipt.remote_id)
    fake_masto.faults.append(Fault(503))
    with pytest.raises(RetryLater, match="503 while editing"):
        await masto.edit(masto.render(story(title="A")), published, idempotency_key="e")
    too_long = replace(masto.render(story(title="B")), text="x" * 501)
    with pytest.raises(Permanent, match="character limit"):
        await masto.edit(too_long, published, idempotency_key="e")
    with pytest.raises(Permanent, match="gone"):
        await masto.edit(masto.render(story(title="C")), Published("999"), idempotency_key="e")
    with pytest.raises(Permanent, match="not a Mastodon status id"):
        await masto.delete(Published("at://x"), idempotency_key="d")


async def test_mastodon_retraction_deletes_once(
    fake_masto: FakeMastodon, masto: mastodon.MastodonChannel
) -> None:
    receipt = await masto.send(masto.render(story()), idempotency_key="siar-1")
    done = await masto.delete(Published(receipt.remote_id, receipt.url), idempotency_key="siar-2")
    assert done.note == "deleted" and fake_masto.statuses[0]["deleted"] is True
    with pytest.raises(AlreadyDone, match="gone"):
        await masto.delete(Published(receipt.remote_id), idempotency_key="siar-2")


async def test_mastodon_digest_is_one_status_within_the_instance_limit(
    fake_masto: FakeMastodon, masto: mastodon.MastodonChannel
) -> None:
    post = masto.render_digest(Digest("Rangkuman pagi", many(20), more=2))
    assert post.digest is not None and count_mastodon(post.text, 23) == post.length.used <= 500
    kept = post.text.count("• ")
    assert 3 <= kept < 20 and f"… {2 + 20 - kept} more" in post.text
    await masto.send(post, idempotency_key="dg")
    (status,) = fake_masto.statuses
    assert mastodon_length(status["content"], 23) <= 500 and status["language"] == "id"


# --- Discord -------------------------------------------------------------------------------------


@pytest.fixture
def fake_discord() -> Iterator[FakeDiscord]:
    with FakeDiscord() as server:
        yield server


@pytest.fixture
async def hook(fake_discord: FakeDiscord) -> AsyncIterator[discord.DiscordChannel]:
    settings = discord.Settings.model_validate(
        {"type": "discord", "webhook_url": fake_discord.webhook_url + "?thread_id=42", "timeout": 3}
    )
    channel = discord.create("discord", settings, CONTEXT)
    await channel.start()
    yield channel
    await channel.close()


async def test_discord_correction_patches_the_webhook_message(
    fake_discord: FakeDiscord, hook: discord.DiscordChannel
) -> None:
    assert hook.can_edit and hook.can_delete
    receipt = await hook.send(hook.render(story()), idempotency_key="siar-1")
    assert fake_discord.requests[0].query == {"wait": ["true"], "thread_id": ["42"]}  # the id is known
    corrected = hook.render(story(title="Banjir surut", breaking="🔴 BREAKING"))
    await hook.edit(corrected, Published(receipt.remote_id, receipt.url), idempotency_key="siar-2")
    patch = fake_discord.requests[-1]
    assert patch.method == "PATCH" and patch.path.endswith(
        f"/{WEBHOOK_ID}/{TOKEN}/messages/{receipt.remote_id}"
    )
    assert patch.query == {"thread_id": ["42"]} and fake_discord.problems == []
    assert fake_discord.by_id[receipt.remote_id]["embeds"][0]["title"] == "🔴 BREAKING Banjir surut"


async def test_discord_retraction_deletes_once(
    fake_discord: FakeDiscord, hook: discord.DiscordChannel
) -> None:
    receipt = await hook.send(hook.render(story()), idempotency_key="siar-1")
    published = Published(receipt.remote_id)
    done = await hook.delete(published, idempotency_key="siar-2")
    assert done.note == "deleted" and receipt.remote_id in fake_discord.deleted
    assert fake_discord.requests[-1].method == "DELETE"
    with pytest.raises(AlreadyDone, match="gone"):
        await hook.delete(published, idempotency_key="siar-2")
    with pytest.raises(Permanent, match="gone"):
        await hook.edit(hook.render(story()), published, idempotency_key="siar-3")


async def test_discord_deleted_webhook_and_server_errors(
    fake_discord: FakeDiscord, hook: discord.DiscordChannel
) -> None:
    receipt = await hook.send(hook.render(story()), idempotency_key="siar-1")
    fake_discord.script.append(Answer(500, {"message": "oops", "code": 0}))
    with pytest.raises(RetryLater):
        await hook.delete(Published(receipt.remote_id), idempotency_key="d")
    fake_discord.script.append(Answer(404, {"message": "Unknown Webhook", "code": 10015}))
    with pytest.raises(Permanent, match="create a new webhook"):  # not "already done"
        await hook.delete(Published(receipt.remote_id), idempotency_key="d")


async def test_discord_digest_is_one_embed_with_fields(
    fake_discord: FakeDiscord, hook: discord.DiscordChannel
) -> None:
    long = tuple(replace(s, title=s.title + " " + "panjang " * 60) for s in many(40))
    post = hook.render_digest(Digest("Rangkuman pagi", long))
    embed = post.to_dict()["extra"]["embed"]
    assert embed["title"] == "Rangkuman pagi" and 1 <= len(embed["fields"]) <= 25
    assert embed["footer"]["text"] == f"… +{40 - len(embed['fields'])}"
    assert post.digest is not None and len(post.digest.stories) == len(embed["fields"])  # what it shows
    assert post.digest.more == 40 - len(embed["fields"])
    assert embed["fields"][0]["value"] == "[Baca selengkapnya](<https://www.medcom.id/n/0-berita>)"
    assert check_message({"embeds": [embed], "allowed_mentions": {"parse": []}}) is None
    await hook.send(post, idempotency_key="dg")
    assert fake_discord.problems == [] and len(fake_discord.messages) == 1
    few = hook.render_digest(Digest("Rangkuman", many(3)))
    assert (
        len(few.to_dict()["extra"]["embed"]["fields"]) == 3
        and "footer" not in few.to_dict()["extra"]["embed"]
    )


# --- X -------------------------------------------------------------------------------------------


@pytest.fixture
def fake_x() -> Iterator[FakeX]:
    with FakeX() as server:
        yield server


@pytest.fixture
async def xch(fake_x: FakeX) -> AsyncIterator[x.XChannel]:
    settings = x.Settings.model_validate({"type": "x", **KEYS, "api_base_url": fake_x.base, "timeout": 3})
    channel = x.create("x", settings, CONTEXT)
    await channel.start()
    yield channel
    await channel.close()


async def test_x_retraction_deletes_the_post_once(fake_x: FakeX, xch: x.XChannel) -> None:
    assert xch.can_delete and not xch.can_edit
    receipt = await xch.send(xch.render(story()), idempotency_key="siar-1")
    done = await xch.delete(Published(receipt.remote_id, receipt.url), idempotency_key="siar-2")
    assert done.note == "deleted" and fake_x.deleted == {receipt.remote_id}
    seen = fake_x.requests[-1]
    assert (seen.method, seen.path) == ("DELETE", f"/2/tweets/{receipt.remote_id}") and fake_x.problems == []
    with pytest.raises(AlreadyDone, match="no post"):
        await xch.delete(Published(receipt.remote_id), idempotency_key="siar-2")
    fake_x.others.add("42")
    with pytest.raises(Permanent, match="403"):
        await xch.delete(Published("42"), idempotency_key="x")
    with pytest.raises(Permanent, match="cannot be edited"):
        await xch.edit(xch.render(story()), Published(receipt.remote_id), idempotency_key="e")


async def test_x_digest_is_one_post_within_280(fake_x: FakeX, xch: x.XChannel) -> None:
    post = xch.render_digest(Digest("Rangkuman pagi", many(10)))
    assert post.digest is not None and count_x(post.text) == post.length.used <= 280
    kept = post.text.count("• ")
    assert 1 <= kept < 10 and f"… {10 - kept} more" in post.text
    await xch.send(post, idempotency_key="dg")
    assert fake_x.posts == [post.text] and fake_x.problems == []


# --- OneSignal (only the breaking-news touches) ----------------------------------------------------


def test_onesignal_breaking_news_has_the_prefix_and_high_priority() -> None:
    from channels.onesignal import OneSignalChannel, Settings

    app_id = "00000000-0000-4000-8000-000000000000"
    settings = Settings(type="onesignal", app_id=app_id, api_key=SecretStr("k"))
    channel = OneSignalChannel("os", settings, CONTEXT)
    loud = channel.body(channel.render(story(breaking="🔴 BREAKING")), "k1")
    plain = channel.body(channel.render(story()), "k2")
    assert loud["headings"]["id"] == "🔴 BREAKING Banjir di Jakarta" and loud["priority"] == 10
    assert plain["headings"]["id"] == "Banjir di Jakarta" and "priority" not in plain
    assert not channel.can_edit and not channel.can_delete


# --- Facebook, Instagram, Threads: the default templates' breaking prefix ------------------------


async def test_meta_default_templates_carry_the_breaking_prefix(tmp_path: Path) -> None:
    from tests.meta_world import seed_story, world

    async with world(tmp_path) as w:
        loud = replace(seed_story(), breaking="🔴 BREAKING")
        for channel in (w.facebook(), w.instagram(), w.threads()):
            assert channel.render(loud).text.startswith(f"🔴 BREAKING {loud.title}"), channel.name
            assert channel.render(seed_story()).text.startswith(seed_story().title), channel.name
