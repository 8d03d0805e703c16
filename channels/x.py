"""`type = "x"`: posts to X (Twitter) with tweepy's v2 `Client.create_tweet`, OAuth 1.0a user context.

tweepy is synchronous (requests), so each post runs in a worker thread. tweepy hard-codes the host
`https://api.twitter.com`; the client's requests go through a Session that re-bases them on
`api_base_url` *before* requests-oauthlib signs them, so the OAuth signature covers the URL that is
really requested (what any OAuth 1.0a server checks), and tweepy's own error mapping stays intact.

X bills per post, so a channel may have a `daily_cap`: each post reserves one of the day's slots
(the local day of `[site] timezone`) in the store's daily quotas (`bot.budgets.DailyQuotas`)
before it is sent, with one atomic statement, so daemons sharing a PostgreSQL store never pass
the cap together. A post X certainly did not make (refused, rate limited, "already posted")
gives its slot back; one whose outcome is unknown keeps it. The posts the outbox says were sent
today count as well (a lower bound: a store upgraded mid-day). When the cap is reached the post
waits for the next day (`on_cap = "defer"`) or is dropped (`"skip"`), and the dispatcher records
either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, field_validator

from bot.backoff import MAX_RETRY_AFTER
from bot.budgets import DailyQuotas
from bot.channel import (
    AlreadyDone,
    ChannelContext,
    ChannelSettings,
    Permanent,
    RetryLater,
    Unauthorized,
    Uncertain,
)
from bot.counting import Budget, count_x
from bot.durations import Duration
from bot.kit import BaseChannel
from bot.registry import ChannelType, Plugin
from bot.render import defuse_mentions
from bot.types import Digest, Length, Payload, Post, Published, Receipt, Story

log = logging.getLogger("siar.x")
TWEEPY_HOST = "https://api.twitter.com"
LIMIT = 280
# Title, link, as many hashtags as fit; the short call to action only when everything else fits
# (see XChannel.render). X builds the link card from the page, so no lead and no media.
DEFAULT_TEMPLATE = """\
{% if breaking %}{{ breaking }} {% endif %}{{ title }}

{{ url }}
{{ hashtags }}
{% if cta_follow %}

