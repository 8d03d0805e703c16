"""A Facebook Page for tests/fake_graph.py: `POST /{page-id}/feed`, reading the feed back, and
editing or deleting a post (`POST`/`DELETE /{page-post-id}`).

Posting needs a Page access token of this Page with pages_manage_posts and
pages_read_engagement; the answer's id is "{page-id}_{post-id}".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from tests.fake_graph_rules import Call, GraphError, graph_time, invalid_parameter, is_web_url, no_such_object

_post_numbers = itertools.count(122_100_000_000_000_001)
POST_FIELDS = {
    "id",
    "message",
    "created_time",
    "updated_time",
    "permalink_url",
    "is_published",
    "link",
    "scheduled_publish_time",
}
POST_PERMISSIONS = ("pages_read_engagement", "pages_manage_posts")


@dataclass
class PagePost:
    """One post as the fake recorded it."""

    id: str
    message: str
    link: str
    created: float
    published: bool = True
    scheduled_publish_time: str = ""
    updated: float = 0.0
    deleted: bool = False

    def field(self, name: str) -> Any:
        page_id, post_id = self.id.split("_")
        values: dict[str, Any] = {
            "id": self.id,
            "message": self.message,
            "link": self.link,
            "created_time": graph_time(self.created),
            "updated_time": graph_time(self.updated or self.created),
            "is_published": self.published,
            "permalink_url": f"https://www.facebook.com/{page_id}/posts/{post_id}",
            "scheduled_publish_time": self.scheduled_publish_time,
        }
        return values[name]


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise invalid_parameter(f"(#100) Param {name} must be a boolean")


class FacebookPage:
    """The Page's posts; `posts` keeps every post (deleted ones flagged), oldest first."""

    max_message = 63206  # widely cited; Meta does not document a number for the Graph API (ASSUMED)

    def __init__(self, page_id: str, name: str, instagram_id: str) -> None:
        self.page_id, self.name, self.instagram_id = page_id, name, instagram_id
        self.posts: list[PagePost] = []

    def post(self, post_id: str) -> PagePost | None:
        return next((p for p in self.posts if p.id == post_id and not p.deleted), None)

    def _as_page(self, call: Call) -> None:
        """Posting as the Page needs a Page token of this Page with both permissions (code 200)."""
        token = call.token
        if (
            token.kind != "PAGE"
            or token.profile_id != self.page_id
            or not all(p in token.scopes for p in POST_PERMISSIONS)
        ):
            raise GraphError(
                403,
                200,
                "(#200) If posting to a page, requires both pages_read_engagement and "
                "pages_manage_posts as an admin with sufficient administrative permission",
            )

    def _can_read(self, call: Call) -> None:
        if "pages_read_engagement" not in call.token.scopes:
            raise GraphError(
                403,
                10,
                "(#10) This endpoint requires the 'pages_read_engagement' permission or "
                "the 'Page Public Content Access' feature.",
            )

    async def publish(self, call: Call) -> dict[str, Any]:
        self._as_page(call)
        message, link = call.params.get("message", ""), call.params.get("link", "")
        if not message and not link:
            raise invalid_parameter("(#100) Missing message or attachment")  # message ASSUMED
        if link and not is_web_url(link):
            raise invalid_parameter(f"(#100) The parameter link must be a valid URL, got {link!r}")  # ASSUMED
        if len(message) > self.max_message:
            raise invalid_parameter(
                f"(#100) Param message must be at most {self.max_message} characters long"
            )
        published = _flag(call.params.get("published", "true"), "published")
        scheduled = call.params.get("scheduled_publish_time", "")
        if scheduled and published:
            raise invalid_parameter("(#100) scheduled_publish_time can only be used with published=false")
        last = next((p for p in reversed(self.posts) if not p.deleted and p.published), None)
        if published and last is not None and (last.message, last.link) == (message, link):
            raise GraphError(400, 506, "(#506) Duplicate status message")
        post = PagePost(
            f"{self.page_id}_{next(_post_numbers)}", message, link, call.now, published, scheduled
        )
        self.posts.append(post)
        return {"id": post.id}

    async def feed(self, call: Call) -> dict[str, Any]:
        """GET /{page-id}/feed and /published_posts: newest first."""
        self._can_read(call)
        names = call.fields("id,message,created_time", POST_FIELDS, "PagePost")
        since, until = call.window()
        visible = [
            p for p in reversed(self.posts) if not p.deleted and p.published and since <= p.created <= until
        ]
        return {"data": [{n: p.field(n) for n in names} for p in visible[: call.limit()]]}

    async def read(self, call: Call) -> dict[str, Any]:
        post = self.post(call.path[0])
        if post is None:
            raise no_such_object(call.path[0])
        self._can_read(call)
        names = call.fields("id,message,created_time", POST_FIELDS, "PagePost")
        return {n: post.field(n) for n in names}

    async def edit(self, call: Call) -> dict[str, Any]:
        post = self.post(call.path[0])
        if post is None:
            raise no_such_object(call.path[0])
        self._as_page(call)
        if "message" not in call.params:
            raise invalid_parameter("(#100) Nothing to update: pass message")
        if len(call.params["message"]) > self.max_message:
            raise invalid_parameter(
                f"(#100) Param message must be at most {self.max_message} characters long"
            )
        post.message, post.updated = call.params["message"], call.now
        return {"success": True}

    async def delete(self, call: Call) -> dict[str, Any]:
        post = self.post(call.path[0])
        if post is None:
            raise no_such_object(call.path[0])
        self._as_page(call)
        post.deleted = True
        return {"success": True}

    async def node(self, call: Call) -> dict[str, Any]:
        """GET /{page-id}?fields=id,name,instagram_business_account"""
        names = call.fields("id,name", {"id", "name", "instagram_business_account"}, "Page")
        values = {
            "id": self.page_id,
            "name": self.name,
            "instagram_business_account": {"id": self.instagram_id},
        }
        return {n: values[n] for n in names}
