"""A strict local fake of the Telegram Bot API, for tests and benchmarks.

It listens on 127.0.0.1 and answers `/bot{token}/METHOD` like Telegram does for the methods
python-telegram-bot 22 calls: it rejects what Telegram rejects (unknown chats, unsupported or
unbalanced HTML, text over 4096 / captions over 1024 UTF-16 units after entity parsing, more than
100 entities, bad buttons), answers 429 with `parameters.retry_after` when a sender goes over the
per-chat (1/s), per-group (20/min) or global (30/s) limits, and can be told to answer 403
(blocked / kicked), 400 with `migrate_to_chat_id`, or 5xx, or to carry out a call and then drop
the connection without answering (`drop`: the client cannot know whether it went through).

Tests play users through it: `send_text(user, "/start")`, `press(user, message, data)`,
`block(user)` put updates in the queue that `getUpdates` hands to the bot, and `messages(chat)`
shows what the bot sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-token-for-the-fake"
BOT_ID = 123456
ALLOWED_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-spoiler",
    "span",
    "tg-emoji",
}
NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
SEND_METHODS = {"sendMessage", "sendPhoto", "sendMediaGroup", "copyMessage", "forwardMessage"}
# Form fields PTB sends JSON encoded (strings go as they are).
JSON_FIELDS = {
    "reply_markup",
    "commands",
    "allowed_updates",
    "link_preview_options",
    "scope",
    "entities",
    "caption_entities",
    "media",
    "offset",
    "limit",
    "timeout",
    "disable_notification",
    "message_id",
    "user_id",
    "show_alert",
    "cache_time",
    "allow_paid_broadcast",
    "protect_content",
    "drop_pending_updates",
    "reply_parameters",
    "show_caption_above_media",
    "has_spoiler",
    "max_connections",
}
_REQUEST: contextvars.ContextVar[web.Request | None] = contextvars.ContextVar("request", default=None)
_ATTR_TEXT = r"""(?:\s+[a-zA-Z_:-]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>"']+))?)*"""
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)(" + _ATTR_TEXT + r")\s*>")
_ATTR = re.compile(r"([a-zA-Z_:-]+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>\"']+)))?")
_ENTITY = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z]+);")


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_html(text: str) -> tuple[str, int]:
    """(plain text, entity count) of a Telegram HTML message; ApiError 400 as Telegram rejects it."""
    out: list[str] = []
    stack: list[str] = []
    entities = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "<":
            m = _TAG.match(text, i)
            offset = len(text[:i].encode())
            if m is None:
                raise ApiError(
                    400, f"Bad Request: can't parse entities: Unsupported start tag at byte offset {offset}"
                )
            closing, name, attrs = m.group(1) == "/", m.group(2).lower(), m.group(3)
            if name not in ALLOWED_TAGS:
                kind = "end" if closing else "start"
                raise ApiError(
                    400,
                    f'Bad Request: can\'t parse entities: Unsupported {kind} tag "{name}" '
                    f"at byte offset {offset}",
                )
            if closing:
                if not stack or stack[-1] != name:
                    raise ApiError(
                        400,
                        f"Bad Request: can't parse entities: Unmatched end tag at byte "
                        f'offset {offset}, expected "</{stack[-1] if stack else ""}>", '
                        f'found "</{name}>"',
                    )
                stack.pop()
            else:
                values = {
                    a.group(1).lower(): next((g for g in a.groups()[1:] if g is not None), "")
                    for a in _ATTR.finditer(attrs)
                }
                if name == "a" and not values.get("href"):
                    raise ApiError(400, "Bad Request: can't parse entities: <a> needs an href")
                if name == "span" and values.get("class") != "tg-spoiler":
                    raise ApiError(
                        400,
                        f'Bad Request: can\'t parse entities: Unsupported start tag "span" '
                        f"at byte offset {offset}",
                    )
                if name == "tg-emoji" and not values.get("emoji-id"):
                    raise ApiError(400, "Bad Request: can't parse entities: tg-emoji needs emoji-id")
                stack.append(name)
                entities += 1
            i = m.end()
        elif ch == "&":
            m = _ENTITY.match(text, i)
            if m is None:
                out.append("&")
                i += 1
                continue
            ref = m.group(1)
            if ref.startswith("#"):
                out.append(chr(int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])))
            elif ref in NAMED_ENTITIES:
                out.append(NAMED_ENTITIES[ref])
            else:
                out.append(m.group(0))  # Telegram leaves unknown named entities as text
            i = m.end()
        elif ch == ">":
            raise ApiError(400, "Bad Request: can't parse entities: Unexpected '>' (escape it as &gt;)")
        else:
            out.append(ch)
            i += 1
    if stack:
        raise ApiError(
            400,
            f"Bad Request: can't parse entities: Can't find end tag corresponding to "
            f'start tag "{stack[-1]}"',
        )
    return "".join(out), entities


