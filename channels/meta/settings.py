"""The keys the Facebook, Instagram and Threads channels share, and their checks."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import SecretStr, field_validator

from bot.channel import ChannelSettings
from bot.durations import Duration

DAY = 86400.0
_VERSION = re.compile(r"^v\d+\.\d+$")


def graph_id(value: Any, what: str = "id") -> str:
    """A Graph object id pasted as a TOML string or an integer, as a string of digits."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{what} must be a numeric id (a TOML string or integer), got {value!r}")
    text = str(value).strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(
            f'{what} must be Meta\'s numeric id (digits only, e.g. "104233468117325"), got {value!r}'
        )
    return text


class MetaSettings(ChannelSettings):
    """Keys every Meta channel has (`type` sets the rest)."""

    access_token: SecretStr = SecretStr("")  # empty → the channel is disabled with a warning
    api_base_url: str = "https://graph.facebook.com"
    graph_version: str = "v23.0"
    # For GET /debug_token: "APP_ID|APP_SECRET" (the app token); empty = the token checks itself.
    app_token: SecretStr = SecretStr("")
    token_check: Duration = DAY  # how often the token's validity and expiry are read
    token_warning: Duration = 7 * DAY  # alert the admins this long before the token expires
    timeout: Duration = 30.0  # per request; no answer after a publishing call makes it uncertain
    rate_limit: str = "10/min"

    secret_keys: ClassVar[tuple[str, ...]] = ("access_token",)

    @field_validator("api_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError('must be an http(s):// URL like "https://graph.facebook.com"')
        return value

    @field_validator("graph_version")
    @classmethod
    def _version(cls, value: str) -> str:
        value = value.strip()
        if not _VERSION.match(value):
            raise ValueError(f'must be a Graph API version like "v23.0", got {value!r}')
        return value

    def secret_parts(self) -> list[str]:
        app = self.app_token.get_secret_value()
        return [app.split("|", 1)[1]] if "|" in app else []


class PublishingSettings(MetaSettings):
    """Instagram and Threads: an account id, the publishing limit and the container wait."""

    account_id: str
    on_cap: Literal["defer", "skip"] = "defer"  # when the account's 24 h publishing limit is reached
    poll_interval: Duration = 3.0  # between reads of a container's status
    poll_timeout: Duration = 120.0  # a container not FINISHED by then: try again later
    cards_dir: str = "cards"  # where cards are written (relative to the config file)
    card_size: tuple[int, int] = (1080, 1350)

    @field_validator("account_id", mode="before")
    @classmethod
    def _account_id(cls, value: Any) -> str:
        return graph_id(value, "account_id")

    @field_validator("card_size")
    @classmethod
    def _card_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        width, height = value
        if not (320 <= width <= 1440 and 320 <= height <= 1800):
            raise ValueError("card_size: width 320-1440 and height 320-1800 pixels")
        return value
