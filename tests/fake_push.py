"""A local Web Push service (RFC 8030 + RFC 8291 + RFC 8292) on 127.0.0.1, as strict as the real ones.

It plays both sides a real push service joins: `new_subscription()` acts as the browser
(an ECDH P-256 key pair and a 16-byte auth secret per subscription, bound to the
applicationServerKey it was made with), and the HTTPS endpoint acts as the service:

- VAPID: `Authorization: vapid t=JWT,k=KEY`. KEY must be the subscription's
  applicationServerKey; the JWT must be ES256 signed by KEY with `aud` = this service's
  origin, `exp` in the future and at most 24 h ahead, `sub` a mailto: or https: URL.
  Anything else answers 401/403, like FCM and Mozilla autopush.
- `TTL` is required (400 without it); `Urgency` and `Topic` are checked when present;
  `Content-Encoding: aes128gcm`; the body is at most 4096 bytes (413).
- The body is decrypted with the subscription's private key and auth secret (http_ece);
  a payload that does not decrypt answers 400.
- Per endpoint a test can script answers (`script(sub, (410, {}), (429, {"Retry-After": "1"}))`),
  hold one request open (`hold(sub)`) to stand for a crash mid-request, or accept the next push
  and then close the connection without answering (`drop(sub)`: it arrived; the sender cannot know).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.tls import self_signed


def b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Browser:
    """What a browser keeps for one subscription: the keys to decrypt what arrives."""

    id: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str


@dataclass
class Message:
    subscription: str  # Browser.id
    payload: dict[str, Any]
    headers: dict[str, str]
    claims: dict[str, Any]


@dataclass
class FakePushService:
    """Start with `async with FakePushService(tmp_path) as push:`."""

    folder: Path
    browsers: dict[str, Browser] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    requests: list[tuple[str, int]] = field(default_factory=list)  # (subscription, answer status)
    refused: list[str] = field(default_factory=list)  # why requests were refused
    scripts: dict[str, deque[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    holds: dict[str, asyncio.Event] = field(default_factory=dict)
    drops: set[str] = field(default_factory=set)
    arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert_file(self) -> Path:
        return self.folder / "fake-push-ca.pem"

    async def __aenter__(self) -> FakePushService:
        context = self._tls()
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{id}", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for event in self.holds.values():
            event.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _tls(self) -> ssl.SSLContext:
        context, _ = tls_files(self.folder)
        return context

    # --- the browser's side ------------------------------------------------------------------

    def new_subscription(self, application_server_key: str) -> dict[str, Any]:
        """A PushSubscription.toJSON() as a browser would post it."""
        sid = secrets.token_urlsafe(12)
        key = ec.generate_private_key(ec.SECP256R1())
        auth = secrets.token_bytes(16)
        self.browsers[sid] = Browser(sid, key, auth, application_server_key)
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": f"{self.origin}/push/{sid}",
            "expirationTime": None,
            "keys": {"p256dh": b64e(public), "auth": b64e(auth)},
        }

    @staticmethod
    def id_of(subscription: dict[str, Any]) -> str:
        return str(subscription["endpoint"]).rsplit("/", 1)[1]

    def script(self, subscription: dict[str, Any], *answers: tuple[int, dict[str, str]]) -> None:
        """The next answers for this subscription (after them: 201)."""
        self.scripts.setdefault(self.id_of(subscription), deque()).extend(answers)

    def hold(self, subscription: dict[str, Any]) -> asyncio.Event:
        """Keep the next push to it open (delivered, but not answered) until the event is set."""
        sid = self.id_of(subscription)
        self.arrived[sid] = asyncio.Event()
        self.holds[sid] = asyncio.Event()
        return self.holds[sid]

    def drop(self, subscription: dict[str, Any]) -> None:
        """Accept (deliver) the next push to it, then hang up without an answer."""
        self.drops.add(self.id_of(subscription))

    def delivered(self, subscription: dict[str, Any]) -> list[dict[str, Any]]:
        """The decrypted payloads that reached this subscription's browser."""
        sid = self.id_of(subscription)
        return [m.payload for m in self.messages if m.subscription == sid]

    # --- the service's side ------------------------------------------------------------------

    def _refuse(self, sid: str, status: int, why: str) -> web.Response:
        self.refused.append(f"{sid}: {why}")
        self.requests.append((sid, status))
        return web.json_response({"code": status, "errno": 109, "error": why}, status=status)

    async def _push(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["id"]
        browser = self.browsers.get(sid)
        if browser is None:
            return self._refuse(sid, 404, "no such subscription")
        claims_or_error = self._check_vapid(request.headers.get("Authorization", ""), browser)
        if isinstance(claims_or_error, tuple):
            return self._refuse(sid, *claims_or_error)
        claims = claims_or_error
        ttl = request.headers.get("TTL")
        if ttl is None or not ttl.isdigit():
            return self._refuse(sid, 400, "TTL header missing or not a number")
        urgency = request.headers.get("Urgency")
        if urgency is not None and urgency not in ("very-low", "low", "normal", "high"):
            return self._refuse(sid, 400, f"bad Urgency {urgency!r}")
        topic = request.headers.get("Topic")
        if topic is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", topic):
            return self._refuse(sid, 400, f"bad Topic {topic!r}")
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return self._refuse(sid, 415, "Content-Encoding must be aes128gcm")
        body = await request.content.read(4097)
        if len(body) > 4096:
            return self._refuse(sid, 413, "payload larger than 4096 bytes")
        scripted = self.scripts.get(sid)
        if scripted:
            status, headers = scripted.popleft()
            if status >= 300:
                self.requests.append((sid, status))
                return web.Response(status=status, headers=headers, text=f"scripted {status}")
        try:
            plain = http_ece.decrypt(
                body, private_key=browser.private_key, auth_secret=browser.auth, version="aes128gcm"
            )
            payload = json.loads(plain)
        except Exception as exc:
            return self._refuse(sid, 400, f"payload does not decrypt: {exc!r}")
        self.messages.append(Message(sid, payload, dict(request.headers), claims))
        if sid in self.drops:
            self.drops.discard(sid)
            self.requests.append((sid, 0))
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # not written: the connection is gone
        if sid in self.holds:
            self.arrived[sid].set()
            await self.holds.pop(sid).wait()
        self.requests.append((sid, 201))
        return web.Response(status=201, headers={"Location": f"{self.origin}/m/{len(self.messages)}"})

    def _check_vapid(self, header: str, browser: Browser) -> dict[str, Any] | tuple[int, str]:
        match = re.fullmatch(r"vapid t=([A-Za-z0-9_.-]+), ?k=([A-Za-z0-9_-]+)", header.strip())
        if not match:
            return 401, "Authorization must be 'vapid t=JWT,k=KEY'"
        token, key = match.groups()
        if key != browser.application_server_key.rstrip("="):
            return 403, "k is not the applicationServerKey this subscription was made with"
        try:
            head_b64, claims_b64, sig_b64 = token.split(".")
            head = json.loads(b64d(head_b64))
            claims: dict[str, Any] = json.loads(b64d(claims_b64))
            signature = b64d(sig_b64)
        except ValueError:
            return 401, "JWT is malformed"
        if head.get("alg") != "ES256" or len(signature) != 64:
            return 401, "JWT must be ES256 with a 64-byte signature"
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(key))
        r, s_ = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        der = encode_dss_signature(r, s_)
        try:
            public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return 403, "JWT signature does not verify with k"
        if claims.get("aud") != self.origin:
            return 403, f"aud {claims.get('aud')!r} is not {self.origin!r}"
        exp = claims.get("exp")
        now = time.time()
        if not isinstance(exp, int) or not now < exp <= now + 86400:
            return 403, "exp must lie within the next 24 hours"
        if not re.match(r"^(mailto:[^@\s]+@\S+|https://\S+)$", str(claims.get("sub", ""))):
            return 403, "sub must be a mailto: or https: URL"
        return claims


def tls_files(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost in `folder`: the server's TLS
    context and the CA file a client trusts."""
    return self_signed(
        folder, "fake-push-ca.pem", "fake-push-key.pem", "fake push service", localhost=True, ca=True
    )
