"""A strict local stand-in for Discord's Execute Webhook (`POST /api/webhooks/ID/TOKEN`) and its
Edit / Delete Webhook Message (`PATCH` / `DELETE …/messages/MESSAGE_ID`: 404 "Unknown Message",
code 10008, for a message that is not there).

It validates what Discord validates (the token, a JSON body, content ≤ 2000, at most 10 embeds,
embed field limits and the 6000 total, all counted in code points as Discord does, colour and
timestamp formats) and what siar promises (`?wait=true`, `allowed_mentions: {"parse": []}`).
Tests can script the next answers (429 with rate-limit headers, 5xx, 401, 404) or make it hang.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

WEBHOOK_ID = "112233445566778899"
TOKEN = "tok-Secret_webhook-token-4711"
LIMITS = {"title": 256, "description": 4096}


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    status: int = 0


def form_error(path: str, message: str) -> dict[str, Any]:
    """Discord's 50035 "Invalid Form Body" shape for one field."""
    errors: dict[str, Any] = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": message}]}
    for part in reversed(path.split(".")):
        errors = {part: errors}
    return {"code": 50035, "errors": errors, "message": "Invalid Form Body"}


def check_message(body: Any) -> tuple[str, dict[str, Any]] | None:
    """(why, Discord's error body) when Discord (or siar's promise) rejects `body`, else None."""
    if not isinstance(body, dict):
        return "not a JSON object", {"code": 50109, "message": "The request body contains invalid JSON."}
    if body.get("allowed_mentions") != {"parse": []}:
        return "allowed_mentions is not {parse: []}", form_error("allowed_mentions", "siar must not ping")
    content, embeds = body.get("content", ""), body.get("embeds", [])
    if not content and not embeds:
        return "empty message", {"code": 50006, "message": "Cannot send an empty message"}
    if not isinstance(content, str) or len(content) > 2000:
        return "content too long", form_error("content", "Must be 2000 or fewer in length.")
    if not isinstance(embeds, list) or len(embeds) > 10:
        return "too many embeds", form_error("embeds", "Must be 10 or fewer in length.")
    total = 0
    for i, embed in enumerate(embeds):
        for key, limit in LIMITS.items():
            value = embed.get(key, "")
            if not isinstance(value, str) or len(value) > limit:
                return f"embed {key} too long", form_error(
                    f"embeds.{i}.{key}", f"Must be {limit} or fewer in length."
                )
            total += len(value)
        for key, sub, limit in (("footer", "text", 2048), ("author", "name", 256)):
            if key in embed:
                value = embed[key].get(sub, "")
                if not isinstance(value, str) or not value or len(value) > limit:
                    return f"embed {key} invalid", form_error(
                        f"embeds.{i}.{key}.{sub}", f"Must be between 1 and {limit} in length."
                    )
                total += len(value)
        fields = embed.get("fields", [])
        if not isinstance(fields, list) or len(fields) > 25:
            return "too many fields", form_error(f"embeds.{i}.fields", "Must be 25 or fewer in length.")
        for j, item in enumerate(fields):
            for key, limit in (("name", 256), ("value", 1024)):
                value = item.get(key, "") if isinstance(item, dict) else ""
                if not isinstance(value, str) or not value.strip() or len(value) > limit:
                    return f"field {key} invalid", form_error(
                        f"embeds.{i}.fields.{j}.{key}", f"Must be between 1 and {limit} in length."
                    )
                total += len(value)
        color = embed.get("color", 0)
        if not isinstance(color, int) or not 0 <= color <= 0xFFFFFF:
            return "bad colour", form_error(f"embeds.{i}.color", "Int value should be <= 16777215.")
        for key in ("url",):
            if key in embed and not str(embed[key]).startswith(("http://", "https://")):
                return "bad url", form_error(f"embeds.{i}.url", "Not a well formed URL.")
        if "image" in embed and not str(embed["image"].get("url", "")).startswith(("http://", "https://")):
            return "bad image url", form_error(f"embeds.{i}.image.url", "Not a well formed URL.")
        if "timestamp" in embed:
            try:
                stamp = datetime.fromisoformat(embed["timestamp"])
            except (TypeError, ValueError):
                stamp = None
            if stamp is None or stamp.tzinfo is None:
                return "bad timestamp", form_error(f"embeds.{i}.timestamp", "Invalid ISO8601 timestamp.")
    if total > 6000:
        return "embeds over 6000", form_error("embeds", "Embed size exceeds maximum size of 6000")
    for key, limit in (("username", 80),):
        if key in body and not 1 <= len(body[key]) <= limit:
            return f"bad {key}", form_error(key, f"Must be between 1 and {limit} in length.")
    return None


