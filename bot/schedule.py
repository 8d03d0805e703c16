"""When a channel is quiet and when its digests are due: config types and pure functions.

Times are local to `[site] timezone` ("22:00-06:00" crosses midnight; daylight saving is the
zone's), and every function takes `now`, so tests drive them with any clock.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from bot.durations import Duration

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: object) -> time:
    """ "07:00" -> time(7, 0); ValueError naming the expected form otherwise."""
    if isinstance(value, time):
        return value
    match = _CLOCK.match(str(value).strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f'{value!r} is not a time of day; write it like "07:00" or "22:30"')
    return time(int(match.group(1)), int(match.group(2)))


def _quiet(value: object) -> tuple[time, time]:
    if isinstance(value, tuple):
        return value
    parts = str(value).split("-") if isinstance(value, str) else []
    if len(parts) != 2:
        raise ValueError(f'{value!r} is not a span of hours; write it like "22:00-06:00"')
    start, end = parse_clock(parts[0]), parse_clock(parts[1])
    if start == end:
        raise ValueError(f"{value!r}: start and end are the same time")
    return start, end


QuietHours = Annotated[tuple[time, time], BeforeValidator(_quiet)]
ClockTime = Annotated[time, BeforeValidator(parse_clock)]


class DigestSettings(BaseModel):
    """`digest = { at = ["07:00", "19:00"], max = 10, title = "Rangkuman pagi" }` (or
    `every = "1h"`); `only = true`: the channel posts nothing but its digests."""

    model_config = ConfigDict(extra="forbid")

    at: list[ClockTime] = []
    every: Duration | None = None
    max: int = Field(default=10, ge=1, le=50)
    title: str = "Rangkuman berita"
    only: bool = False

    @model_validator(mode="after")
    def _one_schedule(self) -> DigestSettings:
        if bool(self.at) == (self.every is not None):
            raise ValueError('give either `at = ["07:00", …]` or `every = "1h"`')
        if self.every is not None and self.every < 300:
            raise ValueError("`every` must be at least 5 minutes")
        return self


def local(now: datetime, zone: str) -> datetime:
    return now.astimezone(ZoneInfo(zone))


def in_quiet(now: datetime, hours: tuple[time, time] | None, zone: str) -> bool:
    """Whether `now` falls in the quiet hours (start inclusive, end exclusive)."""
    if hours is None:
        return False
    start, end = hours
    moment = local(now, zone).time().replace(second=0, microsecond=0, tzinfo=None)
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end  # across midnight


def quiet_ends(now: datetime, hours: tuple[time, time], zone: str) -> datetime:
    """When the quiet hours that contain `now` end (aware, in `now`'s zone)."""
    here = local(now, zone)
    end = datetime.combine(here.date(), hours[1], tzinfo=here.tzinfo)
    if end <= here:
        end += timedelta(days=1)
    return end.astimezone(now.tzinfo)


def next_digest(now: datetime, settings: DigestSettings, zone: str, last: datetime | None) -> datetime:
    """When the next digest is due after `last` (the previous one; None: never), given `now`."""
    if settings.every is not None:
        return (last or now) + timedelta(seconds=settings.every)
    here = local(last or now, zone)
    candidates = []
    for day in (0, 1, 2):
        date = here.date() + timedelta(days=day)
        for at in settings.at:
            moment = datetime.combine(date, at, tzinfo=here.tzinfo)
            if moment > here:
                candidates.append(moment)
    return min(candidates).astimezone(now.tzinfo)
