"""What every route of the HTTP surface needs from a request: who sent it, its JSON, and a limit.

- `client_address`: the client's address, believing X-Forwarded-For only from trusted proxies.
- `read_json`: the body as JSON, size-capped, time-capped and depth-checked, or `RequestRefused`.
- `ClientLimiter`: token buckets per client address, bounded in memory.

None of this imports aiohttp at run time, so a channel module can use it while aiohttp is absent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot.config import Network
from bot.durations import parse_rate

if TYPE_CHECKING:
    from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_JSON_SPECIAL = re.compile(r'["\\\[\]{}]')


class RequestRefused(Exception):
    """A request refused with an HTTP status; the message is safe to show to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_address(value: str) -> IPAddress | None:
    """The IP in "1.2.3.4", "1.2.3.4:80", "::1" or "[::1]:80" (IPv4-mapped IPv6 as IPv4); else None."""
    value = value.strip()
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress, networks: Sequence[Network]) -> bool:
    """True when `address` lies in one of `networks`."""
    return any(address.version == net.version and address in net for net in networks)


def client_address(request: web.BaseRequest, trusted_proxies: Sequence[Network]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
    X-Forwarded-For hop that is not itself a trusted proxy.

    Hops left of that one are whatever the client wrote, so they are never believed. A hop
    that is not an address ends the walk: the last proxy that was vouched for is the client.
    """
    peer_name = request.transport.get_extra_info("peername") if request.transport else None
    peer_text = str(peer_name[0]) if isinstance(peer_name, tuple) else (request.remote or "")
    peer = parse_address(peer_text)
    if peer is None:
        return peer_text or "?"
    if not in_networks(peer, trusted_proxies):
        return str(peer)
    hops = [
        hop
        for value in request.headers.getall("X-Forwarded-For", [])
        for hop in value.split(",")
        if hop.strip()
    ]
    client = peer
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            break
        client = address
        if not in_networks(address, trusted_proxies):
            break
    return str(client)


def nested_deeper_than(text: str, max_depth: int) -> bool:
    """True when the JSON `text` nests arrays/objects more than `max_depth` levels.

    A linear scan of the brackets outside strings, so a hostile body cannot make json.loads
    recurse until RecursionError. Invalid JSON may be misjudged; json.loads refuses it anyway.
    """
    depth, in_string, skip_to = 0, False, -1
    for match in _JSON_SPECIAL.finditer(text):
        pos = match.start()
        if pos < skip_to:  # the character after a backslash inside a string
            continue
        char = match.group()
        if in_string:
            if char == "\\":
                skip_to = pos + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json(
    request: web.BaseRequest, *, max_bytes: int, max_depth: int = 32, timeout: float = 10.0
) -> Any:
    """The request body parsed as JSON; RequestRefused 415 (not application/json), 413 (more than
    `max_bytes`), 408 (body not complete within `timeout` s) or 400 (not JSON, or nested deeper
    than `max_depth`)."""
    if request.content_type != "application/json":
        raise RequestRefused(415, "expected application/json")
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestRefused(413, f"request larger than {max_bytes} bytes")
    body = bytearray()  # to the end (a chunked or slow body comes in pieces), one byte past the cap
    try:
        async with asyncio.timeout(timeout):
            while len(body) <= max_bytes:
                piece = await request.content.read(max_bytes + 1 - len(body))
                if not piece:
                    break
                body += piece
    except TimeoutError:
        raise RequestRefused(408, f"request body not received within {timeout:g} s") from None
    if len(body) > max_bytes:
        raise RequestRefused(413, f"request larger than {max_bytes} bytes")
    try:
        text = bytes(body).decode(json.detect_encoding(bytes(body)))
    except (UnicodeDecodeError, LookupError):
        raise RequestRefused(400, "not valid JSON") from None
    if nested_deeper_than(text, max_depth):
        raise RequestRefused(400, f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise RequestRefused(400, "not valid JSON") from None


class ClientLimiter:
    """Token buckets per client address, one per rate ("10/min", or ["5/h", "20/d"]: every one
    must have a token), pruned oldest-first so that it cannot grow without bound."""

    def __init__(self, rate: str | Sequence[str], max_clients: int = 10_000) -> None:
        self.rates = [parse_rate(r) for r in ([rate] if isinstance(rate, str) else rate)]
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, list[tuple[float, float]]] = OrderedDict()

    def allow(self, client: str, now: float | None = None) -> bool:
        """True (and one token taken from each bucket) when `client` may go ahead now."""
        now = time.monotonic() if now is None else now
        buckets = self._buckets.pop(client, None) or [(float(count), now) for count, _ in self.rates]
        tokens = [
            min(float(count), left + (now - last) * count / period)
            for (count, period), (left, last) in zip(self.rates, buckets, strict=True)
        ]
        allowed = all(t >= 1.0 for t in tokens)
        self._buckets[client] = [(t - 1.0 if allowed else t, now) for t in tokens]
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed
