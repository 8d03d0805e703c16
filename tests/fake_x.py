"""A strict local stand-in for X's `POST /2/tweets` on 127.0.0.1, for tests.

It checks what X checks: an OAuth 1.0a Authorization header whose HMAC-SHA1 signature is right
for the URL requested (computed here independently of requests-oauthlib), a fresh nonce, a
timestamp within 5 minutes, a JSON body with `text`, the weighted length (403 when over 280, as
X answers) and duplicate content (403). Tests can script the next answers (429 with reset
headers, 5xx, 401, …) or make it hang to provoke a read timeout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

from twitter_text import parse_tweet

KEYS = {
    "consumer_key": "ck-test-4f1a",
    "consumer_secret": "cs-test-very-secret-9b2c",
    "access_token": "12345-at-test-77d0",
    "access_token_secret": "ats-test-very-secret-31e5",
}
OAUTH_REQUIRED = (
    "oauth_consumer_key",
    "oauth_nonce",
    "oauth_signature",
    "oauth_signature_method",
    "oauth_timestamp",
    "oauth_token",
    "oauth_version",
)
DUPLICATE = {
    "detail": "You are not allowed to create a Tweet with duplicate content.",
    "type": "about:blank",
    "title": "Forbidden",
    "status": 403,
}
TOO_LONG = {
    "detail": "Your Tweet text is too long.",
    "type": "about:blank",
    "title": "Forbidden",
    "status": 403,
}
UNAUTHORIZED = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}


@dataclass
class Answer:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    """One request as the fake received it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    oauth: dict[str, str]
    status: int = 0


def _enc(value: str) -> str:
    return quote(value, safe="~")


def oauth_signature(
    method: str, url: str, params: dict[str, str], consumer_secret: str, token_secret: str
) -> str:
    """RFC 5849 HMAC-SHA1 for a request without form parameters."""
    pairs = sorted((_enc(k), _enc(v)) for k, v in params.items() if k != "oauth_signature")
    normalized = "&".join(f"{k}={v}" for k, v in pairs)
    base = "&".join((method.upper(), _enc(url), _enc(normalized)))
    key = f"{_enc(consumer_secret)}&{_enc(token_secret)}".encode()
    return base64.b64encode(hmac.new(key, base.encode(), hashlib.sha1).digest()).decode()


def parse_oauth_header(value: str) -> dict[str, str] | None:
    if not value.startswith("OAuth "):
        return None
    params = {}
    for match in re.finditer(r'([A-Za-z_]+)="([^"]*)"', value[6:]):
        params[match.group(1)] = unquote(match.group(2))
    return params


NOT_YOURS = {
    "detail": "You are not allowed to delete this Tweet.",
    "title": "Forbidden",
    "type": "about:blank",
    "status": 403,
}