{{ cta_follow }}
{% endif %}
"""
# How much of X's own error text goes into a recorded reason.
_DETAIL_MAX = 300


class Settings(ChannelSettings):
    type: str = "x"
    # OAuth 1.0a user context: the app's consumer key/secret and the posting account's access
    # token/secret ("Read and Write" permission). Empty ones disable the channel with a warning.
    consumer_key: SecretStr = SecretStr("")
    consumer_secret: SecretStr = SecretStr("")
    access_token: SecretStr = SecretStr("")
    access_token_secret: SecretStr = SecretStr("")
    api_base_url: str = TWEEPY_HOST
    daily_cap: int | None = Field(default=None, ge=1)  # posts per local day; None = no cap
    on_cap: Literal["defer", "skip"] = "defer"
    cta: str | None = None  # a short call to action for X; None = [cta] follow_text
    timeout: Duration = 30.0  # per request; a read timeout after sending makes the post uncertain
    rate_limit: str = "10/min"  # X allows 100 posts / 15 min per user on paid tiers

    secret_keys: ClassVar[tuple[str, ...]] = (
        "consumer_key",
        "consumer_secret",
        "access_token",
        "access_token_secret",
    )

    @field_validator("api_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError('must be an http(s):// URL like "https://api.twitter.com"')
        return value


@dataclass(frozen=True)
class XPayload(Payload):
    hashtags: tuple[str, ...] = ()


class XChannel(BaseChannel[Settings]):
    """One X account (create_tweet has no idempotency key: not resumable)."""

    TYPE = "x"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    CAN_DELETE = True  # DELETE /2/tweets/:id; X's API cannot edit a post

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        import tweepy  # type: ignore[import-untyped]  # noqa: F401  (missing SDK disables the channel)

        super().__init__(name, settings, context)
        if settings.cta is not None:  # X's own short call to action instead of [cta] follow_text
            context = dataclasses.replace(
                context, cta=context.cta.model_copy(update={"follow_text": settings.cta})
            )
            self.renderer = self.make_renderer(context)
        self.budget = Budget("weighted", LIMIT, count_x)
        self._client: Any = None
        # The daily cap's slots: in the store (shared by every daemon), or this process's count.
        self.quotas = DailyQuotas(context.database)
        self.quota_key = f"channel:{name}"

    async def start(self) -> None:
        self._client = self._make_client()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.session.close()

    def render(self, story: Story) -> Post:
        original = story
        # Feed text must not @mention accounts: X's automation rules forbid unsolicited
        # automated mentions, and the account named would be notified.
        story = dataclasses.replace(
            story, title=defuse_mentions(story.title), lead=defuse_mentions(story.lead)
        )
        # The call to action is the first thing to go, before any hashtag or title word.
        text, used, values = self.renderer.fit(story, self.budget, optional_cta=True)
        return self.post(
            original,
            text,
            Length(self.budget.unit, used, self.budget.limit),
            payload=XPayload(tuple(values["hashtag_list"])),
        )

    def digest_budget(self) -> Budget:
        return self.budget  # X's weighted count, 280

    def render_digest(self, digest: Digest) -> Post:
        """One post with the top stories that fit 280 (X's weighted counting, URLs 23)."""
        post = super().render_digest(digest)
        return dataclasses.replace(post, payload=XPayload(), digest=post.digest or digest)

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        if self._client is None:
            self._client = self._make_client()
        day = await self._reserve_daily_slot()
        try:
            response = await asyncio.to_thread(self._client.create_tweet, text=post.text, user_auth=True)
        except Exception as exc:
            error = x_error(exc, self.settings.timeout)
            if day is not None and isinstance(error, (RetryLater, Permanent, AlreadyDone)):
                await self._give_back(day)  # X made no post (an uncertain one keeps its slot)
            if error is exc:
                raise  # not a platform answer: the dispatcher records it as uncertain
            raise error from exc
        data = getattr(response, "data", None) or {}
        tweet_id = str(data.get("id", "")) if isinstance(data, Mapping) else ""
        if not tweet_id:
            return Receipt(note="X accepted the post but answered without its id")
        return Receipt(remote_id=tweet_id, url=f"https://x.com/i/web/status/{tweet_id}")

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        raise Permanent("X posts cannot be edited through the API; the correction is not shown on X")

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        """DELETE /2/tweets/:id; a post X no longer has (404) is AlreadyDone. Deleting twice is
        harmless, so a lost answer is retried."""
        import tweepy

        if not published.remote_id.isdigit():
            raise Permanent(f"{published.remote_id!r} is not an X post id this channel stored")
        if self._client is None:
            self._client = self._make_client()
        try:
            response = await asyncio.to_thread(self._client.delete_tweet, published.remote_id, user_auth=True)
        except tweepy.NotFound as exc:
            raise AlreadyDone(f"X has no post {published.remote_id} any more{_detail(exc)}") from exc
        except Exception as exc:
            error = x_error(exc, self.settings.timeout)
            if isinstance(error, Uncertain):
                raise RetryLater(f"{error.reason} (deleting again is harmless)") from exc
            if error is exc:
                raise
            raise error from exc
        data = getattr(response, "data", None) or {}
        if isinstance(data, Mapping) and data.get("deleted") is False:
            raise AlreadyDone(f"X did not delete post {published.remote_id} (it is gone already)")
        return Receipt(remote_id=published.remote_id, url=published.url, note="deleted")

    # --- the client ------------------------------------------------------------------------

    def _make_client(self) -> Any:
        import tweepy

        s = self.settings
        client = tweepy.Client(
            consumer_key=s.consumer_key.get_secret_value(),
            consumer_secret=s.consumer_secret.get_secret_value(),
            access_token=s.access_token.get_secret_value(),
            access_token_secret=s.access_token_secret.get_secret_value(),
            wait_on_rate_limit=False,  # never sleep in the thread: the outbox reschedules instead
        )
        client.session = rebased_session(s.api_base_url, s.timeout)
        client.user_agent = self.context.user_agent
        return client

    # --- the daily cap ---------------------------------------------------------------------

    async def _reserve_daily_slot(self) -> date | None:
        """Take one of today's `daily_cap` slots (None: no cap); the local day it counts in.
        RetryLater (defer) or Permanent (skip) when none is left."""
        cap = self.settings.daily_cap
        if cap is None:
            return None
        now = self.now()
        midnight, next_midnight = local_day(now, self.context.site.timezone)
        floor = await self._sent_since(midnight)
        taken = await self.quotas.take(self.quota_key, midnight.date(), cap, floor=floor)
        if taken.granted:
            return midnight.date()
        sent = taken.used
        if self.settings.on_cap == "skip":
            raise Permanent(f'daily cap of {cap} reached ({sent} posts today); skipped (on_cap = "skip")')
        wait = (next_midnight - now).total_seconds() + 1
        raise RetryLater(
            f"daily cap of {cap} reached ({sent} posts today); waiting for the next day",
            after=wait,
            attempt=False,
        )

    async def _give_back(self, day: date) -> None:
        """Return a slot whose post X did not make; a store failure only costs the slot."""
        try:
            await self.quotas.give_back(self.quota_key, day)
        except Exception:
            log.warning(
                "channel %s: could not give a daily cap slot back (lost for today)", self.name, exc_info=True
            )

    async def _sent_since(self, since: datetime) -> int:
        """Posts X confirmed with an id since `since` ("already posted" answers created nothing
        new), from the outbox (0 without a store: the quota's own count is all there is)."""
        if self.context.sent_since is not None:
            return await self.context.sent_since(self.name, since)
        return 0


def local_day(now: datetime, timezone: str) -> tuple[datetime, datetime]:
    """(this local midnight, the next one) in `timezone`, as aware datetimes."""
    zone = ZoneInfo(timezone)
    today = now.astimezone(zone).date()
    start = datetime.combine(today, clock_time(0), tzinfo=zone)
    end = datetime.combine(today + timedelta(days=1), clock_time(0), tzinfo=zone)
    return start, end


def rebased_session(base_url: str, timeout: float) -> Any:
    """A requests Session that sends tweepy's `https://api.twitter.com/...` to `base_url/...`."""
    import requests

    class RebasedSession(requests.Session):
        def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
            if isinstance(url, str) and url.startswith(TWEEPY_HOST):
                url = base_url + url[len(TWEEPY_HOST) :]
            # tweepy sets no timeout; a connect timeout is safe to retry, a read timeout is not.
            kwargs.setdefault("timeout", (min(10.0, timeout), timeout))
            try:
                return super().request(method, url, *args, **kwargs)
            finally:
                # "Connection: close" only asks: unless the server answers likewise, urllib3 keeps
                # the socket pooled and the next post would go out on a connection the server
                # has closed. Dropping the pool makes every post use a fresh connection.
                self.close()

    session = RebasedSession()
    # One connection per post: a pooled connection that the server has closed would fail *after*
    # the request was written, which is indistinguishable from a lost answer. Posts are rare.
    session.headers["Connection"] = "close"
    return session


# --- errors --------------------------------------------------------------------------------


def x_error(exc: BaseException, timeout: float, now: float | None = None) -> BaseException:
    """The ChannelError for an exception from tweepy/requests (the exception itself if unknown)."""
    import requests
    import tweepy

    if isinstance(exc, tweepy.TooManyRequests):
        after = rate_limit_wait(exc.response.headers, time.time() if now is None else now)
        return RetryLater(f"X rate limit (429 Too Many Requests){_detail(exc)}", after=after)
    if isinstance(exc, tweepy.Forbidden):
        if is_duplicate(exc):
            return AlreadyDone("X says this text is already posted (403 duplicate content)")
        return Permanent(f"X refused the post (403 Forbidden){_detail(exc)}")
    if isinstance(exc, tweepy.Unauthorized):
        return Unauthorized(
            "X rejected the credentials (401 Unauthorized): check consumer_key, "
            "consumer_secret, access_token and access_token_secret, and that the app "
            f"has Read and Write permission{_detail(exc)}"
        )
    if isinstance(exc, tweepy.TwitterServerError):
        return RetryLater(f"X server error ({_status(exc)}){_detail(exc)}")
    if isinstance(exc, tweepy.HTTPException):
        return Permanent(f"X refused the post ({_status(exc)}){_detail(exc)}")
    if isinstance(exc, requests.RequestException):
        return _transport_error(exc, timeout)
    return exc


def _transport_error(exc: BaseException, timeout: float) -> BaseException:
    """A requests error: retried when nothing left, else uncertain (X has no idempotency key)."""
    import requests

    if isinstance(exc, requests.ConnectTimeout):
        return RetryLater("cannot connect to X (connect timeout)")
    if isinstance(exc, requests.ReadTimeout):
        return Uncertain(
            f"X did not answer within {timeout:g}s after the post was sent; it may be "
            "on X: check the account before `siar resend`"
        )
    if isinstance(
        exc,
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ),
    ):
        return Permanent(f"api_base_url is not usable: {exc}")
    if isinstance(exc, requests.ConnectionError):
        if _before_sending(exc):
            return RetryLater(f"cannot connect to X: {_short(exc)}")
        return Uncertain(
            f"the connection to X broke after the post was sent ({_short(exc)}); "
            "check the account before `siar resend`"
        )
    return Uncertain(f"request to X failed: {_short(exc)}")


