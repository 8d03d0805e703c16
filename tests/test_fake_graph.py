"""The Meta Graph fake is as strict as Meta: these tests guard its rules through plain HTTP."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fake_graph import (
    APP_ID,
    APP_SECRET,
    IG_LOGIN_TOKEN,
    IG_USER_ID,
    PAGE_ID,
    PAGE_TOKEN,
    THREADS_TOKEN,
    THREADS_USER_ID,
    USER_TOKEN,
    ContainerPlan,
    FakeGraph,
    Fault,
    blocked,
    lost_answer,
    rate_limited,
    server_error,
    transient,
)

V = "v21.0"


def image(width: int = 1080, height: int = 1080, kind: str = "JPEG", pad: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (180, 40, 40)).save(buffer, kind)
    return buffer.getvalue() + b"\0" * pad  # decoders ignore bytes after the end marker


@pytest.fixture
async def meta() -> AsyncIterator[FakeGraph]:
    async with FakeGraph() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["fbtrace_id"]
    return dict(body["error"])


async def page_post(http: httpx.AsyncClient, meta: FakeGraph, **data: str) -> httpx.Response:
    return await http.post(f"{meta.graph_url}/{V}/{PAGE_ID}/feed", data={"access_token": PAGE_TOKEN, **data})


async def ig(http: httpx.AsyncClient, meta: FakeGraph, edge: str, **data: str) -> httpx.Response:
    return await http.post(
        f"{meta.graph_url}/{V}/{IG_USER_ID}/{edge}", data={"access_token": USER_TOKEN, **data}
    )


async def th(http: httpx.AsyncClient, meta: FakeGraph, edge: str, **data: str) -> httpx.Response:
    return await http.post(
        f"{meta.threads_url}/v1.0/{THREADS_USER_ID}/{edge}", data={"access_token": THREADS_TOKEN, **data}
    )


async def get(http: httpx.AsyncClient, url: str, token: str, **params: str) -> httpx.Response:
    return await http.get(url, params={"access_token": token, **params})


# --- tokens ----------------------------------------------------------------------------------


async def test_unknown_missing_and_foreign_tokens_are_refused(
    meta: FakeGraph, http: httpx.AsyncClient
) -> None:
    unknown = await http.post(
        f"{meta.graph_url}/{V}/{PAGE_ID}/feed", data={"access_token": "nope", "message": "x"}
    )
    assert unknown.status_code == 400 and error(unknown)["code"] == 190
    assert (
        error(unknown)["type"] == "OAuthException" and "invalid_token" in unknown.headers["www-authenticate"]
    )
    missing = await http.post(f"{meta.graph_url}/{V}/{PAGE_ID}/feed", data={"message": "x"})
    assert error(missing)["code"] == 104
    foreign = await http.post(f"{meta.graph_url}/{V}/{PAGE_ID}/feed", data={"access_token": THREADS_TOKEN})
    assert error(foreign)["code"] == 190
    assert meta.page.posts == []


async def test_bearer_header_is_accepted(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    answer = await http.post(
        f"{meta.graph_url}/{V}/{PAGE_ID}/feed",
        data={"message": "halo"},
        headers={"Authorization": f"Bearer {PAGE_TOKEN}"},
    )
    assert answer.status_code == 200 and meta.page.posts[0].message == "halo"


async def test_expired_and_revoked_tokens_give_their_subcodes(
    meta: FakeGraph, http: httpx.AsyncClient
) -> None:
    meta.advance(61 * 86400)  # the long-lived user token lasts 60 days
    expired = await get(http, f"{meta.graph_url}/{V}/me", USER_TOKEN)
    assert (error(expired)["code"], error(expired)["error_subcode"]) == (190, 463)
    page_token_lives_on = await get(http, f"{meta.graph_url}/{V}/me", PAGE_TOKEN)
    assert page_token_lives_on.json()["id"] == PAGE_ID
    meta.revoke(PAGE_TOKEN, 460)
    revoked = await page_post(http, meta, message="x")
    assert (error(revoked)["code"], error(revoked)["error_subcode"]) == (190, 460)


async def test_unversioned_paths_are_refused(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    answer = await http.post(
        f"{meta.graph_url}/{PAGE_ID}/feed", data={"access_token": PAGE_TOKEN, "message": "x"}
    )
    assert answer.status_code == 400 and "versioned" in error(answer)["message"]


async def test_debug_token_reports_expiry_scopes_and_validity(
    meta: FakeGraph, http: httpx.AsyncClient
) -> None:
    app = f"{APP_ID}|{APP_SECRET}"
    page = (await get(http, f"{meta.graph_url}/{V}/debug_token", app, input_token=PAGE_TOKEN)).json()["data"]
    assert page["is_valid"] and page["type"] == "PAGE" and page["expires_at"] == 0
    assert page["profile_id"] == PAGE_ID and "pages_manage_posts" in page["scopes"]
    user = (await get(http, f"{meta.graph_url}/{V}/debug_token", app, input_token=USER_TOKEN)).json()["data"]
    assert user["expires_at"] == int(meta.now) + 60 * 86400 and user["data_access_expires_at"] > meta.now
    meta.advance(60 * 86400)
    late = (await get(http, f"{meta.graph_url}/{V}/debug_token", app, input_token=USER_TOKEN)).json()["data"]
    assert late["is_valid"] is False and late["error"]["subcode"] == 463
    unknown = (await get(http, f"{meta.graph_url}/{V}/debug_token", app, input_token="zzz")).json()["data"]
    assert unknown["is_valid"] is False and unknown["error"]["code"] == 190


async def test_page_token_setup_path(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    long_lived = await http.get(
        f"{meta.graph_url}/{V}/oauth/access_token",
        params={
            "grant_type": "fb_exchange_token",
            "client_id": APP_ID,
            "client_secret": APP_SECRET,
            "fb_exchange_token": USER_TOKEN,
        },
    )
    assert long_lived.json()["expires_in"] == 60 * 86400
    accounts = (
        await get(http, f"{meta.graph_url}/{V}/me/accounts", long_lived.json()["access_token"])
    ).json()
    assert accounts["data"][0]["access_token"] == PAGE_TOKEN and accounts["data"][0]["id"] == PAGE_ID
    node = await get(http, f"{meta.graph_url}/{V}/{PAGE_ID}", PAGE_TOKEN, fields="instagram_business_account")
    assert node.json() == {"instagram_business_account": {"id": IG_USER_ID}}
    wrong_secret = await http.get(
        f"{meta.graph_url}/{V}/oauth/access_token",
        params={
            "grant_type": "fb_exchange_token",
            "client_id": APP_ID,
            "client_secret": "x",
            "fb_exchange_token": USER_TOKEN,
        },
    )
    assert error(wrong_secret)["code"] == 1


async def test_threads_token_refresh_needs_a_day_and_an_unexpired_token(
    meta: FakeGraph, http: httpx.AsyncClient
) -> None:
    url = f"{meta.threads_url}/refresh_access_token"
    young = await http.get(url, params={"grant_type": "th_refresh_token", "access_token": THREADS_TOKEN})
    assert young.status_code == 400
    meta.advance(86400)
    fresh = await http.get(url, params={"grant_type": "th_refresh_token", "access_token": THREADS_TOKEN})
    assert fresh.json()["expires_in"] == 60 * 86400 and fresh.json()["token_type"] == "bearer"
    meta.advance(59 * 86400)  # the old token's 60 days are over, the refreshed one's not
    me = await get(http, f"{meta.threads_url}/v1.0/me", fresh.json()["access_token"])
    assert me.json()["id"] == THREADS_USER_ID
    too_late = await http.get(url, params={"grant_type": "th_refresh_token", "access_token": THREADS_TOKEN})
    assert (error(too_late)["code"], error(too_late)["error_subcode"]) == (190, 463)


# --- Facebook Page ---------------------------------------------------------------------------


async def test_page_post_gets_the_page_scoped_id_and_is_recorded(
    meta: FakeGraph, http: httpx.AsyncClient
) -> None:
    answer = await page_post(http, meta, message="Berita", link="https://www.medcom.id/a")
    post_id = answer.json()["id"]
    assert answer.status_code == 200 and post_id.startswith(f"{PAGE_ID}_")
    assert [(p.id, p.message, p.link) for p in meta.page.posts] == [
        (post_id, "Berita", "https://www.medcom.id/a")
    ]
    assert "x-app-usage" in answer.headers
    usage = json.loads(answer.headers["x-business-use-case-usage"])
    assert usage[PAGE_ID][0]["type"] == "pages"


async def test_page_post_refusals(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    as_user = await http.post(
        f"{meta.graph_url}/{V}/{PAGE_ID}/feed", data={"access_token": USER_TOKEN, "message": "x"}
    )
    assert error(as_user)["code"] == 200 and "pages_manage_posts" in error(as_user)["message"]
    meta.add_token("EAAweak", kind="PAGE", scopes={"pages_read_engagement"}, profile_id=PAGE_ID)
    weak = await http.post(
        f"{meta.graph_url}/{V}/{PAGE_ID}/feed", data={"access_token": "EAAweak", "message": "x"}
    )
    assert error(weak)["code"] == 200
    assert error(await page_post(http, meta))["code"] == 100
    assert error(await page_post(http, meta, message="x", link="/relative/url"))["code"] == 100
    assert error(await page_post(http, meta, message="x", link="javascript:alert(1)"))["code"] == 100
    assert error(await page_post(http, meta, message="x" * 63207))["code"] == 100
    assert (await page_post(http, meta, message="same")).status_code == 200
    assert error(await page_post(http, meta, message="same"))["code"] == 506
    assert len(meta.page.posts) == 1


async def test_page_feed_lookup_edit_and_delete(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    first = (await page_post(http, meta, message="satu")).json()["id"]
    meta.advance(60)
    second = (await page_post(http, meta, message="dua", link="https://www.medcom.id/b")).json()["id"]
    feed = await get(
        http, f"{meta.graph_url}/{V}/{PAGE_ID}/feed", PAGE_TOKEN, fields="id,message,created_time,link"
    )
    assert [p["id"] for p in feed.json()["data"]] == [second, first]
    assert feed.json()["data"][0]["link"] == "https://www.medcom.id/b"
    assert feed.json()["data"][0]["created_time"].endswith("+0000")
    bad_field = await get(
        http, f"{meta.graph_url}/{V}/{PAGE_ID}/published_posts", PAGE_TOKEN, fields="id,nope"
    )
    assert error(bad_field)["code"] == 100
    edit = await http.post(
        f"{meta.graph_url}/{V}/{first}", data={"access_token": PAGE_TOKEN, "message": "SATU"}
    )
    assert edit.json() == {"success": True} and meta.page.posts[0].message == "SATU"
    gone = await http.delete(f"{meta.graph_url}/{V}/{second}", params={"access_token": PAGE_TOKEN})
    assert gone.json() == {"success": True}
    again = await get(http, f"{meta.graph_url}/{V}/{second}", PAGE_TOKEN)
    assert (error(again)["code"], error(again)["error_subcode"]) == (100, 33)
    feed = await get(http, f"{meta.graph_url}/{V}/{PAGE_ID}/published_posts", PAGE_TOKEN, limit="1")
    assert [p["id"] for p in feed.json()["data"]] == [first]
    third = (await page_post(http, meta, message="tiga")).json()["id"]
    since = await get(http, f"{meta.graph_url}/{V}/{PAGE_ID}/feed", PAGE_TOKEN, since=str(int(meta.now)))
    assert [p["id"] for p in since.json()["data"]] == [third]
    bad = await get(http, f"{meta.graph_url}/{V}/{PAGE_ID}/feed", PAGE_TOKEN, since="yesterday")
    assert error(bad)["code"] == 100


# --- Instagram -------------------------------------------------------------------------------


async def test_instagram_container_then_publish(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    url = meta.serve_image("a.jpg", image(1080, 1350))
    created = await ig(http, meta, "media", image_url=url, caption="Berita #medcom", alt_text="Foto")
    container = created.json()["id"]
    status = await get(http, f"{meta.graph_url}/{V}/{container}", USER_TOKEN, fields="status_code")
    assert status.json() == {"status_code": "FINISHED"}
    published = await ig(http, meta, "media_publish", creation_id=container)
    media_id = published.json()["id"]
    assert [(m.id, m.text) for m in meta.instagram.published] == [(media_id, "Berita #medcom")]
    assert meta.instagram.containers[container].params["alt_text"] == "Foto"
    after = await get(http, f"{meta.graph_url}/{V}/{container}", USER_TOKEN, fields="id,status_code")
    assert after.json() == {"id": container, "status_code": "PUBLISHED"}
    twice = await ig(http, meta, "media_publish", creation_id=container)
    assert twice.status_code == 400 and len(meta.instagram.published) == 1
    listed = await get(
        http, f"{meta.graph_url}/{V}/{IG_USER_ID}/media", USER_TOKEN, fields="id,caption,timestamp"
    )
    assert (
        listed.json()["data"][0]["id"] == media_id and listed.json()["data"][0]["caption"] == "Berita #medcom"
    )
    usage = json.loads(published.headers["x-business-use-case-usage"])
    assert usage[IG_USER_ID][0]["type"] == "instagram"


async def test_instagram_caption_limits(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    url = meta.serve_image("a.jpg", image())
    assert (await ig(http, meta, "media", image_url=url, caption="x" * 2200)).status_code == 200
    too_long = error(await ig(http, meta, "media", image_url=url, caption="x" * 2201))
    assert (too_long["code"], too_long["error_subcode"]) == (36004, 2207010)
    tags = " ".join(f"#tag{i}" for i in range(31))
    assert error(await ig(http, meta, "media", image_url=url, caption=tags))["error_subcode"] == 2207010
    assert (await ig(http, meta, "media", image_url=url, caption=tags.rsplit(" ", 1)[0])).status_code == 200
    mentions = " ".join(f"@user{i}" for i in range(21))
    assert error(await ig(http, meta, "media", image_url=url, caption=mentions))["error_subcode"] == 2207040
    assert (await ig(http, meta, "media", image_url=url, caption="mail@example.com " * 21)).status_code == 200
    meta.instagram.max_hashtags = 5  # Instagram's December 2025 rule, for channels that follow it
    assert error(await ig(http, meta, "media", image_url=url, caption="#a #b #c #d #e #f"))["code"] == 36004


@pytest.mark.parametrize(
    ("data", "code", "subcode"),
    [
        (image(kind="PNG"), 36001, 2207005),
        (b"<html>not an image</html>", 36001, 2207005),
        (image(1000, 1300), 36003, 2207009),  # 0.77, taller than 4:5
        (image(1920, 1000), 36003, 2207009),  # 1.92, wider than 1.91:1
        (image(pad=8 * 1024 * 1024), 36000, 2207004),
    ],
)
async def test_instagram_refuses_images_as_documented(
    meta: FakeGraph, http: httpx.AsyncClient, data: bytes, code: int, subcode: int
) -> None:
    answer = await ig(http, meta, "media", image_url=meta.serve_image("x.jpg", data))
    assert answer.status_code == 400 and (error(answer)["code"], error(answer)["error_subcode"]) == (
        code,
        subcode,
    )
    assert meta.instagram.containers == {}


async def test_instagram_accepts_the_ratio_bounds(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    for width, height in ((1080, 1350), (1910, 1000), (200, 200), (3000, 3000)):
        answer = await ig(
            http, meta, "media", image_url=meta.serve_image(f"{width}.jpg", image(width, height))
        )
        assert answer.status_code == 200, (width, height, answer.text)


async def test_instagram_media_fetch_failures(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    missing = error(await ig(http, meta, "media", image_url=f"{meta.media_url}/nothing.jpg"))
    assert (missing["code"], missing["error_subcode"]) == (9004, 2207052)
    not_url = error(await ig(http, meta, "media", image_url="file:///etc/passwd"))
    assert not_url["error_subcode"] == 2207052
    meta.fetch_timeout, meta.image_delay = 0.2, 1.0
    slow = error(await ig(http, meta, "media", image_url=meta.serve_image("slow.jpg", image())))
    assert (slow["code"], slow["error_subcode"], slow.get("is_transient")) == (-2, 2207003, True)


async def test_instagram_container_states_follow_the_plan(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    url = meta.serve_image("a.jpg", image())
    meta.instagram.plans.extend([ContainerPlan(in_progress_polls=2), ContainerPlan(1, "ERROR", 2207052)])
    slow = (await ig(http, meta, "media", image_url=url)).json()["id"]
    early = error(await ig(http, meta, "media_publish", creation_id=slow))
    assert (early["code"], early["error_subcode"]) == (9007, 2207027)
    states = [
        (await get(http, f"{meta.graph_url}/{V}/{slow}", USER_TOKEN, fields="status_code")).json()[
            "status_code"
        ]
        for _ in range(3)
    ]
    assert states == ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"]
    assert (await ig(http, meta, "media_publish", creation_id=slow)).status_code == 200
    broken = (await ig(http, meta, "media", image_url=url)).json()["id"]
    read = [
        (await get(http, f"{meta.graph_url}/{V}/{broken}", USER_TOKEN, fields="status_code,status")).json()
        for _ in range(2)
    ]
    assert read[1] == {"status_code": "ERROR", "status": "2207052"}


async def test_instagram_containers_expire_after_a_day(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    container = (await ig(http, meta, "media", image_url=meta.serve_image("a.jpg", image()))).json()["id"]
    meta.advance(86400)
    status = await get(http, f"{meta.graph_url}/{V}/{container}", USER_TOKEN, fields="status_code")
    assert status.json()["status_code"] == "EXPIRED"
    late = error(await ig(http, meta, "media_publish", creation_id=container))
    assert (late["code"], late["error_subcode"]) == (-2, 2207020)


async def test_instagram_publishing_limit_rolls_over_24_hours(http: httpx.AsyncClient) -> None:
    async with FakeGraph(ig_quota=25) as meta:
        url = meta.serve_image("a.jpg", image())
        for n in range(25):
            container = (await ig(http, meta, "media", image_url=url, caption=f"post {n}")).json()["id"]
            assert (await ig(http, meta, "media_publish", creation_id=container)).status_code == 200
            meta.advance(60)
        container = (await ig(http, meta, "media", image_url=url)).json()["id"]
        over = error(await ig(http, meta, "media_publish", creation_id=container))
        assert (over["code"], over["error_subcode"]) == (9, 2207042)
        limit = await get(
            http,
            f"{meta.graph_url}/{V}/{IG_USER_ID}/content_publishing_limit",
            USER_TOKEN,
            fields="quota_usage,config",
        )
        assert limit.json() == {
            "data": [{"quota_usage": 25, "config": {"quota_total": 25, "quota_duration": 86400}}]
        }
        meta.advance(86400 - 25 * 60 + 1)  # the first post leaves the window
        assert (await ig(http, meta, "media_publish", creation_id=container)).status_code == 200
        assert len(meta.instagram.published) == 26


async def test_instagram_login_host_takes_only_instagram_tokens(
    meta: FakeGraph, http: httpx.AsyncClient
) -> None:
    url = meta.serve_image("a.jpg", image())
    answer = await http.post(
        f"{meta.instagram_url}/{V}/{IG_USER_ID}/media",
        data={"access_token": IG_LOGIN_TOKEN, "image_url": url},
    )
    assert answer.status_code == 200
    facebook_token = await http.post(
        f"{meta.instagram_url}/{V}/{IG_USER_ID}/media", data={"access_token": USER_TOKEN, "image_url": url}
    )
    assert error(facebook_token)["code"] == 190


async def test_instagram_missing_permission_names_it(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    meta.add_token("EAAnoig", scopes={"instagram_basic", "pages_read_engagement"})
    answer = await http.post(f"{meta.graph_url}/{V}/{IG_USER_ID}/media", data={"access_token": "EAAnoig"})
    assert error(answer)["code"] == 10 and "instagram_content_publish" in error(answer)["message"]


# --- Threads ---------------------------------------------------------------------------------


async def test_threads_text_post_round_trip(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    created = await th(
        http,
        meta,
        "threads",
        media_type="TEXT",
        text="Berita https://www.medcom.id/a",
        topic_tag="Medcom",
        link_attachment="https://www.medcom.id/a",
    )
    container = created.json()["id"]
    status = await get(http, f"{meta.threads_url}/v1.0/{container}", THREADS_TOKEN, fields="status")
    assert status.json() == {"status": "FINISHED"}
    post = (await th(http, meta, "threads_publish", creation_id=container)).json()["id"]
    assert [p.id for p in meta.threads.published] == [post]
    listed = await get(
        http,
        f"{meta.threads_url}/v1.0/{THREADS_USER_ID}/threads",
        THREADS_TOKEN,
        fields="id,text,timestamp,topic_tag",
    )
    assert listed.json()["data"][0] == {
        "id": post,
        "text": "Berita https://www.medcom.id/a",
        "timestamp": listed.json()["data"][0]["timestamp"],
        "topic_tag": "Medcom",
    }
    not_a_container = await get(http, f"{meta.threads_url}/v1.0/{post}", THREADS_TOKEN, fields="status")
    assert error(not_a_container)["code"] == 100 and error(not_a_container)["type"] == "THApiException"
    deleted = await http.delete(f"{meta.threads_url}/v1.0/{post}", params={"access_token": THREADS_TOKEN})
    assert deleted.json() == {"success": True, "deleted_id": post}


async def test_threads_counts_emoji_as_utf8_bytes(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    assert (await th(http, meta, "threads", media_type="TEXT", text="a" * 500)).status_code == 200
    assert (await th(http, meta, "threads", media_type="TEXT", text="a" * 501)).status_code == 400
    assert (await th(http, meta, "threads", media_type="TEXT", text="😀" * 125)).status_code == 200
    refused = await th(http, meta, "threads", media_type="TEXT", text="😀" * 125 + "a")
    assert error(refused)["code"] == 100 and "500" in error(refused)["message"]
    assert (await th(http, meta, "threads", media_type="TEXT", text="é" * 500)).status_code == 200


async def test_threads_link_topic_and_type_rules(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    five = " ".join(f"https://site{i}.example.com/x" for i in range(5))
    assert (await th(http, meta, "threads", media_type="TEXT", text=five + " " + five)).status_code == 200
    six = error(
        await th(http, meta, "threads", media_type="TEXT", text=five, link_attachment="https://other.id/")
    )
    assert "THREADS_API__LINK_LIMIT_EXCEEDED" in six["message"]
    for tag in ("a.b", "R&D", "x" * 51, ""):
        assert (
            await th(http, meta, "threads", media_type="TEXT", text="x", topic_tag=tag)
        ).status_code == 400
    assert (await th(http, meta, "threads", media_type="TEXT")).status_code == 400
    assert (await th(http, meta, "threads", media_type="POLL", text="x")).status_code == 400
    assert (await th(http, meta, "threads", text="x")).status_code == 400
    assert len(meta.threads.containers) == 1


async def test_threads_image_problems_show_on_the_container(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    png = meta.serve_image("a.png", image(kind="PNG"), "image/png")
    good = (await th(http, meta, "threads", media_type="IMAGE", image_url=png, text="x")).json()["id"]
    assert (await th(http, meta, "threads_publish", creation_id=good)).status_code == 200
    banner = meta.serve_image("b.jpg", image(2200, 200))  # 11:1
    bad = (await th(http, meta, "threads", media_type="IMAGE", image_url=banner)).json()["id"]
    status = await get(http, f"{meta.threads_url}/v1.0/{bad}", THREADS_TOKEN, fields="status,error_message")
    assert status.json() == {"status": "ERROR", "error_message": "INVALID_ASPEC_RATIO"}
    refused = error(await th(http, meta, "threads_publish", creation_id=bad))
    assert (refused["code"], refused["error_subcode"]) == (24, 4279009)


async def test_threads_publishing_limit(http: httpx.AsyncClient) -> None:
    async with FakeGraph(threads_quota=2) as meta:
        for _ in range(3):
            container = (await th(http, meta, "threads", media_type="TEXT", text="x")).json()["id"]
            last = await th(http, meta, "threads_publish", creation_id=container)
        assert error(last)["code"] == 9 and len(meta.threads.published) == 2
        limit = await get(
            http,
            f"{meta.threads_url}/v1.0/{THREADS_USER_ID}/threads_publishing_limit",
            THREADS_TOKEN,
            fields="quota_usage,config",
        )
        assert limit.json() == {
            "data": [{"quota_usage": 2, "config": {"quota_total": 2, "quota_duration": 86400}}]
        }


async def test_threads_missing_permission(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    meta.add_token("THAAread", host="threads", user_id=THREADS_USER_ID, scopes={"threads_basic"})
    answer = await http.post(
        f"{meta.threads_url}/v1.0/{THREADS_USER_ID}/threads",
        data={"access_token": "THAAread", "media_type": "TEXT", "text": "x"},
    )
    refused = error(answer)
    assert (refused["code"], refused["error_subcode"]) == (100, 10)
    assert "threads_content_publish" in refused["message"]


# --- scripted faults -------------------------------------------------------------------------


async def test_rate_limit_faults_carry_usage_headers(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    meta.fail(rate_limited(4, on="POST feed", regain_minutes=7), rate_limited(80001, on="POST feed"))
    first = await page_post(http, meta, message="x")
    assert first.status_code == 403 and error(first)["code"] == 4 and error(first)["is_transient"] is True
    assert json.loads(first.headers["x-app-usage"])["call_count"] == 100
    assert (
        json.loads(first.headers["x-business-use-case-usage"])[PAGE_ID][0]["estimated_time_to_regain_access"]
        == 7
    )
    assert error(await page_post(http, meta, message="x"))["code"] == 80001
    assert (await page_post(http, meta, message="x")).status_code == 200
    assert len(meta.page.posts) == 1


async def test_block_transient_and_server_faults(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    meta.fail(
        blocked(), transient(1), server_error(502), Fault(190, subcode=460, message="session invalidated")
    )
    assert error(await page_post(http, meta, message="x"))["code"] == 368
    assert error(await page_post(http, meta, message="x"))["is_transient"] is True
    proxy = await page_post(http, meta, message="x")
    assert proxy.status_code == 502 and proxy.headers["content-type"].startswith("text/html")
    assert error(await page_post(http, meta, message="x"))["error_subcode"] == 460
    assert meta.page.posts == []


async def test_lost_answer_posts_and_the_post_can_be_found(meta: FakeGraph, http: httpx.AsyncClient) -> None:
    meta.fail(lost_answer("POST feed"))
    with pytest.raises(httpx.RemoteProtocolError):
        await page_post(http, meta, message="hilang")
    assert meta.dropped == 1 and [p.message for p in meta.page.posts] == ["hilang"]
    feed = await get(http, f"{meta.graph_url}/{V}/{PAGE_ID}/feed", PAGE_TOKEN, fields="id,message")
    assert feed.json()["data"][0] == {"id": meta.page.posts[0].id, "message": "hilang"}
    assert meta.requests[0].status == 0 and meta.requests[0].endpoint == "POST feed"


async def test_lost_publish_answer_leaves_a_published_container(
    meta: FakeGraph, http: httpx.AsyncClient
) -> None:
    container = (
        await ig(http, meta, "media", image_url=meta.serve_image("a.jpg", image()), caption="c")
    ).json()["id"]
    meta.fail(Fault(2, on="POST media_publish", after=True))
    assert error(await ig(http, meta, "media_publish", creation_id=container))["code"] == 2
    status = await get(http, f"{meta.graph_url}/{V}/{container}", USER_TOKEN, fields="status_code")
    assert status.json()["status_code"] == "PUBLISHED" and len(meta.instagram.published) == 1