class FakeX:
    """`with FakeX() as x:` … `x.base` is the api_base_url; `x.posts` the accepted texts."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys = dict(keys or KEYS)
        self.requests: list[Seen] = []
        self.posts: list[str] = []  # accepted texts, in order
        self.deleted: set[str] = set()  # ids of deleted posts (DELETE /2/tweets/:id)
        self.others: set[str] = set()  # ids of other accounts' posts (403 when deleted)
        self.script: deque[Answer] = deque()  # answered (after the auth check) before normal handling
        self.hang: float = 0.0  # seconds to sleep before answering (read timeouts)
        self.problems: list[str] = []  # why requests were refused by the strict checks
        self._nonces: set[str] = set()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_DELETE(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with outer._lock:
                    status, body, headers = outer._handle(self, raw)
                if outer.hang:
                    time.sleep(outer.hang)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout tests)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _refuse(
        self, seen: Seen, status: int, body: dict[str, Any], why: str
    ) -> tuple[int, Any, dict[str, str]]:
        self.problems.append(why)
        seen.status = status
        return status, body, {}

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        oauth = parse_oauth_header(headers.get("authorization", "")) or {}
        seen = Seen(handler.command, handler.path, headers, body, oauth)
        self.requests.append(seen)
        deleting = handler.command == "DELETE" and re.fullmatch(r"/2/tweets/\d+", handler.path)
        if handler.path != "/2/tweets" and not deleting:
            return self._refuse(seen, 404, {"title": "Not Found Error"}, f"path {handler.path}")
        if handler.command not in ("POST", "DELETE") or (handler.command == "DELETE" and not deleting):
            return self._refuse(seen, 405, {"title": "Method Not Allowed"}, handler.command)
        # --- authentication, as X checks it ---
        missing = [k for k in OAUTH_REQUIRED if not oauth.get(k)]
        if missing:
            return self._refuse(seen, 401, UNAUTHORIZED, f"oauth parameters missing: {missing}")
        if (
            oauth["oauth_consumer_key"] != self.keys["consumer_key"]
            or oauth["oauth_token"] != self.keys["access_token"]
            or oauth["oauth_signature_method"] != "HMAC-SHA1"
            or oauth["oauth_version"] != "1.0"
        ):
            return self._refuse(seen, 401, UNAUTHORIZED, "wrong key, token or method")
        if abs(time.time() - int(oauth["oauth_timestamp"])) > 300:
            return self._refuse(seen, 401, UNAUTHORIZED, "stale timestamp")
        if oauth["oauth_nonce"] in self._nonces:
            return self._refuse(seen, 401, UNAUTHORIZED, "nonce reused")
        self._nonces.add(oauth["oauth_nonce"])
        expected = oauth_signature(
            handler.command,
            self.base + handler.path,
            oauth,
            self.keys["consumer_secret"],
            self.keys["access_token_secret"],
        )
        if not hmac.compare_digest(expected, oauth["oauth_signature"]):
            return self._refuse(seen, 401, UNAUTHORIZED, "bad signature")
        if self.script:
            answer = self.script.popleft()
            seen.status = answer.status
            return answer.status, answer.body, answer.headers
        if deleting:
            return self._delete(seen, handler.path.rsplit("/", 1)[-1])
        # --- the body ---
        if not headers.get("content-type", "").startswith("application/json"):
            return self._refuse(seen, 400, {"title": "Invalid Request"}, "not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or set(body) != {"text"}:
            return self._refuse(seen, 400, {"title": "Invalid Request"}, f"unexpected body {body!r}")
        text = body["text"]
        parsed = parse_tweet(unicodedata.normalize("NFC", text))
        if parsed.weightedLength > 280 or not parsed.valid:
            return self._refuse(seen, 403, TOO_LONG, f"too long ({parsed.weightedLength})")
        if text in self.posts:
            return self._refuse(seen, 403, DUPLICATE, "duplicate")
        self.posts.append(text)
        seen.status = 201
        tweet_id = str(1445880548472328192 + len(self.posts))
        return (
            201,
            {"data": {"id": tweet_id, "edit_history_tweet_ids": [tweet_id], "text": text}},
            {
                "x-rate-limit-limit": "100",
                "x-rate-limit-remaining": str(100 - len(self.posts)),
                "x-rate-limit-reset": str(int(time.time()) + 900),
            },
        )

    def _delete(self, seen: Seen, tweet_id: str) -> tuple[int, Any, dict[str, str]]:
        """X's DELETE /2/tweets/:id: {"data": {"deleted": true}}; another account's post is
        403; an unknown or deleted one 404 (resource-not-found)."""
        if tweet_id in self.others:
            return self._refuse(seen, 403, NOT_YOURS, "not our post")
        ours = {str(1445880548472328192 + i + 1) for i in range(len(self.posts))}
        if tweet_id not in ours or tweet_id in self.deleted:
            body = {
                "errors": [
                    {
                        "value": tweet_id,
                        "detail": f"Could not find tweet with id: [{tweet_id}].",
                        "title": "Not Found Error",
                        "resource_type": "tweet",
                        "type": "https://api.twitter.com/2/problems/resource-not-found",
                    }
                ],
                "title": "Not Found Error",
                "detail": f"Could not find tweet with id: [{tweet_id}].",
                "type": "https://api.twitter.com/2/problems/resource-not-found",
            }
            return self._refuse(seen, 404, body, "no such post")
        self.deleted.add(tweet_id)
        seen.status = 200
        return 200, {"data": {"deleted": True}}, {}

    def __enter__(self) -> FakeX:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
