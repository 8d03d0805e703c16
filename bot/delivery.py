"""What a send attempt's outcome means for its outbox row: a pure decision, no I/O.

The dispatcher turns whatever happened (a receipt, one of the channel errors, a timeout, a
shutdown, a bug) into an `Attempt`, and `transition` maps it to the row's next state, the
decision-log entry, the retry time and the alert to raise. Table-driven tests pin every case.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from bot.backoff import retry_delay
from bot.channel import AlreadyDone, Permanent, RetryLater, Unauthorized, Uncertain
from bot.outbox import INTERRUPTED, Finish
from bot.types import Receipt

AttemptKind = Literal[
    "sent",
    "already",
    "retry",
    "permanent",
    "uncertain",
    "timeout",
    "cancelled",
    "error",
    "render_error",
    "window_expired",
    "moot",
]

# What a done row means, by outbox action (bot.outbox.ACTIONS); an edit or a deletion the
# platform answers "already so" is done all the same.
DONE = {"post": "sent", "digest": "sent", "edit": "edited", "delete": "deleted"}


@dataclass(frozen=True)
class Attempt:
    """What happened to one send."""

    kind: AttemptKind
    reason: str = ""
    after: float | None = None  # the platform's wait, for `retry`
    counts: bool = True  # `retry`: False for a planned wait (a daily cap, broadcast progress)
    receipt: Receipt | None = None
    auth: bool = False  # `permanent`: the platform refused our credentials

    @classmethod
    def of(cls, error: BaseException) -> Attempt:
        """The attempt a channel error (or any exception) describes."""
        if isinstance(error, RetryLater):
            return cls("retry", error.reason, after=error.after, counts=error.attempt)
        if isinstance(error, Permanent):
            return cls("permanent", error.reason, auth=isinstance(error, Unauthorized))
        if isinstance(error, AlreadyDone):
            return cls("already", error.reason)
        if isinstance(error, Uncertain):
            return cls("uncertain", error.reason)
        return cls("error", f"unexpected error: {error!r}")


@dataclass(frozen=True)
class Policy:
    """What the decision needs to know about the channel and the daemon."""

    resumable: bool
    max_attempts: int
    send_timeout: float
    resume_window: float | None = None
    retry_base: float = 30.0
    retry_max: float = 3600.0


@dataclass(frozen=True)
class Transition:
    finish: Finish
    alert: str | None = None  # a message for the admins (the dispatcher sends one per streak)
    result: str = ""  # for metrics: sent, already_sent, retry, deferred, failed, uncertain, cancelled


def check_hint(item_id: int) -> str:
    return f"check the platform and `siar resend {item_id}` if it is not there"


def transition(
    attempt: Attempt,
    *,
    item_id: int,
    attempts: int,
    url: str,
    policy: Policy,
    now: datetime,
    action: str = "post",
) -> Transition:
    """The next state of outbox row `item_id` (its `attempts`-th try, for story `url`; an
    `action` of bot.outbox.ACTIONS: a post, an edit, a deletion, a digest)."""
    kind = attempt.kind
    settled = _settled(attempt, action)
    if settled is not None:
        return settled
    if kind == "retry":
        return _retry(attempt, item_id, attempts, url, policy, now)
    if kind == "timeout":
        limit = f"no answer within send_timeout ({policy.send_timeout:.0f}s)"
        if policy.resumable:  # it resumes where it stopped, with backoff and max_attempts
            return _retry(Attempt("retry", f"{limit}; it resumes"), item_id, attempts, url, policy, now)
        return _uncertain(f"{limit}; it may or may not be out", item_id, url)
    if kind == "cancelled":
        if policy.resumable:  # sending again is harmless: pick it up after the restart
            return Transition(Finish("pending", "retry", INTERRUPTED, retry_at=now), result="retry")
        return Transition(
            Finish("uncertain", "uncertain", "shutdown while sending; it may or may not be out"),
            result="uncertain",
        )
    if kind == "window_expired":
        window = policy.resume_window or 0.0
        reason = (
            f"still not confirmed {window / 60:.0f} minutes after the first attempt, longer than "
            "the platform remembers the idempotency key; it may or may not be out"
        )
        return _uncertain(reason, item_id, url)
    if kind == "permanent":
        return Transition(
            Finish("failed", "failed", attempt.reason), alert=f"{url}: {attempt.reason}", result="failed"
        )
    if kind == "render_error":
        reason = f"cannot render: {attempt.reason}"
        return Transition(
            Finish("failed", "failed", reason),
            alert=f"cannot render {url}: {attempt.reason}",
            result="failed",
        )
    if kind == "uncertain":
        return _uncertain(attempt.reason, item_id, url)
    return Transition(
        Finish("uncertain", "uncertain", attempt.reason), alert=f"{url}: {attempt.reason}", result="uncertain"
    )


def _settled(attempt: Attempt, action: str) -> Transition | None:
    """Done (sent, edited, deleted; or the platform says it is so already), or nothing left
    to do (an edit of a post that never went out); None for the other kinds."""
    done = DONE.get(action, "sent")
    if attempt.kind == "sent":
        receipt = attempt.receipt or Receipt()
        return Transition(Finish("sent", done, receipt.note, receipt.remote_id, receipt.url), result="sent")
    if attempt.kind == "already":
        decision = "already_sent" if done == "sent" else done
        return Transition(Finish("sent", decision, attempt.reason), result="already_sent")
    if attempt.kind == "moot":
        return Transition(Finish("cancelled", "cancelled", attempt.reason), result="cancelled")
    return None


def _uncertain(reason: str, item_id: int, url: str) -> Transition:
    return Transition(
        Finish("uncertain", "uncertain", reason),
        alert=f"{url}: {reason}; {check_hint(item_id)}",
        result="uncertain",
    )


def _retry(
    attempt: Attempt, item_id: int, attempts: int, url: str, policy: Policy, now: datetime
) -> Transition:
    """Back to `pending` after the platform's wait or a capped backoff; `failed` after
    max_attempts (planned waits do not count)."""
    if attempt.counts and attempts >= policy.max_attempts:
        reason = f"gave up after {attempts} attempts: {attempt.reason}"
        return Transition(Finish("failed", "failed", reason), alert=f"{url}: {reason}", result="failed")
    delay = retry_delay(attempts, policy.retry_base, policy.retry_max, attempt.after)
    return Transition(
        Finish(
            "pending",
            "retry" if attempt.counts else "deferred",
            f"{attempt.reason} (retry in {delay:.0f}s)",
            retry_at=now + timedelta(seconds=delay),
            refund_attempt=not attempt.counts,
        ),
        result="retry" if attempt.counts else "deferred",
    )
