"""One small Graph API client for the Facebook, Instagram and Threads channels.

Each call is `GET`/`POST` on `{api_base_url}/{graph_version}/{path}` with the token in the
`Authorization` header (never in a URL a log could keep). An answer is the JSON object; a
refusal is a `GraphFailure` carrying Meta's `error` object; a request that never got an answer
is an `httpx.HTTPError`, which the caller judges with `bot.http_retry.request_may_have_left`
(publishing has no idempotency key). Every answer's usage headers (`X-App-Usage`,
`X-Business-Use-Case-Usage`, `X-Page-Usage`) are read into a `UsageMeter`, so a channel slows
down before Meta throttles it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

# The answer texts kept in reasons (Meta's messages can be long).
_DETAIL_MAX = 300


@dataclass
class GraphFailure(Exception):
    """A Graph API error answer (`{"error": {...}}`), or an answer that is not JSON at all
    (`code` 0: a proxy's error page)."""

    status: int
    code: int
    message: str
    subcode: int | None = None
    transient: bool = False
    user_title: str = ""
    user_msg: str = ""
    regain_seconds: float | None = None  # from the usage headers of this answer

    def __post_init__(self) -> None:
        super().__init__(self.describe())

    def describe(self) -> str:
        """`code 190/463: message (user message)`, shortened."""
        code = f"{self.code}/{self.subcode}" if self.subcode is not None else str(self.code)
        text = self.message
        if self.user_msg and self.user_msg not in text:
            text = f"{text} ({self.user_msg})"
        if self.code == 0:
            return clip(f"HTTP {self.status}: {text}")
        return clip(f"code {code}: {text}")


def clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


@dataclass
class Usage:
    """The highest usage percentage Meta reported and when access returns (if throttled)."""

    percent: float
    regain_seconds: float
    at: float  # the meter's clock at the reading (seconds)


class UsageMeter:
    """The latest usage reading of one token's calls (app, Page and business use-case limits)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.latest: Usage | None = None

    def read(self, headers: httpx.Headers) -> Usage | None:
        """Take the usage headers of one answer; None when it carries none."""
        found = usage_of(headers)
        if found is None:
            return None
        percent, regain = found
        self.latest = Usage(percent, regain, self.clock())
        return self.latest

    def pause(self) -> float:
        """Seconds to wait before the next post, by the latest reading (0: go)."""
        if self.latest is None:
            return 0.0
        now = self.clock()
        wanted = usage_pause(self.latest.percent, self.latest.regain_seconds)
        return max(0.0, wanted - (now - self.latest.at))


# Usage is a rolling hour: at these percentages a channel waits so that the window drains
# before Meta throttles it (calls made while throttled extend the block).
SLOW_AT, STOP_AT = 75.0, 90.0


def usage_pause(percent: float, regain_seconds: float) -> float:
    """How long to wait after a reading of `percent` (the highest of all usage figures)."""
    if percent >= 100.0:  # throttled: Meta says when access returns
        return regain_seconds or 600.0
    if percent >= STOP_AT:
        return regain_seconds or 300.0
    if percent >= SLOW_AT:
        return 60.0
    return 0.0


def usage_of(headers: httpx.Headers) -> tuple[float, float] | None:
    """(highest percentage, seconds until access is regained) from an answer's usage headers."""
    percents: list[float] = []
    regain = 0.0
    for name in ("x-app-usage", "x-page-usage", "x-ad-account-usage"):
        data = _json_header(headers.get(name))
        if isinstance(data, dict):
            percents.extend(_percentages(data))
    business = _json_header(headers.get("x-business-use-case-usage"))
    if isinstance(business, dict):
        for entries in business.values():
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict):
                    continue
                percents.extend(_percentages(entry))
                minutes = entry.get("estimated_time_to_regain_access")
                if isinstance(minutes, int | float) and not isinstance(minutes, bool):
                    regain = max(regain, float(minutes) * 60.0)  # Meta gives minutes
    if not percents and not regain:
        return None
    return max(percents, default=0.0), regain


def _percentages(data: dict[str, Any]) -> list[float]:
    keys = ("call_count", "total_time", "total_cputime", "acc_id_util_pct")
    return [
        float(data[k])
        for k in keys
        if isinstance(data.get(k), int | float) and not isinstance(data.get(k), bool)
    ]


def _json_header(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


class GraphClient:
    """Calls on one Graph host with one token."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        version: str,
        token: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.base = f"{base_url.rstrip('/')}/{version}"
        self.token = token
        self.usage = UsageMeter(clock)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self.http.get(
            f"{self.base}/{path.lstrip('/')}", params=params, headers=self._headers()
        )
        return self._answer(response)

    async def post(self, path: str, data: dict[str, str]) -> dict[str, Any]:
        response = await self.http.post(f"{self.base}/{path.lstrip('/')}", data=data, headers=self._headers())
        return self._answer(response)

    async def delete(self, path: str) -> dict[str, Any]:
        response = await self.http.delete(f"{self.base}/{path.lstrip('/')}", headers=self._headers())
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        reading = self.usage.read(response.headers)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 200 and isinstance(body, dict) and "error" not in body:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        regain = reading.regain_seconds if reading is not None and reading.regain_seconds else None
        if not isinstance(error, dict):
            return _raise(
                GraphFailure(response.status_code, 0, clip(response.text) or "no body", transient=True)
            )
        code, subcode = error.get("code"), error.get("error_subcode")
        failure = GraphFailure(
            response.status_code,
            code if isinstance(code, int) else 0,
            str(error.get("message", "")),
            subcode if isinstance(subcode, int) else None,
            bool(error.get("is_transient", False)),
            str(error.get("error_user_title", "") or ""),
            str(error.get("error_user_msg", "") or ""),
            regain,
        )
        return _raise(failure)


def _raise(failure: GraphFailure) -> dict[str, Any]:
    raise failure
