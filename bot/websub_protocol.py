"""The pure parts of WebSub (W3C Recommendation, 2018) for a subscriber: discovery of the hub and
the topic's self URL, the signature of a content distribution request, the intent challenge,
and when a lease must be renewed. No I/O here; bot/websub.py does the talking.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urljoin, urlsplit

# §7.1.1: the recognized algorithm names. SHA-1 is kept because most hubs still sign with it
# (the secret is random and per subscription, and HMAC-SHA1 has no practical forgery).
ALGORITHMS = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
# §5.3: hub.challenge uses only these characters; §8.2: limit its length.
_CHALLENGE = re.compile(r"[+\-./0-9=A-Z_a-z]{1,200}")
HEAD_BYTES = 65_536  # a feed's own links stand before its first item; never scan further
_FIRST_ITEM = re.compile(rb"<(?:[\w.-]+:)?(?:item|entry)[\s>/]")
_LINK_ELEMENT = re.compile(rb"<(?:[\w.-]+:)?link\b([^<>]*)>", re.IGNORECASE)
_ATTRIBUTE = re.compile(rb"""([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_LINK_VALUE = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_PARAM = re.compile(r';\s*([\w*.-]+)\s*=\s*(?:"([^"]*)"|([^;,\s]*))')


@dataclass(frozen=True)
class Discovery:
    """What a topic advertises: its hubs (in the order given) and its self URL."""

    hubs: tuple[str, ...] = ()
    self_url: str = ""

    @property
    def hub(self) -> str:
        return self.hubs[0] if self.hubs else ""


def link_header_links(value: str, base: str) -> list[tuple[str, set[str]]]:
    """(absolute URL, rel values) for each link of an HTTP `Link` header (RFC 8288); several
    headers arrive joined by commas."""
    links = []
    for match in _LINK_VALUE.finditer(value):
        rels: set[str] = set()
        for param in _PARAM.finditer(match.group(2)):
            if param.group(1).lower() == "rel":
                rels |= {r.lower() for r in (param.group(2) or param.group(3) or "").split()}
        links.append((_absolute(base, match.group(1).strip()), rels))
    return links


def element_links(body: bytes, base: str) -> list[tuple[str, set[str]]]:
    """(absolute URL, rel values) of the feed-level `<link>` / `<atom:link>` elements with an
    href (RSS atom:link, Atom link; RFC 8288 Appendix B), never those of its items."""
    head = body[:HEAD_BYTES]
    first = _FIRST_ITEM.search(head)
    if first is not None:
        head = head[: first.start()]
    links = []
    for element in _LINK_ELEMENT.finditer(head):
        attributes = {
            m.group(1).lower().decode("ascii", "replace"): (m.group(2) or m.group(3) or b"")
            for m in _ATTRIBUTE.finditer(element.group(1))
        }
        href, rel = attributes.get("href"), attributes.get("rel")
        if href and rel:
            url = html.unescape(href.decode("utf-8", "replace")).strip()
            rels = {r.lower() for r in html.unescape(rel.decode("utf-8", "replace")).split()}
            links.append((_absolute(base, url), rels))
    return links


def discover(headers: Mapping[str, str], body: bytes | None, url: str) -> Discovery:
    """The hub and self links of a topic fetched from `url` (§4): the `Link` header first, the
    document's own link elements only when the header names no hub."""
    for links in (
        link_header_links(headers.get("link", ""), url),
        element_links(body, url) if body else [],
    ):
        hubs = tuple(dict.fromkeys(u for u, rels in links if "hub" in rels and _web(u)))
        if hubs:
            selves = [u for u, rels in links if "self" in rels and _web(u)]
            return Discovery(hubs, selves[0] if selves else "")
    return Discovery()


def _absolute(base: str, url: str) -> str:
    """`url` resolved against `base`; "" when either is malformed (never raises)."""
    try:
        return urljoin(base, url)
    except ValueError:
        return ""


def _web(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def signature_problem(secret: str, header: str | None, body: bytes) -> str | None:
    """Why a content distribution request's `X-Hub-Signature` (§7.1) does not prove that our
    hub sent `body`, or None when it does."""
    if not header:
        return "no X-Hub-Signature (the hub was given a secret, so it must sign)"
    method, _, digest = header.strip().partition("=")
    algorithm = ALGORITHMS.get(method.strip().lower())
    if algorithm is None:
        return f"unknown signature method {method[:20]!r}"
    expected = hmac.new(secret.encode(), body, algorithm).hexdigest()
    if not hmac.compare_digest(expected, digest.strip().lower()):
        return f"the {method.strip().lower()} signature does not match the body"
    return None


def sign(secret: str, body: bytes, method: str = "sha256") -> str:
    """An `X-Hub-Signature` value for `body` (what a hub sends; tests and benchmarks use it)."""
    return f"{method}=" + hmac.new(secret.encode(), body, ALGORITHMS[method]).hexdigest()


def valid_challenge(challenge: str) -> bool:
    return bool(_CHALLENGE.fullmatch(challenge))


def renew_at(expires_at: datetime, lease_seconds: float) -> datetime:
    """When to ask the hub again so the lease never lapses: a tenth of the lease before it ends
    (at least a minute, at most half of it)."""
    margin = min(lease_seconds / 2, max(lease_seconds / 10, 60.0))
    return expires_at - timedelta(seconds=margin)
