"""A strict fake of the few Mastodon API endpoints siar uses, on 127.0.0.1.

Strict where Mastodon is: a Bearer token is required, a status longer than the instance's
configured maximum (counted Mastodon's way: grapheme clusters, every http(s) URL as
`characters_reserved_per_url`, the content warning included) is refused with 422, media still
processing cannot be attached, and an Idempotency-Key returns the status it first created.
Statuses can be read (`GET /api/v1/statuses/:id`, `…/source`), edited (`PUT`, the same length
rule; attachments not listed in `media_ids` are dropped, as Mastodon does) and deleted
(`DELETE`; 404 "Record not found" for one that is not there).
`faults` scripts answers (429 with headers, 5xx before or after creating, 401, 422).
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import regex

# Mastodon links only URLs with a scheme; trailing punctuation is not part of the URL.
_URL = re.compile(r"https?://[^\s]+")
_TRAILING = re.compile(r"[.,;:!?'\")\]]+$")


def mastodon_length(text: str, url_length: int) -> int:
    """Mastodon's StatusLengthValidator, independently of bot.counting."""

    def replace(match: re.Match[str]) -> str:
        url = match.group(0)
        tail = _TRAILING.search(url)
        kept = url[: tail.start()] if tail else url
        return "x" * url_length + url[len(kept) :]

    return len(regex.findall(r"\X", _URL.sub(replace, text)))


@dataclass
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    after_create: bool = False  # create the status, then answer with this fault (a lost response)


