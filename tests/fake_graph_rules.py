"""What Meta's Graph APIs refuse, and how they say it: the rules behind tests/fake_graph.py.

Pure functions and small records, no I/O. Each rule names its source in docs/platforms/meta.md;
where Meta does not document a code or a message, the constant says ASSUMED so a channel test
that depends on it can be found and revisited.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import regex
from PIL import Image, UnidentifiedImageError
from twitter_text import extract_urls

# --- the error object --------------------------------------------------------------------

# The Graph error `type` differs per host: Facebook Login calls answer OAuthException,
# Threads answers THApiException (seen in real answers), Instagram Login IGApiException (ASSUMED).
ERROR_TYPES = {"graph": "OAuthException", "instagram": "IGApiException", "threads": "THApiException"}
# Codes Meta documents as temporary ("wait and retry"); the error object then has is_transient.
TRANSIENT_CODES = {1, 2, 4, 17, 32, 341, 613, -1, -2}


class GraphError(Exception):
    """One Graph API error answer: HTTP status and the `error` object's fields."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        transient: bool | None = None,
        user_title: str | None = None,
        user_msg: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.subcode = status, code, message, subcode
        self.transient = code in TRANSIENT_CODES if transient is None else transient
        self.user_title, self.user_msg = user_title, user_msg
        self.headers = dict(headers or {})

    def body(self, host: str, trace: str) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": ERROR_TYPES[host], "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.transient:
            error["is_transient"] = True
        if self.user_title:
            error["error_user_title"] = self.user_title
        if self.user_msg:
            error["error_user_msg"] = self.user_msg
        error["fbtrace_id"] = trace
        return {"error": error}


def invalid_parameter(message: str, subcode: int | None = None, **kwargs: Any) -> GraphError:
    """Code 100, the catch-all for a missing or malformed parameter."""
    return GraphError(400, 100, message, subcode=subcode, **kwargs)


def no_such_object(object_id: str) -> GraphError:
    return invalid_parameter(
        f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot be loaded due "
        "to missing permissions, or does not support this operation.",
        subcode=33,
    )


# Instagram content-publishing errors, as Meta's Instagram error-code table lists them
# (HTTP 400 each). Keyed by subcode: (code, developer message, user title, user message).
IG_ERRORS: dict[int, tuple[int, str, str, str]] = {
    2207003: (-2, "Timeout", "Media download timed out", "It takes too long to download the media."),
    2207004: (
        36000,
        "The image size is too large.",
        "Image size too large",
        "The image is too large to download. It should be less than 8 MiB.",
    ),
    2207005: (
        36001,
        "The image format is not supported.",
        "Unsupported image format",
        "The image format is not supported.",
    ),
    2207009: (
        36003,
        "The submitted image with aspect ratio cannot be published.",
        "Aspect ratio not supported",
        "The submitted image's aspect ratio is not supported; it must be between 4:5 and 1.91:1.",
    ),
    2207010: (
        36004,
        "The caption is too long.",
        "Caption too long",
        "The caption is too long: at most 2,200 characters, 30 hashtags and 20 @ tags.",
    ),
    2207020: (
        -2,
        "The media you are trying to access has expired.",
        "Media expired",
        "The media you are trying to access has expired. Please try to upload again.",
    ),
    2207023: (100, "The media type is unknown.", "Unknown media type", "The media type is unknown."),
    2207027: (
        9007,
        "Media ID is not available",
        "Media not ready",
        "The media is not ready for publishing, please wait for a moment.",
    ),
    2207040: (
        100,
        "Cannot use more than 20 tags per media",
        "Too many tags",
        "Cannot use more than 20 tags per media.",
    ),
    2207042: (
        9,
        "Application request limit reached",
        "Maximum number of posts reached",
        "You reached maximum number of posts that is allowed to be published by Content Publishing API.",
    ),
    # Meta's table has 2207052 with code 9004; the message is the one real answers carry.
    2207052: (
        9004,
        "Only photo or video can be accepted as media type.",
        "Media download has failed.",
        "The media could not be fetched from this uri.",
    ),
}


def ig_error(subcode: int, detail: str = "") -> GraphError:
    """The documented Instagram publishing error with this subcode."""
    code, message, title, user = IG_ERRORS[subcode]
    return GraphError(
        400,
        code,
        message,
        subcode=subcode,
        user_title=title,
        user_msg=f"{user} {detail}".strip(),
        transient=code in (-1, -2),
    )


