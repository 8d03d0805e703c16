"""The dispatcher's decision table: every kind of send outcome -> the row's next state (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.channel import AlreadyDone, Permanent, RetryLater, Unauthorized, Uncertain
from bot.delivery import Attempt, Policy, transition
from bot.outbox import INTERRUPTED
from bot.types import Receipt

NOW = datetime(2020, 10, 9, 7, 0, tzinfo=UTC)
PLAIN = Policy(resumable=False, max_attempts=3, send_timeout=60, retry_base=30, retry_max=3600)
RESUMABLE = Policy(resumable=True, max_attempts=3, send_timeout=60, resume_window=3600)


def step(attempt: Attempt, attempts: int = 1, policy: Policy = PLAIN):  # type: ignore[no-untyped-def]
    return transition(
        attempt, item_id=7, attempts=attempts, url="https://e.example/1", policy=policy, now=NOW
    )


@pytest.mark.parametrize(
    ("attempt", "attempts", "policy", "status", "decision", "retry_in", "refund", "alerts"),
    [
        (Attempt("sent", receipt=Receipt("r1", "https://x/1")), 1, PLAIN, "sent", "sent", None, False, False),
        (Attempt("already", "duplicate"), 1, PLAIN, "sent", "already_sent", None, False, False),
        # the platform's own wait is honoured exactly; otherwise backoff from retry_base
        (Attempt("retry", "busy", after=120), 1, PLAIN, "pending", "retry", 120, False, False),
        (Attempt("retry", "busy"), 1, PLAIN, "pending", "retry", 30, False, False),
        (Attempt("retry", "busy"), 2, PLAIN, "pending", "retry", 60, False, False),
        # the last attempt: failed, alerted
        (Attempt("retry", "busy"), 3, PLAIN, "failed", "failed", None, False, True),
        # a planned wait (daily cap, broadcast progress) never uses up attempts
        (Attempt("retry", "cap", after=600, counts=False), 3, PLAIN, "pending", "deferred", 600, True, False),
        (Attempt("permanent", "chat gone"), 1, PLAIN, "failed", "failed", None, False, True),
        (Attempt("uncertain", "lost answer"), 1, PLAIN, "uncertain", "uncertain", None, False, True),
        (
            Attempt("error", "unexpected error: KeyError()"),
            1,
            PLAIN,
            "uncertain",
            "uncertain",
            None,
            False,
            True,
        ),
        (Attempt("render_error", "bad template"), 1, PLAIN, "failed", "failed", None, False, True),
        # no answer within send_timeout: uncertain, or resumed with backoff on a resumable channel
        (Attempt("timeout"), 1, PLAIN, "uncertain", "uncertain", None, False, True),
        (Attempt("timeout"), 1, RESUMABLE, "pending", "retry", 30, False, False),
        (Attempt("timeout"), 3, RESUMABLE, "failed", "failed", None, False, True),
        # a shutdown mid-send
        (Attempt("cancelled"), 1, PLAIN, "uncertain", "uncertain", None, False, False),
        (Attempt("cancelled"), 1, RESUMABLE, "pending", "retry", 0, False, False),
        (Attempt("window_expired"), 2, RESUMABLE, "uncertain", "uncertain", None, False, True),
    ],
)
def test_transition_table(
    attempt: Attempt,
    attempts: int,
    policy: Policy,
    status: str,
    decision: str,
    retry_in: float | None,
    refund: bool,
    alerts: bool,
) -> None:
    result = step(attempt, attempts, policy)
    finish = result.finish
    assert (finish.status, finish.decision, finish.refund_attempt) == (status, decision, refund)
    if retry_in is None:
        assert finish.retry_at is None
    else:
        assert finish.retry_at == NOW + timedelta(seconds=retry_in)
    assert (result.alert is not None) == alerts


def test_sent_keeps_the_receipt_and_cancelled_resumable_is_marked_interrupted() -> None:
    sent = step(Attempt("sent", receipt=Receipt("r1", "https://x/1", "note"))).finish
    assert (sent.remote_id, sent.remote_url, sent.detail) == ("r1", "https://x/1", "note")
    assert step(Attempt("cancelled"), policy=RESUMABLE).finish.detail == INTERRUPTED


def test_uncertain_alerts_say_how_to_resend() -> None:
    assert "siar resend 7" in (step(Attempt("uncertain", "lost")).alert or "")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RetryLater("x", 5), "retry"),
        (Permanent("x"), "permanent"),
        (Unauthorized("x"), "permanent"),
        (AlreadyDone("x"), "already"),
        (Uncertain("x"), "uncertain"),
        (TimeoutError(), "error"),
        (KeyError("k"), "error"),
    ],
)
def test_attempt_of_an_error(error: BaseException, kind: str) -> None:
    attempt = Attempt.of(error)
    assert attempt.kind == kind
    assert attempt.auth == isinstance(error, Unauthorized)
    if isinstance(error, RetryLater):
        assert (attempt.after, attempt.counts) == (5, True)


def test_an_absurd_retry_after_is_capped_not_an_overflow() -> None:
    """A 429 with retry_after = 10**12 once raised OverflowError and left the row `sending`."""
    result = step(Attempt("retry", "flood", after=10**12))
    assert result.finish.retry_at == NOW + timedelta(days=1)
