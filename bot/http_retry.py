"""What a failed HTTP request means for trying again: how long the server asked us to wait
(Retry-After, one parser for every channel), and whether the request may already have reached
the server (then a platform without idempotency keys may have acted on it: not resent blindly).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import httpx

from bot.backoff import MAX_RETRY_AFTER
from bot.net import BlockedAddress

_DELTA = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def retry_after_seconds(
    value: str | int | float | None, now: datetime | None = None, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds to wait, from a Retry-After header (delta-seconds or an HTTP date) or a number
    from a JSON body (Telegram's `parameters.retry_after`, Discord's `retry_after`).

    Clamped to [0, cap]: a date in the past or a negative number is 0, an overflowing number or
    a far-future date is `cap`. None when there is nothing usable (absent, empty, NaN, garbage,
    a boolean). Never raises.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _clamp(value, cap)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA.fullmatch(text):  # float() alone would also take "nan", "inf" and "1_000"
        return _clamp(text, cap)
    try:
        when = parsedate_to_datetime(text)
    except Exception:  # TypeError, ValueError, IndexError, OverflowError by Python version
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return _clamp((when - now).total_seconds(), cap)


def _clamp(value: int | float | str, cap: float) -> float | None:
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float: as far away as it gets
        return cap
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)


# --- did the request leave? ---------------------------------------------------------------

# Raised before a byte of the request was written: connecting, waiting for a pooled
# connection, the TLS or proxy handshake (httpcore reports TLS failures as ConnectError),
# a URL that cannot be sent, or a refused address.
_HTTPX_NOT_LEFT: tuple[type[BaseException], ...] = (
    BlockedAddress,
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
    httpx.InvalidURL,
)


def request_may_have_left(exc: BaseException) -> bool:
    """False only when `exc` (from httpx, or a library error caused by one, as
    python-telegram-bot's NetworkError is) was raised before any byte of the request was
    written, so the request certainly did not reach the server; True otherwise, including for
    errors this function does not know (read/write timeouts, RemoteProtocolError, ReadError,
    TooManyRedirects, a total timeout, ...).
    """
    for link in _causes(exc):
        if isinstance(link, _HTTPX_NOT_LEFT):
            return False
        if isinstance(link, httpx.HTTPError):
            return True  # the most specific httpx error decides
    return True


def aiohttp_request_may_have_left(exc: BaseException) -> bool:
    """As `request_may_have_left`, for aiohttp: False for ClientConnectorError (refused, DNS,
    TLS, proxy connect), ConnectionTimeoutError (pool or connect timeout), a refused CONNECT
    tunnel, a fingerprint mismatch and an invalid URL; True for everything else (disconnects,
    socket read timeouts, payload errors, redirects that went wrong, unknown errors)."""
    for link in _causes(exc):
        if isinstance(link, aiohttp.RedirectClientError | aiohttp.TooManyRedirects):
            return True  # an earlier hop of this request was sent
        if isinstance(
            link,
            BlockedAddress
            | aiohttp.ClientConnectorError
            | aiohttp.ConnectionTimeoutError
            | aiohttp.ClientHttpProxyError
            | aiohttp.ServerFingerprintMismatch
            | aiohttp.InvalidURL
            | aiohttp.NonHttpUrlClientError,
        ):
            return False
        if isinstance(link, aiohttp.ClientError):
            return True
    return True


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and its explicit causes (`raise … from …`), outermost first. Implicit contexts are
    left out: an error raised while handling an earlier refused connect may well have been sent."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain and len(chain) < 16:
        chain.append(link)
        link = link.__cause__
    return chain