def _before_sending(exc: BaseException) -> bool:
    """True when a requests ConnectionError happened before any byte of the request left."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.ProxyError)):
        return True  # the TLS or proxy handshake precedes the request
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (NewConnectionError, ConnectTimeoutError, ConnectionRefusedError)):
            return True
        stack.extend([getattr(current, "reason", None), current.__cause__, current.__context__])
        stack.extend(a for a in current.args if isinstance(a, BaseException))
    return False


def is_duplicate(exc: Any) -> bool:
    """X's answer to a repeated text: v2 detail "...duplicate content." or v1.1 code 187."""
    if 187 in getattr(exc, "api_codes", []):
        return True
    texts = [str(m) for m in getattr(exc, "api_messages", [])]
    response = getattr(exc, "response", None)
    if response is not None:
        texts.append(str(getattr(response, "text", "")))
    return any("duplicate" in t.lower() for t in texts)


def rate_limit_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until X accepts posts again, from a 429's headers; None if they do not say.

    `x-rate-limit-*` is the 15-minute window; `x-user-limit-24hour-*` and `x-app-limit-24hour-*`
    the daily post limits. A window counts when its remaining is 0 (or not given); the latest
    reset wins, and so does a longer `retry-after`.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    waits: list[float] = []
    any_reset: list[float] = []
    for prefix in ("x-rate-limit", "x-user-limit-24hour", "x-app-limit-24hour"):
        reset = _number(lower.get(f"{prefix}-reset"))
        if reset is None:
            continue
        any_reset.append(reset - now)
        if lower.get(f"{prefix}-remaining", "0").strip() == "0":
            waits.append(reset - now)
    if not waits:
        waits = any_reset
    retry_after = lower.get("retry-after")
    if retry_after:
        seconds = _number(retry_after)
        if seconds is None:
            try:
                seconds = email.utils.parsedate_to_datetime(retry_after).timestamp() - now
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None:
            waits.append(seconds)
    if not waits:
        return None
    return min(max(1.0, max(waits) + 1.0), MAX_RETRY_AFTER)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _status(exc: Any) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", "?")
    reason = getattr(response, "reason", "") or ""
    return f"{code} {reason}".strip()


def _detail(exc: Any) -> str:
    messages = [str(m) for m in getattr(exc, "api_messages", []) if m]
    text = "; ".join(messages)
    return f": {_clip(text)}" if text else ""


def _short(exc: BaseException) -> str:
    return _clip(f"{type(exc).__name__}: {exc}")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> XChannel:
    assert isinstance(settings, Settings)
    return XChannel(name, settings, context)


PLUGIN = Plugin("x", (ChannelType("x", Settings, create),))