@dataclass
class FakeMastodon:
    token: str = "secret-token"
    max_characters: int = 500
    url_length: int = 23
    v2_instance: bool = True
    v1_instance: bool = True
    media_processing_polls: int = 1  # GET /api/v1/media/:id answers 206 this many times
    statuses: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    idempotency: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeMastodon:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # --- HTTP plumbing ---------------------------------------------------------------------

    def _reply(
        self, h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        headers = {k.lower(): v for k, v in h.headers.items()}
        length = int(headers.get("content-length", "0") or 0)
        raw = h.rfile.read(length) if length else b""
        self.requests.append((method, h.path, headers))
        with self._lock:
            if method == "GET" and h.path == "/api/v2/instance":
                return self._instance(h, self.v2_instance)
            if method == "GET" and h.path == "/api/v1/instance":
                return self._instance(h, self.v1_instance)
            if headers.get("authorization") != f"Bearer {self.token}":
                return self._reply(h, 401, {"error": "The access token is invalid"})
            if method == "POST" and h.path == "/api/v1/statuses":
                return self._post_status(h, headers, raw)
            if method == "POST" and h.path == "/api/v2/media":
                return self._upload(h, headers, raw)
            if method == "GET" and h.path.startswith("/api/v1/media/"):
                return self._media(h, h.path.rsplit("/", 1)[-1])
            found = re.fullmatch(r"/api/v1/statuses/(\d+)(/source)?", h.path)
            status = self._status(found.group(1)) if found else None
            if found and status is None:
                return self._reply(h, 404, {"error": "Record not found"})
            if found and status is not None and method in ("GET", "PUT", "DELETE"):
                if method == "GET":
                    source = {"text": status["content"], "spoiler_text": status["spoiler_text"]}
                    shown = {"id": status["id"], **source}
                    return self._reply(h, 200, shown if found.group(2) else self._shown(status))
                if found.group(2) is None and method == "PUT":
                    return self._edit_status(h, headers, raw, status)
                if found.group(2) is None and method == "DELETE":
                    status["deleted"] = True
                    return self._reply(h, 200, {**self._shown(status), "text": status["content"]})
            return self._reply(h, 404, {"error": "Record not found"})

    def _instance(self, h: BaseHTTPRequestHandler, served: bool) -> None:
        if not served:
            return self._reply(h, 404, {"error": "Not found"})
        self._reply(
            h,
            200,
            {
                "uri": "fake.example",
                "configuration": {
                    "statuses": {
                        "max_characters": self.max_characters,
                        "characters_reserved_per_url": self.url_length,
                    },
                    "media_attachments": {"image_size_limit": 16777216},
                },
            },
        )

    def _post_status(self, h: BaseHTTPRequestHandler, headers: dict[str, str], raw: bytes) -> None:
        key = headers.get("idempotency-key")
        if not key:  # siar must always send one
            return self._reply(h, 400, {"error": "fake: Idempotency-Key header missing"})
        if not headers.get("content-type", "").startswith("application/json"):
            return self._reply(h, 400, {"error": "fake: expected a JSON body"})
        body = json.loads(raw)
        fault = self.faults.popleft() if self.faults else None
        if fault and not fault.after_create:
            return self._reply(h, fault.status, fault.body, fault.headers)
        if key in self.idempotency:
            return self._reply(h, 200, self.idempotency[key])
        text, spoiler = str(body.get("status", "")), str(body.get("spoiler_text", ""))
        used = mastodon_length(text, self.url_length) + len(regex.findall(r"\X", spoiler))
        if used > self.max_characters:
            return self._reply(
                h,
                422,
                {"error": f"Validation failed: Text character limit of {self.max_characters} exceeded"},
            )
        if body.get("visibility", "public") not in ("public", "unlisted", "private", "direct"):
            return self._reply(h, 422, {"error": "Validation failed: Visibility is invalid"})
        for media_id in body.get("media_ids", []):
            media = self.media.get(str(media_id))
            if media is None or not media["url"]:
                return self._reply(h, 422, {"error": "Cannot attach files that have not finished processing"})
        status = {
            "id": str(100 + len(self.statuses)),
            "content": text,
            "language": body.get("language"),
            "visibility": body.get("visibility", "public"),
            "sensitive": bool(body.get("sensitive")),
            "spoiler_text": spoiler,
            "media_ids": body.get("media_ids", []),
            "url": f"https://fake.example/@siar/{100 + len(self.statuses)}",
        }
        self.statuses.append(status)
        self.idempotency[key] = status
        if fault:
            return self._reply(h, fault.status, fault.body, fault.headers)
        self._reply(h, 200, status)

    def _status(self, status_id: str) -> dict[str, Any] | None:
        return next((s for s in self.statuses if s["id"] == status_id and not s.get("deleted")), None)

    def _shown(self, status: dict[str, Any]) -> dict[str, Any]:
        shown = {k: v for k, v in status.items() if k not in ("media_ids", "deleted")}
        shown["media_attachments"] = [{"id": m, "type": "image"} for m in status["media_ids"]]
        return shown

    def _edit_status(
        self, h: BaseHTTPRequestHandler, headers: dict[str, str], raw: bytes, status: dict[str, Any]
    ) -> None:
        if not headers.get("content-type", "").startswith("application/json"):
            return self._reply(h, 400, {"error": "fake: expected a JSON body"})
        body = json.loads(raw)
        fault = self.faults.popleft() if self.faults else None
        if fault and not fault.after_create:
            return self._reply(h, fault.status, fault.body, fault.headers)
        text, spoiler = str(body.get("status", "")), str(body.get("spoiler_text", ""))
        used = mastodon_length(text, self.url_length) + len(regex.findall(r"\X", spoiler))
        if used > self.max_characters:
            return self._reply(
                h,
                422,
                {"error": f"Validation failed: Text character limit of {self.max_characters} exceeded"},
            )
        media_ids = [str(m) for m in body.get("media_ids", [])]
        for media_id in media_ids:
            if media_id not in self.media and media_id not in status["media_ids"]:
                return self._reply(h, 422, {"error": "Validation failed: media not found"})
        status.update(content=text, spoiler_text=spoiler, media_ids=media_ids)
        if "language" in body:
            status["language"] = body["language"]
        status["edits"] = status.get("edits", 0) + 1
        status["edited_at"] = "2026-11-29T09:00:00.000Z"
        self._reply(h, 200, self._shown(status))

    def _upload(self, h: BaseHTTPRequestHandler, headers: dict[str, str], raw: bytes) -> None:
        prefix = f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(prefix + raw)
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = part.get_payload(decode=True)
        if "file" not in fields:
            return self._reply(h, 422, {"error": "Validation failed: File can't be blank"})
        media_id = str(500 + len(self.media))
        self.media[media_id] = {
            "id": media_id,
            "size": len(fields["file"]),
            "description": fields.get("description", b"").decode(),
            "polls_left": self.media_processing_polls,
            "url": None,
        }
        if self.media_processing_polls == 0:
            self.media[media_id]["url"] = f"https://fake.example/media/{media_id}"
            return self._reply(h, 200, {k: v for k, v in self.media[media_id].items() if k != "polls_left"})
        self._reply(h, 202, {"id": media_id, "url": None})

    def _media(self, h: BaseHTTPRequestHandler, media_id: str) -> None:
        media = self.media.get(media_id)
        if media is None:
            return self._reply(h, 404, {"error": "Record not found"})
        if media["polls_left"] > 0:
            media["polls_left"] -= 1
            return self._reply(h, 206, {"id": media_id, "url": None})
        media["url"] = f"https://fake.example/media/{media_id}"
        self._reply(h, 200, {"id": media_id, "url": media["url"]})