class FakeDiscord:
    """`with FakeDiscord() as d:` … `d.webhook_url`; `d.messages` the accepted bodies."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.messages: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}  # message id -> its current body (edits, deletes)
        self.deleted: set[str] = set()
        self.script: deque[Answer] = deque()
        self.hang = 0.0
        self.problems: list[str] = []
        self.remaining = 1000  # X-RateLimit-Remaining after the next success is one less
        self.reset_after = "2.0"  # X-RateLimit-Reset-After of a success
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_PATCH(self) -> None:
                self.do_POST()

            def do_DELETE(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer._lock:
                    status, body, headers = outer._handle(self, raw)
                if outer.hang:
                    time.sleep(outer.hang)
                data = b"" if body is None else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    if body is not None:
                        self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def webhook_url(self) -> str:
        return f"{self.base}/api/webhooks/{WEBHOOK_ID}/{TOKEN}"

    def _refuse(self, seen: Seen, status: int, body: Any, why: str) -> tuple[int, Any, dict[str, str]]:
        self.problems.append(why)
        seen.status = status
        return status, body, {}

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        seen = Seen(handler.command, parts.path, parse_qs(parts.query), headers, body)
        self.requests.append(seen)
        segments = parts.path.strip("/").split("/")
        message_path = len(segments) == 6 and segments[4] == "messages"
        if segments[:2] != ["api", "webhooks"] or not (len(segments) == 4 or message_path):
            return self._refuse(seen, 404, {"message": "404: Not Found", "code": 0}, "path")
        if segments[2] != WEBHOOK_ID:
            return self._refuse(seen, 404, {"message": "Unknown Webhook", "code": 10015}, "unknown webhook")
        if segments[3] != TOKEN:
            return self._refuse(seen, 401, {"message": "Invalid Webhook Token", "code": 50027}, "bad token")
        if self.script:
            answer = self.script.popleft()
            seen.status = answer.status
            return answer.status, answer.body, answer.headers
        if message_path or handler.command != "POST":
            return self._message(seen, handler.command, segments[5] if message_path else "", body)
        if seen.query.get("wait") != ["true"]:
            return self._refuse(seen, 400, {"message": "siar must wait=true", "code": 0}, "no wait=true")
        if not headers.get("content-type", "").startswith("application/json"):
            return self._refuse(
                seen, 400, {"message": "Cannot send an empty message", "code": 50006}, "not JSON"
            )
        problem = check_message(body)
        if problem is not None:
            return self._refuse(seen, 400, problem[1], problem[0])
        self.messages.append(body)
        seen.status = 200
        message_id = str(1170000000000000000 + len(self.messages))
        self.by_id[message_id] = body
        self.remaining = max(0, self.remaining - 1)
        message = {
            "id": message_id,
            "type": 0,
            "channel_id": "998877665544332211",
            "webhook_id": WEBHOOK_ID,
            "content": body.get("content", ""),
            "embeds": body.get("embeds", []),
            "timestamp": "2020-10-09T07:00:00+00:00",
        }
        return (
            200,
            message,
            {
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset-After": self.reset_after,
                "X-RateLimit-Bucket": "abcd1234",
            },
        )

    def _message(
        self, seen: Seen, method: str, message_id: str, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """PATCH (edit) or DELETE one message the webhook sent."""
        if method not in ("PATCH", "DELETE") or not message_id:
            return self._refuse(seen, 405, {"message": "405: Method Not Allowed", "code": 0}, "method")
        if message_id not in self.by_id or message_id in self.deleted:
            return self._refuse(seen, 404, {"message": "Unknown Message", "code": 10008}, "unknown message")
        seen.status = 200 if method == "PATCH" else 204
        if method == "DELETE":
            self.deleted.add(message_id)
            return 204, None, {}
        if not seen.headers.get("content-type", "").startswith("application/json"):
            return self._refuse(seen, 400, {"message": "Cannot send an empty message", "code": 50006}, "JSON")
        problem = check_message(body)
        if problem is not None:
            return self._refuse(seen, 400, problem[1], problem[0])
        self.by_id[message_id] = {**self.by_id[message_id], **body, "edited": True}
        message = {"id": message_id, "channel_id": "998877665544332211", **self.by_id[message_id]}
        return 200, message, {}

    def __enter__(self) -> FakeDiscord:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
