"""The site itself as every part of siar sees it: name, links, language, time zone, and its
calls to action ("Ikuti media sosial kami", "aktifkan notifikasi")."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def _host_name(value: str) -> str:
    host = value.strip().lower().rstrip(".")
    if not _HOST.match(host):
        raise ValueError(f'{value!r} is not a host name; write it like "www.medcom.id" (no scheme, no path)')
    return host


class Site(_Strict):
    name: str = "siar"
    url: str = ""
    # The site's hosts: a link on any of them is one story, whichever served it (first = shown
    # in `siar why`). Default: the host of `url`, bare and with its "www." and "m." twins.
    hosts: list[Annotated[str, AfterValidator(_host_name)]] = []
    language: str = Field(default="id", pattern=r"^(id|en)$")
    timezone: str = "Asia/Jakarta"

    @model_validator(mode="after")
    def _default_hosts(self) -> Site:
        if not self.hosts and self.url:
            try:
                host = (urlsplit(self.url).hostname or "").rstrip(".")
            except ValueError as exc:
                raise ValueError(f"url {self.url!r} is not a valid URL ({exc})") from None
            bare = host.removeprefix("www.").removeprefix("m.")
            self.hosts = list(dict.fromkeys(h for h in (host, f"www.{bare}", f"m.{bare}", bare) if host))
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f'unknown time zone {value!r} (use a name like "Asia/Jakarta")') from exc
        return value


class FollowLink(_Strict):
    label: str
    url: str


class CTA(_Strict):
    """The site's calls to action, offered to every channel's template."""

    follow_text: str = ""
    follow_links: list[FollowLink] = []
    notify_text: str = ""
    notify_url: str = ""
    read_more_text: str = ""  # empty = "Baca selengkapnya" / "Read more" by site.language
