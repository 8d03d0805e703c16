"""A browser's push subscription: checking the JSON it posts, and which stories it wants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bot.types import Story
from channels.webpush.config import Topic
from channels.webpush.keys import b64url_decode


class InvalidRequest(ValueError):
    """A request the server refuses; the message is safe to show to the browser."""


@dataclass(frozen=True)
class Subscription:
    endpoint: str
    p256dh: str
    auth: str
    topics: tuple[str, ...] = ()


def parse_subscription(data: Any, topics: Sequence[str], push_hosts: Sequence[str]) -> Subscription:
    """A checked subscription from the JSON a browser posts; InvalidRequest saying what is wrong.

    Accepts `{"subscription": PushSubscription.toJSON(), "topics": [...]}` or the bare
    PushSubscription JSON. The endpoint must be https on a known push service (the server will
    POST there, so anything else would let strangers aim it at arbitrary hosts).
    """
    if not isinstance(data, dict):
        raise InvalidRequest("expected a JSON object")
    sub = data.get("subscription", data)
    chosen = data.get("topics", [])
    if not isinstance(sub, dict):
        raise InvalidRequest("subscription: expected an object")
    endpoint = _checked_endpoint(sub.get("endpoint"), push_hosts)
    expiration = sub.get("expirationTime")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, int | float)):
        raise InvalidRequest("subscription.expirationTime: expected null or a number")
    keys = sub.get("keys")
    if not isinstance(keys, dict):
        raise InvalidRequest("subscription.keys: expected an object with p256dh and auth")
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if not isinstance(p256dh, str) or len(p256dh) > 100 or not _valid_p256dh(p256dh):
        raise InvalidRequest("subscription.keys.p256dh: expected a base64url P-256 public key (65 bytes)")
    if not isinstance(auth, str) or len(auth) > 40 or not _valid_auth(auth):
        raise InvalidRequest("subscription.keys.auth: expected a base64url secret of 16 bytes")
    if not isinstance(chosen, list) or len(chosen) > 50 or not all(isinstance(t, str) for t in chosen):
        raise InvalidRequest("topics: expected a list of topic ids")
    unknown = [t for t in chosen if t not in topics]
    if unknown:
        raise InvalidRequest(f"topics: unknown topic {unknown[0][:40]!r}")
    return Subscription(endpoint, p256dh.rstrip("="), auth.rstrip("="), tuple(dict.fromkeys(chosen)))


def _checked_endpoint(endpoint: Any, push_hosts: Sequence[str]) -> str:
    """The endpoint, when it is an https URL on a known push service; InvalidRequest otherwise."""
    if not isinstance(endpoint, str) or not 12 <= len(endpoint) <= 1024:
        raise InvalidRequest("subscription.endpoint: expected a URL of at most 1024 characters")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidRequest("subscription.endpoint: not a valid URL") from exc
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise InvalidRequest("subscription.endpoint: must be an https:// URL")
    if parts.fragment or any(c.isspace() for c in endpoint):
        raise InvalidRequest("subscription.endpoint: not a valid URL")
    host = parts.hostname.lower()
    if not any(host == h or host.endswith("." + h) for h in push_hosts):
        raise InvalidRequest("subscription.endpoint: not a known push service")
    return endpoint


def _valid_p256dh(value: str) -> bool:
    # cryptography (~10 MiB) is imported only where a key is checked: `import channels.webpush`
    # (every start of siar, to learn the channel types) must stay light.
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        raw = b64url_decode(value)
        if len(raw) != 65 or raw[0] != 4:
            return False
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # on the curve?
    except ValueError:
        return False
    return True


def _valid_auth(value: str) -> bool:
    try:
        return len(b64url_decode(value)) == 16
    except ValueError:
        return False


def wanted_by(story: Story, subscribed: Sequence[str], topics: Sequence[Topic]) -> bool:
    """Whether a subscription to `subscribed` topic ids (none = everything) wants `story`."""
    if not subscribed:
        return True
    return any(t.id in subscribed and t.matches(story) for t in topics)
