"""What a Bot API error means for siar, in one place.

The Bot API names most of its 400 errors only in the description text, so that text is read
here, against one table (`BAD_REQUESTS`), and nowhere else.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import httpx
from telegram.error import (
    BadRequest,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from bot.channel import Permanent, RetryLater, Unauthorized, Uncertain
from bot.http_retry import request_may_have_left
from bot.http_retry import retry_after_seconds as clamp_wait

# A 400's description (lower-cased) -> what it is about.
BAD_REQUESTS: tuple[tuple[str, str], ...] = (
    ("chat not found", "chat_gone"),
    ("can't parse entities", "markup"),
    ("message is not modified", "not_modified"),
    ("message to edit not found", "message_gone"),
    ("message to delete not found", "message_gone"),
    ("message can't be deleted", "cannot_delete"),
    ("there is no text in the message to edit", "no_text"),
    ("there is no caption in the message to edit", "no_caption"),
    ("not enough rights", "rights"),
    ("wrong file identifier", "photo"),
    ("failed to get http url content", "photo"),
    ("wrong type of the web page", "photo"),
    ("photo_invalid", "photo"),
    ("image_process_failed", "photo"),
    ("wrong remote file", "photo"),
    ("photo", "photo"),
    ("file", "photo"),
)


def bad_request_kind(exc: BaseException) -> str:
    """The kind of a BadRequest (see BAD_REQUESTS), or "other"."""
    text = str(exc).lower()
    for marker, kind in BAD_REQUESTS:
        if marker in text:
            return kind
    return "other"


def photo_refused(exc: BaseException) -> bool:
    """True when a sendPhoto BadRequest is about the photo (so a text post may still work)."""
    return isinstance(exc, BadRequest) and bad_request_kind(exc) == "photo"


def ptb_retry_after(exc: Any) -> float:
    """RetryAfter's wait in seconds (PTB 22 gives an int or a timedelta, depending on
    PTB_TIMEDELTA), capped like every wait."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return clamp_wait(seconds) or 0.0


def transport_error(exc: BaseException) -> BaseException | None:
    """The HTTP layer's error behind a PTB NetworkError, or None when there is none: PTB raises
    NetworkError without a cause (or caused by its own "Invalid server response" when the body
    was not JSON, a proxy's HTML error page, say) for an HTTP error status it has no class for."""
    cause = exc.__cause__
    if cause is None or isinstance(cause, TelegramError):
        return None
    seen: set[int] = set()
    link: BaseException | None = cause
    while link is not None and id(link) not in seen:  # the httpx error, if something wrapped it
        if isinstance(link, httpx.HTTPError):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return cause  # "Unknown error in HTTP implementation": no telling how far it got


def telegram_error(exc: BaseException, chat: str | int, *, retry_on_timeout: bool = False) -> Exception:
    """The siar error kind of a python-telegram-bot error.

    The Bot API has no idempotency key, so a request that may have reached Telegram must not be
    resent automatically: a second try could post the story twice. PTB turns every lost
    connection into NetworkError (TimedOut for timeouts); the httpx error it chains says which:

    - nothing was sent (connect errors, pool timeouts): RetryLater;
    - an HTTP answer from Telegram (5xx, or a status PTB has no class for; no transport error
      chained): RetryLater, Telegram answers errors before it posts;
    - anything else (a read timeout, the connection lost after the request went out, an unknown
      error in the HTTP layer): Uncertain, unless `retry_on_timeout` accepts duplicates.
    """
    text = str(exc)
    if isinstance(exc, RetryAfter):
        after = ptb_retry_after(exc)
        return RetryLater(f"Telegram flood control: retry after {after:g}s", after=after)
    if isinstance(exc, Forbidden):
        return Permanent(
            f"the bot may not post in {chat}: {text} (add it to the chat as an admin that can post messages)"
        )
    if isinstance(exc, InvalidToken):
        return Unauthorized("Telegram refused the bot token ([telegram] token)")
    if isinstance(exc, BadRequest):
        if bad_request_kind(exc) == "chat_gone":
            return Permanent(f"chat {chat} not found: check `chat` and that the bot is a member")
        return Permanent(f"Telegram refused the post: {text}")
    if isinstance(exc, NetworkError):  # TimedOut included
        transport = transport_error(exc)
        if transport is None:  # Telegram answered with an HTTP error (5xx): it did not post
            return RetryLater(f"Telegram unreachable or failing: {text}")
        name = type(transport).__name__
        if not request_may_have_left(transport):
            return RetryLater(f"Telegram unreachable ({name}); nothing was sent")
        if retry_on_timeout:
            return RetryLater(
                f"connection to Telegram lost after sending ({name}); retrying (retry_on_timeout)"
            )
        return Uncertain(
            f"connection to Telegram lost after the request was sent ({name}); the post may or may not be out"
        )
    if text == "Invalid server response" and isinstance(exc.__cause__, ValueError):
        # PTB reads the JSON of a 2xx answer only (errors are NetworkError): Telegram did the call
        return Uncertain(
            "Telegram answered but its answer could not be read (Invalid server response); "
            "the post is probably out: check the chat before `siar resend`"
        )
    return Permanent(f"unexpected Telegram error: {type(exc).__name__}: {text}")
