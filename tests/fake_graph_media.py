"""Instagram and Threads container publishing for tests/fake_graph.py.

Both platforms publish in two steps: a container is created from a public image URL (the fake
fetches it, as Meta does) or text, it is IN_PROGRESS for a while, then FINISHED (or ERROR, or
EXPIRED after 24 h), and only a FINISHED container can be published — once, within the
account's rolling 24 h publishing limit. Tests drive the states with `ContainerPlan`s.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.fake_graph_rules import (
    IG_ALREADY_PUBLISHED,
    THREADS_LINK_LIMIT,
    THREADS_NOT_READY,
    THREADS_OVER_QUOTA,
    Call,
    GraphError,
    graph_time,
    ig_caption_problem,
    ig_error,
    ig_image_problem,
    inspect_image,
    invalid_parameter,
    is_web_url,
    no_such_object,
    threads_image_problem,
    threads_length,
    threads_links,
    threads_topic_problem,
)

DAY = 86400.0
_ids = itertools.count(1)


def new_id(base: int) -> str:
    """A numeric id unique across the whole fake (Meta's ids are numeric strings)."""
    return str(base + next(_ids))


@dataclass
class Fetched:
    """What fetching a media URL gave: the bytes, or why not (timeout, unreachable, too_large)."""

    data: bytes = b""
    failure: str = ""


Fetch = Callable[[str], Awaitable[Fetched]]


@dataclass
class ContainerPlan:
    """How the next container behaves: IN_PROGRESS for `in_progress_polls` status reads, then
    `outcome` (FINISHED, ERROR or EXPIRED). `error` is what an ERROR container reports: an
    Instagram subcode (its `status`) or a Threads `error_message`."""

    in_progress_polls: int = 0
    outcome: str = "FINISHED"
    error: int | str = ""


@dataclass
class Container:
    id: str
    owner: str
    created: float
    params: dict[str, str]
    plan: ContainerPlan
    polls_left: int = 0
    published_as: str = ""  # the media id once published

    def state(self, now: float) -> str:
        """IN_PROGRESS, FINISHED, ERROR, EXPIRED or PUBLISHED at `now` (without counting a poll)."""
        if self.published_as:
            return "PUBLISHED"
        if now - self.created >= DAY:
            return "EXPIRED"
        return "IN_PROGRESS" if self.polls_left > 0 else self.plan.outcome

    def poll(self, now: float) -> str:
        """The state a status read sees; each read while IN_PROGRESS brings FINISHED closer."""
        state = self.state(now)
        if state == "IN_PROGRESS":
            self.polls_left -= 1
        return state


@dataclass
class Published:
    """One published Instagram media or Threads post, as the fake recorded it."""

    id: str
    container: Container
    timestamp: float
    deleted: bool = False

    @property
    def text(self) -> str:
        return self.container.params.get("caption") or self.container.params.get("text", "")

    def field(self, name: str, permalink: str) -> Any:
        params = self.container.params
        values: dict[str, Any] = {
            "id": self.id,
            "caption": self.text,
            "text": self.text,
            "timestamp": graph_time(self.timestamp),
            "permalink": f"{permalink}/{self.id}",
            "media_type": params.get("media_type", "IMAGE"),
            "media_url": params.get("image_url", ""),
            "alt_text": params.get("alt_text", ""),
            "topic_tag": params.get("topic_tag", ""),
            "link_attachment_url": params.get("link_attachment", ""),
            "shortcode": self.id[-8:],
            "is_quote_post": False,
        }
        return values[name]


class PublishingAccount:
    """What Instagram and Threads share: containers, plans, the rolling limit, published media."""

    def __init__(self, user_id: str, fetch: Fetch, quota_total: int) -> None:
        self.user_id = user_id
        self.fetch = fetch
        self.quota_total = quota_total
        self.plans: deque[ContainerPlan] = deque()  # for the next containers, in order
        self.default_plan = ContainerPlan()
        self.containers: dict[str, Container] = {}
        self.published: list[Published] = []
        self.publish_times: list[float] = []

    def quota_usage(self, now: float, since: float = 0.0) -> int:
        start = max(now - DAY, since)
        return sum(1 for t in self.publish_times if start <= t <= now)

    def _new_container(self, call: Call, base: int, plan: ContainerPlan | None = None) -> Container:
        plan = plan or (self.plans.popleft() if self.plans else self.default_plan)
        params = {k: v for k, v in call.params.items() if k != "access_token"}
        container = Container(new_id(base), self.user_id, call.now, params, plan, plan.in_progress_polls)
        self.containers[container.id] = container
        return container

    def _own_user(self, call: Call) -> None:
        if call.path[0] != self.user_id:
            raise no_such_object(call.path[0])

    def media(self, media_id: str) -> Published | None:
        return next((m for m in self.published if m.id == media_id and not m.deleted), None)

    def _listing(
        self, call: Call, default: str, allowed: set[str], node: str, permalink: str
    ) -> dict[str, Any]:
        names = call.fields(default, allowed, node)
        since, until = call.window()
        items = [m for m in reversed(self.published) if not m.deleted and since <= m.timestamp <= until]
        return {"data": [{n: m.field(n, permalink) for n in names} for m in items[: call.limit()]]}


IG_MEDIA_FIELDS = {
    "id",
    "caption",
    "timestamp",
    "permalink",
    "media_type",
    "media_url",
    "alt_text",
    "shortcode",
}


class InstagramAccount(PublishingAccount):
    """An Instagram professional account (`POST /{ig-user-id}/media`, `/media_publish`, …)."""

    max_caption = 2200
    max_hashtags = 30  # Meta's API reference; Instagram announced 5 per post in December 2025
    max_mentions = 20

    def scopes(self, host: str) -> tuple[str, str]:
        if host == "instagram":  # Instagram API with Instagram Login
            return "instagram_business_basic", "instagram_business_content_publish"
        return "instagram_basic", "instagram_content_publish"

    async def create(self, call: Call) -> dict[str, Any]:
        self._own_user(call)
        call.need(*self.scopes(call.host))
        media_type = call.params.get("media_type", "IMAGE")
        if media_type in ("REELS", "VIDEO", "STORIES", "CAROUSEL"):
            raise invalid_parameter(f"fake: media_type={media_type} is not modelled by the fake")
        if media_type != "IMAGE":
            raise ig_error(2207023)
        problem = ig_caption_problem(
            call.params.get("caption", ""), self.max_caption, self.max_hashtags, self.max_mentions
        )
        if problem:
            raise problem
        url = call.params.get("image_url", "")
        if not url:
            raise invalid_parameter("(#100) The parameter image_url is required")
        if not is_web_url(url):
            raise ig_error(2207052, url)
        fetched = await self.fetch(url)
        if fetched.failure == "timeout":
            raise ig_error(2207003)
        if fetched.failure == "too_large":
            raise ig_error(2207004)
        if fetched.failure:
            raise ig_error(2207052, f"{url} ({fetched.failure})")
        problem = ig_image_problem(inspect_image(fetched.data))
        if problem:
            raise problem
        return {"id": self._new_container(call, 17_890_000_000_000_000).id}

    async def status(self, call: Call) -> dict[str, Any]:
        container = self.containers[call.path[0]]
        call.need(self.scopes(call.host)[0])
        names = call.fields("id", {"id", "status_code", "status"}, "ShadowIGMediaBuilder")
        state = container.poll(call.now)
        values = {
            "id": container.id,
            "status_code": state,
            # Meta: "If status_code is ERROR, this value will be an error subcode."
            "status": str(container.plan.error) if state == "ERROR" else state.title(),
        }
        return {n: values[n] for n in names}

    async def publish(self, call: Call) -> dict[str, Any]:
        self._own_user(call)
        call.need(*self.scopes(call.host))
        creation_id = call.params.get("creation_id", "")
        if not creation_id:
            raise invalid_parameter("(#100) The parameter creation_id is required")
        container = self.containers.get(creation_id)
        if container is None:
            raise no_such_object(creation_id)
        state = container.state(call.now)
        if state == "PUBLISHED":
            raise ig_error(IG_ALREADY_PUBLISHED)
        if state == "EXPIRED":
            raise ig_error(2207020)
        if state != "FINISHED":
            raise ig_error(2207027)
        if self.quota_usage(call.now) >= self.quota_total:
            raise ig_error(2207042)
        media = Published(new_id(17_950_000_000_000_000), container, call.now)
        container.published_as = media.id
        self.published.append(media)
        self.publish_times.append(call.now)
        return {"id": media.id}

    async def limit(self, call: Call) -> dict[str, Any]:
        self._own_user(call)
        call.need(self.scopes(call.host)[0])
        names = call.fields(
            "quota_usage", {"quota_usage", "config", "rate_limit_settings"}, "ContentPublishingLimit"
        )
        since = call.window()[0]
        if since and since < call.now - DAY:
            raise invalid_parameter("(#100) Param since must be a Unix timestamp no older than 24 hours")
        values = {
            "quota_usage": self.quota_usage(call.now, since),
            "config": {"quota_total": self.quota_total, "quota_duration": int(DAY)},
        }
        return {"data": [{n: values[n] for n in names if n in values}]}

    async def list_media(self, call: Call) -> dict[str, Any]:
        self._own_user(call)
        call.need(self.scopes(call.host)[0])
        return self._listing(call, "id", IG_MEDIA_FIELDS, "IGMedia", "https://www.instagram.com/p")

    async def get_media(self, call: Call) -> dict[str, Any]:
        media = self.media(call.path[0])
        if media is None:
            raise no_such_object(call.path[0])
        names = call.fields("id", IG_MEDIA_FIELDS, "IGMedia")
        return {n: media.field(n, "https://www.instagram.com/p") for n in names}

    async def delete_media(self, call: Call) -> dict[str, Any]:
        media = self.media(call.path[0])
        if media is None:
            raise no_such_object(call.path[0])
        call.need(*self.scopes(call.host))
        media.deleted = True
        return {"success": True}


THREADS_FIELDS = {
    "id",
    "text",
    "timestamp",
    "permalink",
    "media_type",
    "media_url",
    "topic_tag",
    "link_attachment_url",
    "shortcode",
    "is_quote_post",
    "alt_text",
}


class ThreadsAccount(PublishingAccount):
    """A Threads profile on graph.threads.net (`POST /{threads-user-id}/threads`, …)."""

    max_text = 500
    max_links = 5
    max_alt_text = 1000
    deletes_per_day = 100

    def __init__(self, user_id: str, fetch: Fetch, quota_total: int = 250) -> None:
        super().__init__(user_id, fetch, quota_total)
        self.delete_times: list[float] = []

    async def create(self, call: Call) -> dict[str, Any]:
        self._own_user(call)
        call.need("threads_basic", "threads_content_publish")
        params = call.params
        media_type = params.get("media_type", "")
        if (
            media_type in ("VIDEO", "CAROUSEL")
            or params.get("auto_publish_text")
            or params.get("text_attachment")
        ):
            raise invalid_parameter(
                "fake: VIDEO, CAROUSEL, auto_publish_text and text_attachment are not modelled by the fake"
            )
        if media_type not in ("TEXT", "IMAGE"):
            raise invalid_parameter(
                f"Param media_type must be one of {{TEXT, IMAGE, VIDEO, CAROUSEL}}, got {media_type!r}"
            )
        text, attachment = params.get("text", ""), params.get("link_attachment", "")
        if media_type == "TEXT" and not text:
            raise invalid_parameter("Param text is required for media_type=TEXT")
        if threads_length(text) > self.max_text:
            raise invalid_parameter(f"Param text must be at most {self.max_text} characters long.")
        if threads_links(text, attachment) > self.max_links:
            raise invalid_parameter(
                f"{THREADS_LINK_LIMIT}: a post can contain at most {self.max_links} links."
            )
        if attachment and (media_type != "TEXT" or not is_web_url(attachment)):
            raise invalid_parameter("Param link_attachment must be a valid URL, on a text-only post")
        if "topic_tag" in params and (why := threads_topic_problem(params["topic_tag"])):
            raise invalid_parameter(why)
        if len(params.get("alt_text", "")) > self.max_alt_text:
            raise invalid_parameter(f"Param alt_text must be at most {self.max_alt_text} characters long.")
        plan = None
        if media_type == "IMAGE":
            url = params.get("image_url", "")
            if not is_web_url(url):
                raise invalid_parameter("Param image_url must be a valid URL for media_type=IMAGE")
            fetched = await self.fetch(url)
            why = "UNKNOWN" if fetched.failure else threads_image_problem(inspect_image(fetched.data))
            if why:  # Threads reports media problems on the container, not on creation
                plan = ContainerPlan(0, "ERROR", why)
        return {"id": self._new_container(call, 18_000_000_000_000_000, plan).id}

    async def status(self, call: Call) -> dict[str, Any]:
        container = self.containers[call.path[0]]
        call.need("threads_basic")
        names = call.fields("id,status", {"id", "status", "error_message"}, "ThreadsMediaContainer")
        state = container.poll(call.now)
        values: dict[str, Any] = {"id": container.id, "status": state}
        if state == "ERROR":
            values["error_message"] = str(container.plan.error or "UNKNOWN")
        return {n: values[n] for n in names if n in values}

    async def publish(self, call: Call) -> dict[str, Any]:
        self._own_user(call)
        call.need("threads_basic", "threads_content_publish")
        container = self.containers.get(call.params.get("creation_id", ""))
        if container is None:
            raise no_such_object(call.params.get("creation_id", ""))
        if container.state(call.now) != "FINISHED":
            code, subcode, message = THREADS_NOT_READY
            raise GraphError(400, code, message, subcode=subcode)
        if self.quota_usage(call.now) >= self.quota_total:
            code, sub, message = THREADS_OVER_QUOTA
            raise GraphError(400, code, message, subcode=sub)
        post = Published(new_id(18_050_000_000_000_000), container, call.now)
        container.published_as = post.id
        self.published.append(post)
        self.publish_times.append(call.now)
        return {"id": post.id}

    async def limit(self, call: Call) -> dict[str, Any]:
        self._own_user(call)
        call.need("threads_basic", "threads_content_publish")
        names = call.fields(
            "quota_usage,config",
            {
                "quota_usage",
                "config",
                "reply_quota_usage",
                "reply_config",
                "delete_quota_usage",
                "delete_config",
            },
            "ThreadsPublishingLimit",
        )
        day = {"quota_duration": int(DAY)}
        values = {
            "quota_usage": self.quota_usage(call.now),
            "config": {"quota_total": self.quota_total, **day},
            "reply_quota_usage": 0,
            "reply_config": {"quota_total": 1000, **day},
            "delete_quota_usage": sum(1 for t in self.delete_times if t > call.now - DAY),
            "delete_config": {"quota_total": self.deletes_per_day, **day},
        }
        return {"data": [{n: values[n] for n in names}]}

    async def list_posts(self, call: Call) -> dict[str, Any]:
        self._own_user(call)
        call.need("threads_basic")
        return self._listing(call, "id", THREADS_FIELDS, "ThreadsMedia", "https://www.threads.net/post")

    async def get_post(self, call: Call) -> dict[str, Any]:
        post = self.media(call.path[0])
        if post is None:
            raise no_such_object(call.path[0])
        call.need("threads_basic")
        names = call.fields("id", THREADS_FIELDS, "ThreadsMedia")
        return {n: post.field(n, "https://www.threads.net/post") for n in names}

    async def delete_post(self, call: Call) -> dict[str, Any]:
        post = self.media(call.path[0])
        if post is None:
            raise no_such_object(call.path[0])
        call.need("threads_basic", "threads_delete")
        if sum(1 for t in self.delete_times if t > call.now - DAY) >= self.deletes_per_day:
            raise GraphError(400, 9, "Application request limit reached: at most 100 deletes per day.")
        post.deleted = True
        self.delete_times.append(call.now)
        return {"success": True, "deleted_id": post.id}