@dataclass
class Chat:
    id: int
    type: str  # private, group, supergroup, channel
    title: str = ""
    username: str = ""
    first_name: str = ""
    language: str = "id"
    blocked: bool = False  # private: the user blocked the bot; groups: the bot was removed
    migrated_to: int | None = None
    admins: set[int] = field(default_factory=set)
    creator: int | None = None
    # The bot's administrator rights here (channels and groups). By default it may post, edit
    # and pin, not delete others' or old messages (can_delete_messages).
    bot_rights: set[str] = field(
        default_factory=lambda: {"can_post_messages", "can_edit_messages", "can_pin_messages"}
    )
    pinned: list[int] = field(default_factory=list)  # message ids, most recent last

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.type == "private":
            data["first_name"] = self.first_name or f"user{self.id}"
        else:
            data["title"] = self.title or f"chat{self.id}"
        if self.username:
            data["username"] = self.username
        return data


@dataclass
class Failure:
    code: int
    description: str
    parameters: dict[str, Any] | None = None
    method: str | None = None
    chat: int | None = None
    count: int = 1


class FakeTelegram:
    """The fake Bot API server; `async with FakeTelegram() as tg:` starts it on a free port."""

    def __init__(
        self,
        token: str = TOKEN,
        *,
        limits: bool = True,
        global_per_s: int = 30,
        paid_per_s: int = 1000,  # messages sent with allow_paid_broadcast
        per_chat_per_s: int = 1,
        group_per_min: int = 20,
        bot_username: str = "siar_test_bot",
        latency: float = 0.0,
        auto_users: bool = False,
        port: int = 0,
    ) -> None:
        self.token = token
        self.limits = limits
        self.global_per_s = global_per_s
        self.paid_per_s = paid_per_s
        self.port = port
        self.per_chat_per_s = per_chat_per_s
        self.group_per_min = group_per_min
        self.bot_username = bot_username
        self.latency = latency
        self.auto_users = auto_users  # every positive chat id is a private chat (benchmarks)
        self.delays: dict[str, float] = {}  # method -> seconds to wait before answering
        self.chats: dict[int, Chat] = {}
        self.sent: list[dict[str, Any]] = []  # every accepted message, in order
        self.calls: list[tuple[str, dict[str, Any], int]] = []  # (method, params, HTTP status)
        self.call_times: list[float] = []  # monotonic time each of `calls` was answered
        self.commands: dict[str, list[dict[str, str]]] = {}  # language ("" default) -> commands
        self.answered: dict[str, dict[str, Any]] = {}  # callback query id -> answer
        self.photo_errors: dict[str, str] = {}  # photo URL -> Bad Request description
        self.failures: list[Failure] = []
        self.drops: list[Failure] = []  # calls to carry out, then hang up on without an answer
        self.dropped = 0
        self.rejected_429 = 0
        self.floods: list[tuple[str, int, float]] = []  # each 429: (limit hit, chat, monotonic time)
        self.conflicts = 0  # getUpdates calls made while another one was waiting
        self._pollers: list[web.Request | None] = []  # getUpdates calls waiting now
        self.webhook_url = ""
        self.send_times: list[float] = []  # monotonic arrival time of each accepted message
        self.clock: Callable[[], float] = time.time  # message dates and the 48-hour delete limit
        self._by_id: dict[tuple[int, int], dict[str, Any]] = {}  # (chat, message id) -> message
        self._updates: list[dict[str, Any]] = []
        self._update_id = 1000
        self._message_id: dict[int, int] = defaultdict(int)
        self._new_update = asyncio.Event()
        self._chat_times: dict[int, deque[float]] = defaultdict(deque)
        self._group_times: dict[int, deque[float]] = defaultdict(deque)
        self._global_times: deque[float] = deque()
        self._hang_after: int | None = None
        self._hang = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/fake/stats", self._stats)
        app.router.add_get("/fake/sent", self._sent)
        app.router.add_post("/fake/user", self._play_user)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._hang.set()
        self._new_update.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        """What `[telegram] api_base_url` should be."""
        return f"http://127.0.0.1:{self.port}"

    # --- the world tests set up -------------------------------------------------------------

    def user(self, user_id: int, first_name: str = "", language: str = "id") -> Chat:
        """A person with a private chat with the bot (chat id = user id)."""
        chat = Chat(user_id, "private", first_name=first_name or f"User{user_id}", language=language)
        self.chats[user_id] = chat
        return chat

    def group(
        self, chat_id: int, title: str = "", *, admins: set[int] | None = None, kind: str = "group"
    ) -> Chat:
        chat = Chat(chat_id, kind, title=title or f"Group{chat_id}", admins=set(admins or ()))
        self.chats[chat_id] = chat
        return chat

    def channel(self, chat_id: int, username: str = "") -> Chat:
        chat = Chat(chat_id, "channel", title=f"Channel{chat_id}", username=username)
        self.chats[chat_id] = chat
        return chat

    def migrate(self, chat_id: int, new_id: int) -> None:
        """Group `chat_id` becomes supergroup `new_id` (sends to the old id answer 400 migrate)."""
        old = self.chats[chat_id]
        old.migrated_to = new_id
        self.chats[new_id] = Chat(new_id, "supergroup", title=old.title, admins=set(old.admins))

    def fail(
        self,
        code: int,
        description: str,
        *,
        method: str | None = None,
        chat: int | None = None,
        count: int = 1,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        """The next `count` matching calls answer `code` (e.g. 500, 'Internal Server Error')."""
        self.failures.append(Failure(code, description, parameters, method, chat, count))

    def drop(self, *, method: str | None = None, chat: int | None = None, count: int = 1) -> None:
        """The next `count` matching calls are carried out (a message is sent) but the connection
        is closed before the answer, as when Telegram or a proxy resets it mid-request."""
        self.drops.append(Failure(0, "dropped", None, method, chat, count))

    def hang_after(self, n: int) -> None:
        """Accept `n` more messages, then accept (record) the next ones but never answer them."""
        self._hang_after = len(self.sent) + n

    # --- playing users --------------------------------------------------------------------

    def _push(self, update: dict[str, Any]) -> int:
        self._update_id += 1
        update["update_id"] = self._update_id
        self._updates.append(update)
        self._new_update.set()
        return self._update_id

    def _user_json(self, user_id: int) -> dict[str, Any]:
        chat = self.chats.get(user_id)
        name = chat.first_name if chat else f"User{user_id}"
        lang = chat.language if chat else "id"
        return {"id": user_id, "is_bot": False, "first_name": name, "language_code": lang}

    def send_text(self, user_id: int, text: str, *, chat_id: int | None = None) -> dict[str, Any]:
        """User `user_id` writes `text` in `chat_id` (default: their private chat with the bot)."""
        chat = self.chats[chat_id if chat_id is not None else user_id]
        if chat.type == "private":
            chat.blocked = False  # writing to the bot means it is not blocked
        self._message_id[chat.id] += 1
        message: dict[str, Any] = {
            "message_id": self._message_id[chat.id],
            "date": int(time.time()),
            "chat": chat.as_json(),
            "from": self._user_json(user_id),
            "text": text,
        }
        command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
        if command:
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command.group(0))}]
        self._push({"message": message})
        return message

    def press(self, user_id: int, message: dict[str, Any], data: str) -> str:
        """User presses the inline button with `data` under `message` (one the bot sent)."""
        buttons = [b for row in message.get("reply_markup", {}).get("inline_keyboard", []) for b in row]
        if data not in [b.get("callback_data") for b in buttons]:
            raise AssertionError(f"no button with callback_data {data!r} under that message")
        query_id = f"cq{self._update_id + 1}"
        self._push(
            {
                "callback_query": {
                    "id": query_id,
                    "from": self._user_json(user_id),
                    "chat_instance": f"ci{message['chat']['id']}",
                    "data": data,
                    "message": self._message_json(message),
                }
            }
        )
        return query_id

    def block(self, user_id: int) -> None:
        """The user blocks the bot: sends answer 403, and a my_chat_member update arrives."""
        self.chats[user_id].blocked = True
        self._member_update(user_id, user_id, "member", "kicked")

    def unblock(self, user_id: int) -> None:
        self.chats[user_id].blocked = False
        self._member_update(user_id, user_id, "kicked", "member")

    def remove_bot(self, chat_id: int, by: int) -> None:
        """User `by` removes the bot from group `chat_id`."""
        self.chats[chat_id].blocked = True
        self._member_update(chat_id, by, "member", "left")

    def add_bot(self, chat_id: int, by: int) -> None:
        self.chats[chat_id].blocked = False
        self._member_update(chat_id, by, "left", "member")

    def _member_update(self, chat_id: int, by: int, old: str, new: str) -> None:
        me = {"id": BOT_ID, "is_bot": True, "first_name": "siar", "username": self.bot_username}

        def member(status: str) -> dict[str, Any]:
            data: dict[str, Any] = {"status": status, "user": me}
            if status == "kicked":
                data["until_date"] = 0
            return data

        self._push(
            {
                "my_chat_member": {
                    "chat": self.chats[chat_id].as_json(),
                    "from": self._user_json(by),
                    "date": int(time.time()),
                    "old_chat_member": member(old),
                    "new_chat_member": member(new),
                }
            }
        )

    # --- reading what the bot did ---------------------------------------------------------

    def messages(self, chat_id: int) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["chat"]["id"] == chat_id]

    def texts(self, chat_id: int) -> list[str]:
        return [m.get("text") or m.get("caption") or "" for m in self.messages(chat_id)]

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until `condition()` is truthy (checked whenever the fake answers a call)."""

        async def waiter() -> Any:
            async with self._changed:
                while not (result := condition()):
                    await self._changed.wait()
                return result

        return await asyncio.wait_for(waiter(), timeout)

    async def wait_sent(self, chat_id: int, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The messages sent to `chat_id` once there are at least `count`."""
        await self.wait_for(lambda: len(self.messages(chat_id)) >= count, timeout)
        return self.messages(chat_id)

    def max_in_window(self, window: float = 1.0) -> int:
        """The most accepted messages in any `window` seconds (for pacing checks)."""
        best, start = 0, 0
        times = self.send_times
        for end in range(len(times)):
            while times[end] - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    # --- the HTTP side ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        status, body = 200, {}
        try:
            params = await _params(request)
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            if self.latency or method in self.delays:
                await asyncio.sleep(self.delays.get(method, self.latency))
            self._scripted_failure(method, params)
            handler = getattr(self, f"_m_{method}", None)
            if handler is None:
                raise ApiError(404, "Not Found")
            _REQUEST.set(request)  # this request's own task: getUpdates looks at its connection
            result = await handler(params)
            body = {"ok": True, "result": result}
            if self._take(self.drops, method, params) is not None:
                return await self._hang_up(request, method, params)
        except ApiError as exc:
            status = exc.code
            body = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.parameters:
                body["parameters"] = exc.parameters
        self.calls.append((method, params, status))
        self.call_times.append(time.monotonic())
        async with self._changed:
            self._changed.notify_all()
        return web.json_response(body, status=status)

    async def _stats(self, request: web.Request) -> web.Response:
        """What a benchmark in another process needs to know."""
        return web.json_response(
            {
                "sent": len(self.sent),
                "rejected_429": self.rejected_429,
                "max_in_1s": self.max_in_window(1.0),
                "first": self.send_times[0] if self.send_times else 0,
                "last": self.send_times[-1] if self.send_times else 0,
                "conflicts": self.conflicts,
            }
        )

    async def _sent(self, request: web.Request) -> web.Response:
        """What a test in another process checks: every accepted message (chat, text), when it
        was accepted, and the messages answered 429 (the limit hit: chat, group or global;
        chat; when)."""
        return web.json_response(
            {
                "messages": [
                    {"chat": m["chat"]["id"], "text": m.get("text") or m.get("caption") or ""}
                    for m in self.sent
                ],
                "times": self.send_times,
                "flooded": self.floods,
                "rejected_429": self.rejected_429,
                "conflicts": self.conflicts,
            }
        )

    async def _play_user(self, request: web.Request) -> web.Response:
        """A test in another process plays a user: {"user": id, "name": ..., "text": ...} makes
        the private chat (if new) and, with a text, the user writes it to the bot."""
        data = await request.json()
        user = int(data["user"])
        if user not in self.chats:
            self.user(user, str(data.get("name") or ""))
        if data.get("text"):
            self.send_text(user, str(data["text"]))
        return web.json_response({"ok": True})

    def _scripted_failure(self, method: str, params: dict[str, Any]) -> None:
        failure = self._take(self.failures, method, params)
        if failure is not None:
            raise ApiError(failure.code, failure.description, failure.parameters)

    @staticmethod
    def _take(scripted: list[Failure], method: str, params: dict[str, Any]) -> Failure | None:
        for failure in scripted:
            if failure.count <= 0 or (failure.method and failure.method != method):
                continue
            if failure.chat is not None and _chat_param(params.get("chat_id")) != failure.chat:
                continue
            failure.count -= 1
            return failure
        return None

    async def _hang_up(self, request: web.Request, method: str, params: dict[str, Any]) -> web.Response:
        """Close the connection without an answer (the call was carried out)."""
        self.dropped += 1
        self.calls.append((method, params, 0))
        self.call_times.append(time.monotonic())
        async with self._changed:
            self._changed.notify_all()
        assert request.transport is not None
        request.transport.close()
        return web.Response()  # not written: the connection is gone

    def _chat(self, params: dict[str, Any]) -> Chat:
        ref = params.get("chat_id")
        if ref is None or ref == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        key = _chat_param(ref)
        chat = None
        if isinstance(key, int):
            chat = self.chats.get(key)
            if chat is None and self.auto_users and key > 0:
                chat = self.user(key)
        else:
            chat = next((c for c in self.chats.values() if c.username and "@" + c.username == key), None)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        if chat.migrated_to is not None:
            raise ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": chat.migrated_to},
            )
        if chat.blocked:
            if chat.type == "private":
                raise ApiError(403, "Forbidden: bot was blocked by the user")
            raise ApiError(403, f"Forbidden: bot was kicked from the {chat.type} chat")
        return chat

    def _check_rate(self, chat: Chat, paid: bool = False) -> None:
        if not self.limits:
            return
        now = time.monotonic()
        waits: dict[str, float] = {}
        recent = self._chat_times[chat.id]
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        if len(recent) >= self.per_chat_per_s:
            waits["chat"] = 1.0 - (now - recent[0])
        if chat.type in ("group", "supergroup"):
            minute = self._group_times[chat.id]
            while minute and now - minute[0] >= 60.0:
                minute.popleft()
            if len(minute) >= self.group_per_min:
                waits["group"] = 60.0 - (now - minute[0])
        while self._global_times and now - self._global_times[0] >= 1.0:
            self._global_times.popleft()
        if len(self._global_times) >= (self.paid_per_s if paid else self.global_per_s):
            waits["global"] = 1.0 - (now - self._global_times[0])
        if waits:
            self.rejected_429 += 1
            self.floods.append(("+".join(waits), chat.id, now))
            after = max(1, math.ceil(max(waits.values())))
            raise ApiError(429, f"Too Many Requests: retry after {after}", {"retry_after": after})

    def _record_send(self, chat: Chat) -> None:
        now = time.monotonic()
        self._chat_times[chat.id].append(now)
        self._group_times[chat.id].append(now)
        self._global_times.append(now)
        self.send_times.append(now)

    @staticmethod
    def _markup(params: dict[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if markup is None:
            return None
        rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        for row in rows:
            for button in row:
                if not button.get("text"):
                    raise ApiError(400, "Bad Request: text buttons are unallowed in the inline keyboard")
                kinds = [k for k in ("url", "callback_data", "switch_inline_query") if k in button]
                if len(kinds) != 1:
                    raise ApiError(
                        400,
                        "Bad Request: can't parse inline keyboard button: exactly one "
                        "optional field must be present",
                    )
                if "url" in button and not re.match(r"(https?|tg)://\S+$", button["url"]):
                    raise ApiError(400, "Bad Request: BUTTON_URL_INVALID")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= 64:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return markup

    def _text(self, text: Any, parse_mode: Any, limit: int, what: str) -> str:
        text = "" if text is None else str(text)
        if parse_mode is not None and str(parse_mode).upper() != "HTML":
            if str(parse_mode) not in ("Markdown", "MarkdownV2"):
                raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode}")
        plain, entities = parse_html(text) if parse_mode and str(parse_mode).upper() == "HTML" else (text, 0)
        plain = plain.strip()
        if what == "message" and not plain:
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(plain) > limit:
            raise ApiError(
                400,
                "Bad Request: message is too long"
                if what == "message"
                else "Bad Request: message caption is too long",
            )
        if entities > 100:
            raise ApiError(400, "Bad Request: too many entities (at most 100 are allowed)")
        return plain

    def _store(self, chat: Chat, params: dict[str, Any], kind: str, **fields: Any) -> dict[str, Any]:
        self._message_id[chat.id] += 1
        message: dict[str, Any] = {
            "message_id": self._message_id[chat.id],
            "date": int(self.clock()),
            "chat": chat.as_json(),
            "method": kind,
            **fields,
        }
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        for key in ("parse_mode", "disable_notification", "link_preview_options", "allow_paid_broadcast"):
            if key in params:
                message[key] = params[key]
        self.sent.append(message)
        self._by_id[(chat.id, message["message_id"])] = message
        self._record_send(chat)
        return message

    def _message_json(self, message: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {
            k: message[k]
            for k in ("message_id", "date", "chat", "text", "caption", "reply_markup")
            if k in message
        }
        data["from"] = {"id": BOT_ID, "is_bot": True, "first_name": "siar", "username": self.bot_username}
        if "photo" in message:
            data["photo"] = [
                {
                    "file_id": "AgAD" + str(message["message_id"]),
                    "file_unique_id": "u",
                    "width": 800,
                    "height": 450,
                }
            ]
        return data

    async def _maybe_hang(self) -> None:
        if self._hang_after is not None and len(self.sent) > self._hang_after:
            await self._hang.wait()  # the message is recorded (it went out) but never answered
            raise ApiError(500, "Internal Server Error")

    # --- methods ----------------------------------------------------------------------------

    async def _m_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "siar",
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook_url = ""
        return True

    async def _m_setWebhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url", ""))
        if url and not url.startswith("https://"):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook_url = url
        return True

    async def _m_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active")
        # Telegram allows one getUpdates consumer per token. A waiting call whose client is
        # gone (a SIGKILLed daemon's) is nobody's poll: it does not make the next a conflict.
        if any(
            r is None or (r.transport is not None and not r.transport.is_closing()) for r in self._pollers
        ):
            self.conflicts += 1
            raise ApiError(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one bot "
                "instance is running",
            )
        request = _REQUEST.get()
        self._pollers.append(request)
        try:
            return await self._updates_for(params)
        finally:
            self._pollers.remove(request)

    async def _updates_for(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = min(float(params.get("timeout") or 0), 2.0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and timeout > 0:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), timeout)
            except TimeoutError:
                pass
        return self._updates[:limit]

    async def _m_setMyCommands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError(400, "Bad Request: commands must be a list of at most 100")
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        scope = params.get("scope") or {"type": "default"}
        if isinstance(scope, str):
            scope = json.loads(scope)
        if scope.get("type") == "chat":  # a chat's own menu (Telegram: the chat must exist)
            self._chat({"chat_id": scope.get("chat_id")})
            self.commands[f"chat:{scope.get('chat_id')}"] = commands
            return True
        self.commands[str(params.get("language_code") or "")] = commands
        return True

    async def _m_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        text = self._text(params.get("text"), params.get("parse_mode"), 4096, "message")
        markup = self._markup(params)
        self._check_rate(chat, paid=bool(params.get("allow_paid_broadcast")))
        message = self._store(chat, params, "sendMessage", text=params.get("text"), plain=text)
        message["reply_markup"] = markup if markup is not None else message.get("reply_markup")
        await self._maybe_hang()
        return self._message_json(message)

    async def _m_sendPhoto(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        photo = params.get("photo")
        if not photo:
            raise ApiError(400, "Bad Request: there is no photo in the request")
        if photo in self.photo_errors:
            raise ApiError(400, self.photo_errors[photo])
        if isinstance(photo, str) and not re.match(r"https?://", photo):
            raise ApiError(400, "Bad Request: wrong remote file identifier specified: Wrong string length")
        caption = self._text(params.get("caption"), params.get("parse_mode"), 1024, "caption")
        self._markup(params)
        self._check_rate(chat, paid=bool(params.get("allow_paid_broadcast")))
        message = self._store(
            chat, params, "sendPhoto", caption=params.get("caption"), plain=caption, photo=photo
        )
        await self._maybe_hang()
        return self._message_json(message)

    def _find(self, params: dict[str, Any], doing: str = "edit") -> dict[str, Any]:
        chat = self._chat(params)
        message = self._by_id.get((chat.id, int(params.get("message_id") or 0)))
        if message is None or message.get("deleted"):
            raise ApiError(400, f"Bad Request: message to {doing} not found")
        return message

    def live(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in `chat_id` that were not deleted."""
        return [m for m in self.messages(chat_id) if not m.get("deleted")]

    def _rights(self, chat: Chat, *needed: str) -> bool:
        return chat.type == "private" or any(r in chat.bot_rights for r in needed)

    async def _m_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._find(params)
        if "photo" in message:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        plain = self._text(params.get("text"), params.get("parse_mode"), 4096, "message")
        markup = self._markup(params)
        if params.get("text") == message.get("text") and markup == message.get("reply_markup"):
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup "
                "of the message",
            )
        message.update(text=params.get("text"), plain=plain, reply_markup=markup)
        message["edits"] = message.get("edits", 0) + 1
        return self._message_json(message)

    async def _m_editMessageCaption(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._find(params)
        if "photo" not in message:
            raise ApiError(400, "Bad Request: there is no caption in the message to edit")
        plain = self._text(params.get("caption"), params.get("parse_mode"), 1024, "caption")
        markup = self._markup(params)
        if params.get("caption") == message.get("caption") and markup == message.get("reply_markup"):
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup "
                "of the message",
            )
        message.update(caption=params.get("caption"), plain=plain, reply_markup=markup)
        message["edits"] = message.get("edits", 0) + 1
        return self._message_json(message)

    async def _m_deleteMessage(self, params: dict[str, Any]) -> bool:
        """Telegram's rules: a message can be deleted for 48 hours after it was sent; older
        ones only by an admin with can_delete_messages in a supergroup or channel."""
        chat = self._chat(params)
        message = self._find(params, "delete")
        old = self.clock() - message["date"] >= 48 * 3600
        may_delete_any = chat.type in ("supergroup", "channel") and "can_delete_messages" in chat.bot_rights
        if old and not may_delete_any:
            raise ApiError(400, "Bad Request: message can't be deleted")
        message["deleted"] = True
        if message["message_id"] in chat.pinned:
            chat.pinned.remove(message["message_id"])
        return True

    async def _m_pinChatMessage(self, params: dict[str, Any]) -> bool:
        chat = self._chat(params)
        if not self._rights(chat, "can_pin_messages" if chat.type != "channel" else "can_edit_messages"):
            raise ApiError(400, "Bad Request: not enough rights to manage pinned messages in the chat")
        message = self._find(params, "pin")
        if message["message_id"] in chat.pinned:
            chat.pinned.remove(message["message_id"])
        chat.pinned.append(message["message_id"])
        message["pin_notification"] = not params.get("disable_notification", False)
        return True

    async def _m_unpinChatMessage(self, params: dict[str, Any]) -> bool:
        chat = self._chat(params)
        if not self._rights(chat, "can_pin_messages" if chat.type != "channel" else "can_edit_messages"):
            raise ApiError(400, "Bad Request: not enough rights to manage pinned messages in the chat")
        if "message_id" not in params:  # the most recent pin
            if chat.pinned:
                chat.pinned.pop()
            return True
        message_id = int(params["message_id"])
        if message_id not in chat.pinned:
            raise ApiError(400, "Bad Request: message to unpin not found")
        chat.pinned.remove(message_id)
        return True

    async def _m_editMessageReplyMarkup(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._find(params)
        markup = self._markup(params)
        if markup == message.get("reply_markup"):
            raise ApiError(400, "Bad Request: message is not modified")
        message["reply_markup"] = markup
        return self._message_json(message)

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        query_id = str(params.get("callback_query_id", ""))
        if not query_id.startswith("cq") or query_id in self.answered:
            raise ApiError(
                400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        self.answered[query_id] = params
        return True

    async def _m_getChatMember(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        user_id = int(params.get("user_id") or 0)
        user = self._user_json(user_id)
        if chat.type == "private":
            return {"status": "member", "user": user}
        if user_id == chat.creator:
            return {"status": "creator", "user": user, "is_anonymous": False}
        if user_id in chat.admins:
            rights = (
                "can_be_edited",
                "is_anonymous",
                "can_manage_chat",
                "can_delete_messages",
                "can_manage_video_chats",
                "can_restrict_members",
                "can_promote_members",
                "can_change_info",
                "can_invite_users",
                "can_post_stories",
                "can_edit_stories",
                "can_delete_stories",
            )
            return {"status": "administrator", "user": user, **dict.fromkeys(rights, False)}
        return {"status": "member", "user": user}

    async def _m_getChat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        return {**chat.as_json(), "accent_color_id": 0, "max_reaction_count": 11}


def _chat_param(ref: Any) -> int | str:
    if isinstance(ref, int):
        return ref
    text = str(ref)
    return int(text) if re.fullmatch(r"-?\d+", text) else text


async def _params(request: web.Request) -> dict[str, Any]:
    """The call's parameters, from a query string, a JSON body or a (multipart) form."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.read()
        if body:
            params.update(json.loads(body))
        return params
    if request.method == "POST":
        form = await request.post()
        for key, value in form.items():
            params[key] = value if isinstance(value, str) else "<file>"
    for key in JSON_FIELDS & params.keys():
        if isinstance(params[key], str):
            try:
                params[key] = json.loads(params[key])
            except ValueError as exc:
                raise ApiError(400, f"Bad Request: can't parse {key} JSON object") from exc
    return params