# ASSUMED (not documented): a second media_publish of an already published container. The
# fake answers "not available"; a channel must then read the container (PUBLISHED) and look
# the media up, which is what it has to do after a lost answer anyway.
IG_ALREADY_PUBLISHED = 2207027
# ASSUMED: Threads does not document its over-quota or not-ready publish errors. Not-ready uses
# the 24/4279009 "Media Not Found" seen in real answers; over-quota mirrors Instagram's code 9.
THREADS_NOT_READY = (24, 4279009, "Media Not Found")
THREADS_OVER_QUOTA = (
    9,
    None,
    "Application request limit reached: the profile has reached its "
    "limit of API-published posts in 24 hours.",
)
THREADS_LINK_LIMIT = "THREADS_API__LINK_LIMIT_EXCEEDED"


# --- tokens ------------------------------------------------------------------------------

# 190 subcodes Meta documents, with the messages real answers carry.
TOKEN_SUBCODES = {
    458: "Error validating access token: The user has not authorized application {app}.",
    459: "Error validating access token: You cannot access the app till you log in to www.facebook.com "
    "and follow the instructions given.",
    460: "Error validating access token: The session has been invalidated because the user changed "
    "their password or Facebook has changed the session for security reasons.",
    463: "Error validating access token: Session has expired on {expired}. The current time is {now}.",
    464: "Error validating access token: Sessions for the user are not allowed because the user is "
    "not a confirmed user.",
    467: "Error validating access token: The session is invalid because the user logged out.",
}


@dataclass
class Token:
    """One access token the fake knows. `expires_at` 0 means it never expires."""

    value: str
    host: str  # "graph" (Facebook Login), "instagram" (Instagram Login) or "threads"
    kind: str  # USER, PAGE or APP
    user_id: str
    scopes: set[str] = field(default_factory=set)
    profile_id: str = ""  # the Page a PAGE token acts as
    issued_at: float = 0.0
    expires_at: float = 0.0
    data_access_expires_at: float = 0.0
    revoked: int | None = None  # a 190 subcode (458, 459, 460, 464, 467) once invalidated

    def problem(self, now: float, app_id: str) -> GraphError | None:
        """The 190 error using this token gets at `now`, or None while it is valid."""
        if self.revoked is not None:
            return GraphError(
                400,
                190,
                TOKEN_SUBCODES[self.revoked].format(app=app_id),
                subcode=self.revoked,
                headers=INVALID_TOKEN_HEADER,
            )
        if self.expires_at and now >= self.expires_at:
            message = TOKEN_SUBCODES[463].format(
                expired=graph_time(self.expires_at, long=True), now=graph_time(now, long=True)
            )
            return GraphError(400, 190, message, subcode=463, headers=INVALID_TOKEN_HEADER)
        return None


INVALID_TOKEN_HEADER = {
    "WWW-Authenticate": 'OAuth "Facebook Platform" "invalid_token" "Invalid OAuth access token."'
}


def permission_error(host: str, scope: str) -> GraphError:
    """A missing permission. Threads answers 100/10 (seen in real answers); Facebook and
    Instagram answer code 10 (HTTP status ASSUMED 403). Page posting has its own code 200."""
    if host == "threads":
        return GraphError(
            400,
            100,
            f"This action requires the {scope} permission. You must submit for "
            "app review, or your user must be in the list of Threads testers.",
            subcode=10,
        )
    return GraphError(
        403,
        10,
        f"(#10) Application does not have permission for this action: it requires the '{scope}' permission.",
    )


@dataclass
class Call:
    """One authenticated request as the platform handlers see it."""

    method: str
    host: str
    path: list[str]
    params: dict[str, str]
    token: Token
    now: float

    def need(self, *scopes: str) -> None:
        """Raise the platform's permission error naming the first scope the token lacks."""
        for scope in scopes:
            if scope not in self.token.scopes:
                raise permission_error(self.host, scope)

    def fields(self, default: str, allowed: set[str], node: str) -> list[str]:
        """The `fields` asked for (or `default`); an unknown one is refused as Graph does."""
        names = [f.strip() for f in (self.params.get("fields") or default).split(",") if f.strip()]
        for name in names:
            if name not in allowed:
                raise invalid_parameter(
                    f"(#100) Tried accessing nonexisting field ({name}) on node type ({node})"
                )
        return names

    def window(self) -> tuple[float, float]:
        """The `since` and `until` Unix timestamps (inclusive) a listing is filtered by."""
        bounds = []
        for name, default in (("since", 0.0), ("until", float("inf"))):
            raw = self.params.get(name, "")
            if raw and not raw.isdigit():
                raise invalid_parameter(f"(#100) Param {name} must be a Unix timestamp, got {raw!r}")
            bounds.append(float(raw) if raw else default)
        return bounds[0], bounds[1]

    def limit(self) -> int:
        raw = self.params.get("limit", "25")
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            raise invalid_parameter(f"(#100) Param limit must be a number between 1 and 100, got {raw!r}")
        return int(raw)


