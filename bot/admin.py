"""What an operator may do while siar runs, written once for the CLI and the bots' admin
commands: pause and resume a channel, resend a post, explain a story, list the feeds, preview
the newest story on every channel.

Every action answers in plain text lines (the CLI prints them; Telegram fits them into a
message), and none of them can lose or repeat a post: a paused channel's posts wait in the
outbox, a resend goes through the outbox like any post.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.channel import Channel
from bot.normalize import link_key
from bot.render import RenderError
from bot.reports import iso
from bot.retractions import Capability

if TYPE_CHECKING:
    from bot.config import Config
    from bot.store import Store
    from bot.types import Post


@dataclass(frozen=True)
class Preview:
    """The newest story as one channel would post it, or why it cannot render."""

    channel: str
    type: str
    post: Post | None = None
    error: str = ""


class Admin:
    """The operator's actions on a store (and, in the daemon, on its running channels)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], datetime],
        channels: Mapping[str, Channel] | None = None,
        wake: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.channels = channels if channels is not None else {}
        self.wake = wake  # tell the running dispatcher at once (else it notices within seconds)

    def _known(self, channel: str) -> str | None:
        if channel in self.config.channels:
            return None
        names = ", ".join(sorted(self.config.channels)) or "none"
        return f"no channel is named {channel!r} (channels: {names})"

    async def pause(self, channel: str, by: str) -> tuple[bool, str]:
        """Hold `channel`'s posts; (done, what to tell the operator)."""
        problem = self._known(channel)
        if problem:
            return False, problem
        if not await self.store.outbox.pause(channel, by, self.clock()):
            return False, f"channel {channel} is already paused"
        return True, (
            f"channel {channel} paused: its posts wait (nothing is dropped) until "
            f"`siar resume {channel}` or /resume {channel}"
        )

    async def resume(self, channel: str) -> tuple[bool, str]:
        problem = self._known(channel)
        if problem:
            return False, problem
        if not await self.store.outbox.resume(channel):
            return False, f"channel {channel} is not paused"
        if self.wake is not None:
            self.wake({channel})
        counts = (await self.store.reports.counts()).get(channel, {})
        return True, f"channel {channel} resumed; {counts.get('pending', 0)} posts waiting go out now"

    async def resend(self, outbox_id: int) -> tuple[bool, str]:
        row = await self.store.outbox.row(outbox_id)
        if row is not None and row["action"] == "post":
            found = await self.store.stories.find(str(row["story_id"]))
            story = next((s for s in found if s["id"] == row["story_id"]), None)
            if story is not None and story["retracted_at"] is not None:
                return False, f"outbox row {outbox_id} cannot be resent: its story was retracted"
        if not await self.store.resend(outbox_id, self.clock()):
            state = f"it is {row['status']}" if row else "there is no such row"
            return False, (
                f"outbox row {outbox_id} cannot be resent: {state} (only uncertain or "
                "failed posts, and broadcasts with uncertain recipients, can be)"
            )
        if self.wake is not None and row is not None:
            self.wake({str(row["channel"])})
        what = "its uncertain recipients are" if row and row["status"] == "sent" else "it is"
        return True, f"outbox row {outbox_id} queued again ({what} sent shortly)"

    async def retract(self, ref: str, *, reason: str = "", by: str = "") -> tuple[bool, list[str]]:
        """Take back the story `ref` names (its link, feed id or story id): its waiting posts
        are cancelled, its published ones deleted where the platform can, and it is never
        posted again. (done, the report: per story, one line per channel)."""
        ref = ref.strip()
        found = await self.store.stories.find(ref, link_key(ref, self.config.site.hosts)) if ref else []
        if not found:
            return False, [
                f"no story matches {ref!r} (give its link, its feed id, or the id from `siar why`)"
            ]
        capabilities = {
            name: Capability(self.config.channels[name].type, None)
            for name in self.config.channels
            if name not in self.channels
        }
        capabilities.update(
            {
                name: Capability(
                    c.type,
                    bool(getattr(c, "can_delete", False)),
                    getattr(c, "turned_off", {}).get("delete", ""),
                )
                for name, c in self.channels.items()
            }
        )
        lines: list[str] = []
        woken: set[str] = set()
        for story in found:
            again = story["retracted_at"] is not None
            done = await self.store.stories.retract(
                story["id"], capabilities, reason=reason, by=by or "operator", now=self.clock()
            )
            note = " (retracted before; what is left to do)" if again else ""
            lines.append(f"retracted: {story['title']} ({story['feed']}, id {story['id']}){note}")
            report = done.report()
            lines += [f"  {channel}: {what}" for channel, what in report] or ["  no channel had it"]
            woken.update(channel for channel, _ in done.deletes)
        if self.wake is not None and woken:
            self.wake(woken)
        return True, lines

    async def why(self, key: str) -> list[dict[str, Any]]:
        return await self.store.reports.why(key, self.config.site.hosts)

    def why_lines(self, report: list[dict[str, Any]], limit: int = 12) -> list[str]:
        """A short text of `why`: per story, its decisions (newest last)."""
        lines: list[str] = []
        for item in report:
            story = item["story"]
            lines.append(f"{story['title']} ({story['feed']}, id {story['id']})")
            for d in item["decisions"][-limit:]:
                detail = f" — {str(d['detail'])[:80]}" if d.get("detail") else ""
                lines.append(f"  {d['channel'] or '-'}: {d['decision']}{detail}")
        return lines

    async def feeds(self) -> list[dict[str, Any]]:
        """Each configured feed's state and last error (the feeds part of `status`)."""
        return list((await self.store.reports.status(self.config))["feeds"])

    async def paused(self) -> dict[str, dict[str, Any]]:
        return {
            name: {k: iso(v) for k, v in info.items()}
            for name, info in (await self.store.outbox.paused()).items()
        }

    async def previews(self) -> list[Preview]:
        """The newest stored story, rendered for every running channel (nothing is sent)."""
        latest = await self.store.stories.latest(1)
        if not latest:
            return []
        story = latest[0]
        out: list[Preview] = []
        for name, channel in self.channels.items():
            try:
                out.append(Preview(name, channel.type, channel.render(story)))
            except (RenderError, ValueError) as exc:
                out.append(Preview(name, channel.type, error=str(exc)))
        return out
