"""What a Graph API error means for a post: Meta's codes mapped to siar's few kinds.

Classified on `error.code` / `error_subcode` (and `is_transient`), never on the HTTP status,
which Meta does not document for most codes (see docs/platforms/meta.md).
"""

from __future__ import annotations

import re

from bot.backoff import MAX_RETRY_AFTER
from bot.channel import AlreadyDone, ChannelError, Permanent, RetryLater, Unauthorized
from channels.meta.graph import GraphFailure

RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 613})
BUC_CODES = frozenset(range(80001, 80015))  # business use-case limits (Pages, Instagram, …)
TOKEN_CODES = frozenset({190, 102})
PUBLISHING_LIMIT = 9  # Instagram's 2207042 (and, assumed, Threads' over-quota)
BLOCKED = 368
TRANSIENT_CODES = frozenset({1, 2, -1, -2})
# Meta could not download the card: 9004/2207052, a download timeout -2/2207003, media not found
# 24/2207006. Our server or public_url is at fault (or Meta's crawler): retried, with the URL.
MEDIA_FETCH_SUBCODES = frozenset({2207052, 2207003, 2207006})
MEDIA_FETCH_CODES = frozenset({9004})
NOT_READY = frozenset({(9007, 2207027), (24, 4279009), (24, 2207008)})

# How long to wait when Meta does not say (seconds).
RATE_LIMIT_WAIT = 15 * 60.0
BLOCK_WAIT = 6 * 3600.0  # 368: "temporarily blocked", usually for hours
PUBLISHING_LIMIT_WAIT = 3600.0

# The permissions each channel's calls need, named when Meta's message does not name one.
_PERMISSION = re.compile(r"(?:requires? (?:both |the )?)'?([a-z_]+(?:_[a-z]+)+)'?", re.IGNORECASE)


class TokenRefused(Unauthorized):
    """Code 190 (or 102): the token is invalid or expired; only the operator can fix it."""

    def __init__(self, reason: str, subcode: int | None = None) -> None:
        super().__init__(reason)
        self.subcode = subcode


TOKEN_SUBCODE_TEXT = {
    458: "the app was removed from the account",
    459: "the account is checkpointed (log in to facebook.com and follow the instructions)",
    460: "the password was changed (or Facebook reset the session)",
    463: "the token expired",
    464: "the user is not confirmed",
    467: "the user logged out",
    492: "the session is invalid (a Page role may have been removed)",
}


def is_token_error(failure: GraphFailure) -> bool:
    return failure.code in TOKEN_CODES


def is_missing(failure: GraphFailure) -> bool:
    """Code 100 subcode 33: the object does not exist (or cannot be seen)."""
    return failure.code == 100 and failure.subcode == 33


def is_rate_limit(failure: GraphFailure) -> bool:
    return failure.code in RATE_LIMIT_CODES or failure.code in BUC_CODES


def is_not_ready(failure: GraphFailure) -> bool:
    return (failure.code, failure.subcode) in NOT_READY


def is_permission_error(failure: GraphFailure) -> bool:
    """Codes 10 and 200–299, and Threads' 100 with subcode 10."""
    return failure.code == 10 or 200 <= failure.code <= 299 or (failure.code == 100 and failure.subcode == 10)


def missing_permissions(failure: GraphFailure) -> list[str]:
    """The permission names Meta's message mentions ('pages_manage_posts', …)."""
    text = f"{failure.message} {failure.user_msg}"
    found = re.findall(r"\b((?:pages|instagram|threads|business|publish|ads)_[a-z_]+)\b", text)
    if not found:
        found = [m for m in _PERMISSION.findall(text) if "_" in m]
    return list(dict.fromkeys(found))


def classify(
    failure: GraphFailure, platform: str, doing: str, *, needs: tuple[str, ...] = ()
) -> ChannelError:
    """The ChannelError a refused call means. `needs`: the permissions `doing` requires (named
    when Meta's message names none)."""
    what = f"{platform} refused {doing}: {failure.describe()}"
    if is_token_error(failure):
        why = TOKEN_SUBCODE_TEXT.get(failure.subcode or 0, "the token is invalid or expired")
        return TokenRefused(
            f"{platform}: access token refused ({why}): {failure.describe()}", failure.subcode
        )
    if is_permission_error(failure):
        named = missing_permissions(failure) or list(needs)
        missing = f"missing permission {', '.join(named)}" if named else "missing permission"
        return Permanent(f"{what} — {missing}: grant it to the app and make a new token")
    if is_rate_limit(failure):
        after = failure.regain_seconds or RATE_LIMIT_WAIT
        return RetryLater(
            f"{platform} rate limit while {doing}: {failure.describe()}", after=_cap(after), attempt=False
        )
    if failure.code == PUBLISHING_LIMIT:
        return RetryLater(
            f"{platform} publishing limit reached while {doing}: {failure.describe()}",
            after=PUBLISHING_LIMIT_WAIT,
            attempt=False,
        )
    if failure.code == BLOCKED:
        return RetryLater(
            f"{platform} temporarily blocked the account ({doing}): {failure.describe()}",
            after=_cap(BLOCK_WAIT),
            attempt=False,
        )
    if failure.code in MEDIA_FETCH_CODES or failure.subcode in MEDIA_FETCH_SUBCODES:
        return RetryLater(
            f"{platform} could not fetch the image ({doing}): {failure.describe()}; the card must be "
            "reachable from the internet at [http] public_url"
        )
    if failure.code == 506:
        return AlreadyDone(f"{platform} says this is a duplicate post: {failure.describe()}")
    if failure.code in TRANSIENT_CODES or failure.transient or failure.code == 0:
        return RetryLater(what)
    return Permanent(what)


def _cap(seconds: float) -> float:
    return min(max(1.0, seconds), MAX_RETRY_AFTER)