def unknown_token() -> GraphError:
    return GraphError(
        400, 190, "Invalid OAuth access token - Cannot parse access token", headers=INVALID_TOKEN_HEADER
    )


def missing_token() -> GraphError:
    return GraphError(400, 104, "An access token is required to request this resource.")


def graph_time(stamp: float, *, long: bool = False) -> str:
    """Graph API timestamps: `2020-10-09T07:00:00+0000` (or the long form of 190 messages)."""
    moment = datetime.fromtimestamp(stamp, UTC)
    if long:
        return moment.strftime("%A, %d-%b-%y %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%dT%H:%M:%S+0000")


# --- text rules ----------------------------------------------------------------------------

_HASHTAG = regex.compile(r"(?<![\p{L}\p{N}_&#])#[\p{L}\p{M}\p{N}_]+")
_MENTION = regex.compile(r"(?<![\p{L}\p{N}_@.])@[A-Za-z0-9._]{1,30}")
_EMOJI = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}\u20e3]")


def ig_caption_problem(
    caption: str, max_chars: int, max_hashtags: int, max_mentions: int
) -> GraphError | None:
    """Instagram's caption rule (≤ 2,200 characters, ≤ 30 hashtags, ≤ 20 @ tags), or None."""
    if len(caption) > max_chars:
        return ig_error(2207010, f"({len(caption)} characters)")
    if len(_HASHTAG.findall(caption)) > max_hashtags:
        return ig_error(2207010, f"({len(_HASHTAG.findall(caption))} hashtags)")
    if len(_MENTION.findall(caption)) > max_mentions:
        return ig_error(2207040)
    return None


def threads_length(text: str) -> int:
    """Threads' count, independently of bot.counting: a user-perceived character is one, except
    that an emoji is counted as its UTF-8 bytes (Meta: "Emojis are counted as the number of
    UTF-8 bytes")."""
    total = 0
    for cluster in regex.findall(r"\X", text):
        total += len(cluster.encode("utf-8")) if _EMOJI.search(cluster) else 1
    return total


def threads_links(text: str, link_attachment: str = "") -> int:
    """Meta's link count: the unique URLs in the text, plus the attachment when it differs."""
    found = {url.rstrip("/") for url in extract_urls(text)}
    if link_attachment:
        found.add(link_attachment.rstrip("/"))
    return len(found)


def threads_topic_problem(tag: str) -> str | None:
    """Why a topic tag is refused: 1–50 characters, no '.' or '&'."""
    if not 1 <= len(tag) <= 50:
        return "The topic tag must be between 1 and 50 characters."
    if "." in tag or "&" in tag:
        return "The topic tag cannot contain periods (.) or ampersands (&)."
    return None


_WEB_URL = re.compile(r"^https?://[^\s/?#]+\.[^\s/?#]+(?:[/?#]\S*)?$", re.IGNORECASE)


def is_web_url(value: str) -> bool:
    """An absolute http(s) URL with a dotted host (what Graph accepts for `link`)."""
    return bool(_WEB_URL.match(value))


# --- image rules ---------------------------------------------------------------------------

MAX_IMAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow's name: JPEG, PNG, MPO, GIF, …
    width: int
    height: int
    size: int


def inspect_image(data: bytes) -> ImageInfo | None:
    """Format and dimensions of `data`, or None when it is not an image at all."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return ImageInfo(str(image.format), image.width, image.height, len(data))
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def ig_image_problem(info: ImageInfo | None) -> GraphError | None:
    """Instagram: JPEG only (no MPO/JPS), under 8 MiB, aspect ratio within 4:5 … 1.91:1."""
    if info is None or info.format != "JPEG":
        return ig_error(2207005, f"({info.format if info else 'not an image'})")
    if info.size > MAX_IMAGE_BYTES:
        return ig_error(2207004)
    ratio = info.width / info.height
    if not 0.8 <= ratio <= 1.91:
        return ig_error(2207009, f"({info.width}x{info.height}, ratio {ratio:.2f})")
    return None


def threads_image_problem(info: ImageInfo | None) -> str | None:
    """Threads: JPEG or PNG, at most 8 MB, aspect ratio up to 10:1. The container's
    `error_message` when refused (Meta lists none for images: UNKNOWN is what real answers show)."""
    if info is None or info.format not in ("JPEG", "PNG") or info.size > MAX_IMAGE_BYTES:
        return "UNKNOWN"
    if max(info.width / info.height, info.height / info.width) > 10:
        return "INVALID_ASPEC_RATIO"  # Meta's spelling
    return None
