"""What the Facebook, Instagram and Threads channels share: the Graph client, error handling,
the token watch, holds after rate limits and blocks, and publishing without an idempotency key.

Token: read with `GET /debug_token` at start and every `token_check` (a day); an invalid token
fails `start` (the dispatcher alerts once and the posts wait); one refused while sending (190)
is alerted once and the channel's posts wait, re-checking every few minutes, until the operator
gives it a new token (`siar reload`). The admins are told `token_warning` (7 days) before it
expires, with how to renew it.

Publishing (`/feed`, `media_publish`, `threads_publish`) has no idempotency key: when its answer
is lost, the channel looks the post up (the container's state, the account's recent posts)
before anything else, and reports the post `uncertain` when it cannot tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NoReturn, TypeVar

import httpx

from bot.channel import (
    AlreadyDone,
    ChannelContext,
    Permanent,
    RetryLater,
    Unauthorized,
    Uncertain,
)
from bot.http_retry import request_may_have_left
from bot.kit import BaseChannel
from bot.types import Published, Receipt
from channels.meta.errors import (
    BLOCKED,
    TokenRefused,
    classify,
    is_missing,
    is_rate_limit,
    is_token_error,
)
from channels.meta.graph import GraphClient, GraphFailure, clip
from channels.meta.settings import MetaSettings

log = logging.getLogger("siar.meta")
S = TypeVar("S", bound=MetaSettings)
T = TypeVar("T")

TOKEN_RECHECK = 600.0  # while the token is refused, posts wait and it is re-read this often


def graph_time(value: object) -> datetime | None:
    """A Graph timestamp ("2026-11-29T08:00:00+0000") as an aware datetime; None if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


