"""When to try again: pure functions, so they can be tested with a table and no clock."""

from __future__ import annotations

# The longest any wait a platform or server asks for is honoured (a day: the longest window any
# platform here uses, X's and Bluesky's daily limits). A longer or absurd value (10**12, a date
# in the year 9999) is a bug or hostile: it must not park a post for years, nor overflow a
# datetime downstream.
MAX_RETRY_AFTER = 86400.0


def poll_delay(failures: int, interval: float, max_backoff: float, retry_after: float | None = None) -> float:
    """Seconds until the next poll of a feed that has failed `failures` times in a row.

    0 failures: the feed's interval. Then the interval doubles per failure, capped at
    `max_backoff` (but never below the interval); a server's Retry-After wins when longer.
    """
    cap = max(max_backoff, interval)
    delay = interval if failures <= 0 else min(interval * 2.0 ** min(failures, 30), cap)
    if retry_after is not None and retry_after == retry_after:  # NaN is never equal to itself
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def retry_delay(attempts: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before retrying a post after its `attempts`-th failed attempt.

    `base`, `2*base`, `4*base`, … capped at `cap`; a platform's retry_after is honoured exactly
    when it is given (it is the platform's own word on when it will accept the post).
    """
    if retry_after is not None and retry_after == retry_after:  # NaN is never equal to itself
        return min(max(0.0, retry_after), MAX_RETRY_AFTER)
    return min(base * 2.0 ** max(0, min(attempts - 1, 30)), cap)