class MetaChannel(BaseChannel[S]):
    """A channel on one of Meta's Graph hosts (not resumable: publishing has no idempotency key)."""

    PLATFORM: ClassVar[str] = "Meta"
    # The permissions the token must have (any one group of alternatives: see `scope_groups`).
    SCOPES: ClassVar[tuple[tuple[str, ...], ...]] = ()
    RENEW_HELP: ClassVar[str] = "make a new token (see docs/platforms/meta-channels.md)"
    DELETE_SCOPES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, settings: S, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self._http: httpx.AsyncClient | None = None
        self._graph: GraphClient | None = None
        self._token_problem: str | None = None
        self._token_recheck_at: datetime | None = None
        self._token_checked_at: datetime | None = None
        self._hold: tuple[datetime, str] | None = None
        self._alerted: set[str] = set()
        self._watch: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def graph(self) -> GraphClient:
        if self._graph is None:
            # One connection per request: a pooled connection the server has closed fails
            # after the request was written, which would look like a lost publishing answer.
            self._http = self.http_client(keepalive=False)
            s = self.settings
            self._graph = GraphClient(
                self._http,
                s.api_base_url,
                s.graph_version,
                s.access_token.get_secret_value(),
                clock=lambda: self.now().timestamp(),
            )
        return self._graph

    async def start(self) -> None:
        """Check the token: Unauthorized (saying how to renew it) when it is refused or lacks a
        permission; the dispatcher alerts once and retries the start while posts wait."""
        problem = await self.check_token(alert=False)
        if problem is not None:
            raise TokenRefused(f"{problem}: {self.RENEW_HELP}")
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_token(), name=f"{self.name}-token-watch")

    async def close(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        http, self._http, self._graph = self._http, None, None
        if http is not None:
            await http.aclose()

    async def _watch_token(self) -> None:
        while True:
            await asyncio.sleep(self.settings.token_check)
            try:
                await self.check_token()
            except Exception:  # the watch must never die; the next send checks again
                log.exception("channel %s: token check failed", self.name)

    # --- the token -----------------------------------------------------------------------------

    async def check_token(self, *, alert: bool = True) -> str | None:
        """Read the token's state (`GET /debug_token`): the problem (refused, missing permission)
        or None. Alerts the admins once per problem (unless `alert` is False: the caller
        reports it), and once `token_warning` before expiry."""
        self._token_checked_at = self.now()
        try:
            data = await self.read_token()
        except GraphFailure as failure:
            error = classify(failure, self.PLATFORM, "the token check")
            if isinstance(error, TokenRefused):
                return await self._token_refused(error.reason, alert=alert)
            log.warning("channel %s: cannot check the token (%s)", self.name, failure.describe())
            return self._token_problem
        except httpx.HTTPError as exc:
            log.warning("channel %s: cannot check the token (%s)", self.name, type(exc).__name__)
            return self._token_problem
        return await self._judge_token(data, alert=alert)

    async def read_token(self) -> dict[str, Any]:
        """`debug_token`'s `data` for this channel's token."""
        token = self.settings.access_token.get_secret_value()
        app = self.settings.app_token.get_secret_value()
        graph = self.graph
        answer: dict[str, Any] | None = None
        if app:
            s = self.settings
            try:
                answer = await GraphClient(graph.http, s.api_base_url, s.graph_version, app).get(
                    "debug_token", {"input_token": token}
                )
            except GraphFailure as failure:
                if not is_token_error(failure):
                    raise
                # The app token is wrong, not necessarily the channel's: say so, check with it.
                key = "app_token"
                if key not in self._alerted:
                    self._alerted.add(key)
                    await self.context.alert(
                        self.name,
                        f"app_token was refused by {self.PLATFORM} ({failure.describe()}); "
                        'it must be "APP_ID|APP_SECRET" of the app the token belongs to',
                    )
        if answer is None:
            answer = await graph.get("debug_token", {"input_token": token})
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    async def _judge_token(self, data: dict[str, Any], *, alert: bool = True) -> str | None:
        if data.get("is_valid") is False:
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            message = str(error.get("message", "")) if isinstance(error, dict) else ""
            return await self._token_refused(
                f"{self.PLATFORM}: the access token is not valid: {clip(message)}", alert=alert
            )
        scopes = data.get("scopes")
        if isinstance(scopes, list) and scopes:
            missing = self.missing_scopes({str(s) for s in scopes})
            if missing:
                return await self._token_refused(
                    f"{self.PLATFORM}: the access token lacks the permission {', '.join(missing)}; "
                    "grant it to the app and make a new token",
                    alert=alert,
                )
        self._token_problem = None
        expires = data.get("expires_at")
        if isinstance(expires, int) and not isinstance(expires, bool) and expires > 0:
            await self._expiry_warning(datetime.fromtimestamp(expires, UTC))
        return None

    def missing_scopes(self, granted: set[str]) -> list[str]:
        """The permissions of the first acceptable group the token lacks (none: [])."""
        best: list[str] | None = None
        for group in self.SCOPES:
            missing = [s for s in group if s not in granted]
            if best is None or len(missing) < len(best):
                best = missing
        return best or []

    async def _expiry_warning(self, expires: datetime) -> None:
        left = expires - self.now()
        if left.total_seconds() > self.settings.token_warning:
            return
        key = f"expiry:{int(expires.timestamp())}"
        if key in self._alerted:
            return
        self._alerted.add(key)
        when = expires.strftime("%Y-%m-%d %H:%M UTC")
        days = max(0, int(left.total_seconds() // 86400))
        await self.context.alert(
            self.name,
            f"the {self.PLATFORM} access token expires on {when} (in {days} days): {self.RENEW_HELP}",
        )

    async def _token_refused(self, reason: str, *, alert: bool = True) -> str:
        """Remember the refusal (posts wait), alert once per reason."""
        self._token_problem = reason
        self._token_recheck_at = self.now() + timedelta(seconds=TOKEN_RECHECK)
        key = f"token:{reason}"
        if alert and key not in self._alerted:
            self._alerted.add(key)
            await self.context.alert(
                self.name, f"{reason}; its posts wait until it is fixed: {self.RENEW_HELP}"
            )
        return reason

    # --- before every post -------------------------------------------------------------------

    async def ready(self) -> None:
        """Raise RetryLater while a hold (rate limit, block) or a refused token stops posting;
        read the token again once a day."""
        now = self.now()
        if self._hold is not None:
            until, reason = self._hold
            if now < until:
                raise RetryLater(reason, after=(until - now).total_seconds(), attempt=False)
            self._hold = None
        if self._token_problem is not None:
            if self._token_recheck_at is not None and now < self._token_recheck_at:
                raise self._token_wait(now)
            await self.check_token()
            if self._token_problem is not None:
                raise self._token_wait(self.now())
        elif (
            self._token_checked_at is None
            or (now - self._token_checked_at).total_seconds() >= self.settings.token_check
        ):
            if await self.check_token() is not None:
                raise self._token_wait(self.now())
        pause = self.graph.usage.pause()
        if pause > 0:
            latest = self.graph.usage.latest
            percent = f"{latest.percent:.0f}%" if latest else "high"
            raise RetryLater(
                f"{self.PLATFORM} API usage at {percent} of the hourly allowance: "
                "slowing down before the limit",
                after=pause,
                attempt=False,
            )

    def _token_wait(self, now: datetime) -> RetryLater:
        until = self._token_recheck_at or now + timedelta(seconds=TOKEN_RECHECK)
        return RetryLater(
            f"waiting for a new access token ({self._token_problem})",
            after=max(1.0, (until - now).total_seconds()),
            attempt=False,
        )

    # --- calls ---------------------------------------------------------------------------------

    async def call(
        self, doing: str, request: Callable[[], Awaitable[T]], *, needs: tuple[str, ...] = ()
    ) -> T:
        """A call that changes nothing visible (a read, a container): failures mapped; a
        network failure is retried later (doing it twice is harmless)."""
        try:
            return await request()
        except GraphFailure as failure:
            await self.refused(failure, doing, needs=needs)
        except httpx.HTTPError as exc:
            raise RetryLater(f"network error while {doing}: {type(exc).__name__}") from None

    async def refused(self, failure: GraphFailure, doing: str, *, needs: tuple[str, ...] = ()) -> NoReturn:
        """Raise the ChannelError for `failure`, after its side effects: a refused token makes
        the channel wait (alerted once), a rate limit or a block holds every post (a block is
        alerted once)."""
        error = classify(failure, self.PLATFORM, doing, needs=needs)
        if isinstance(error, TokenRefused):
            await self._token_refused(error.reason)
            raise self._token_wait(self.now()) from None
        if (
            isinstance(error, RetryLater)
            and error.after
            and (is_rate_limit(failure) or failure.code == BLOCKED)
        ):
            self._hold = (self.now() + timedelta(seconds=error.after), error.reason)
            if failure.code == BLOCKED:
                key = f"blocked:{self.now().date()}"
                if key not in self._alerted:
                    self._alerted.add(key)
                    await self.context.alert(
                        self.name, f"{error.reason}; posting stops for {error.after / 3600:.0f} h"
                    )
        raise error from None

    async def publish(
        self,
        doing: str,
        request: Callable[[], Awaitable[dict[str, Any]]],
        lookup: Callable[[], Awaitable[T | None]],
        *,
        needs: tuple[str, ...] = (),
    ) -> dict[str, Any] | T:
        """The answer of a publishing call; when its answer is lost (no answer, a 5xx, code 1/2)
        what `lookup` finds instead. Not found after a lost answer: Uncertain (never resent);
        not found after Meta's own temporary error: RetryLater."""
        try:
            return await request()
        except httpx.HTTPError as exc:
            if not request_may_have_left(exc):
                raise RetryLater(
                    f"cannot reach {self.PLATFORM} while {doing}: {type(exc).__name__}"
                ) from None
            why = f"no answer from {self.PLATFORM} after {doing} ({type(exc).__name__})"
            found = await self._look_up(lookup, why)
            if found is not None:
                return found
            raise Uncertain(
                f"{why}, and the post is not found; check the account before `siar resend`"
            ) from None
        except GraphFailure as failure:
            ambiguous = failure.code in (0, 1, 2) or failure.status >= 500
            if not ambiguous:
                await self.refused(failure, doing, needs=needs)
            why = f"{self.PLATFORM} answered {failure.describe()} to {doing}"
            found = await self._look_up(lookup, why)
            if found is not None:
                return found
            if failure.code == 0:  # not Meta's answer (a proxy's page): it may have gone through
                raise Uncertain(
                    f"{why}, and the post is not found; check the account before `siar resend`"
                ) from None
            await self.refused(failure, doing, needs=needs)

    async def _look_up(self, lookup: Callable[[], Awaitable[T | None]], why: str) -> T | None:
        log.warning("channel %s: %s; looking the post up", self.name, why)
        try:
            return await lookup()
        except (GraphFailure, httpx.HTTPError, Unauthorized) as exc:
            detail = exc.describe() if isinstance(exc, GraphFailure) else type(exc).__name__
            raise Uncertain(
                f"{why}, and looking the post up failed ({detail}); check the account before `siar resend`"
            ) from None
        except Permanent as exc:
            raise Uncertain(f"{why}, and looking the post up failed ({exc.reason})") from None

    # --- retractions -------------------------------------------------------------------------

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        """Remove the post (`DELETE /{id}`); AlreadyDone when Meta no longer has it. Safe to
        repeat, so a lost answer is simply retried."""
        await self.ready()
        remote = published.remote_id
        if not remote:
            raise Permanent(f"the {self.PLATFORM} post's id was not recorded; remove it by hand")
        try:
            await self.graph.delete(remote)
        except GraphFailure as failure:
            if is_missing(failure):
                raise AlreadyDone(f"the {self.PLATFORM} post {remote} is gone already") from None
            await self.refused(failure, "deleting the post", needs=self.DELETE_SCOPES)
        except httpx.HTTPError as exc:
            raise RetryLater(f"network error while deleting the post: {type(exc).__name__}") from None
        return Receipt(remote_id=remote, url=published.url, note="deleted")

    def since(self, moment: datetime, slack: float = 120.0) -> str:
        """A `since` parameter a little before `moment` (the clocks of Meta and ours differ)."""
        return str(max(0, int(moment.timestamp() - slack)))
