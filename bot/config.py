"""config.toml: load, expand `${ENV}`, validate, and explain every error by key path and line.

`load_config(path)` gives a `Config`, or raises `ConfigError` whose message lists each problem as
`FILE:LINE: key.path: what is wrong`. A channel whose secret is missing (an unset `${VAR}` or an
empty secret key) does not fail the load: it is listed in `Config.disabled` with the reason.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot import registry
from bot.channel import ChannelSettings
from bot.cleaning import CleaningRules
from bot.durations import Duration
from bot.editorial import PriorityRule
from bot.filters import Filters
from bot.paths import resolve_path
from bot.site import CTA, Site
from bot.tomllines import locate

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """The configuration is not usable; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreConfig(_Strict):
    url: str = "sqlite:///siar.db"


class FetchConfig(_Strict):
    timeout: Duration = 20.0
    max_bytes: int = Field(default=5_000_000, ge=1024)
    user_agent: str = "siar/0.1 (+https://github.com/siar-news/siar; news distribution bot)"
    max_backoff: Duration = 6 * 3600.0
    jitter: Duration = 10.0


class DaemonConfig(_Strict):
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field(default="text", pattern=r"^(text|json)$")
    shutdown_grace: Duration = 10.0  # how long in-flight sends may finish on SIGTERM
    retry_base: Duration = 30.0  # first retry delay of a failed post; doubles per attempt
    retry_max: Duration = 3600.0


class ClusterConfig(_Strict):
    """`[cluster]`: several daemons sharing one PostgreSQL store (ignored on SQLite)."""

    heartbeat: Duration = 10.0  # how often a daemon says it is alive (its sends, its leases)
    # A daemon silent for this long is dead: its `sending` rows are taken over (made pending on
    # resumable channels, uncertain elsewhere). Keep it several heartbeats long.
    takeover_after: Duration = 60.0
    lease_intervals: float = Field(default=2.0, ge=1.0)  # a feed's lease lasts this many intervals

    @model_validator(mode="after")
    def _takeover_after_beats(self) -> ClusterConfig:
        if self.takeover_after < 3 * self.heartbeat:
            raise ValueError(
                "takeover_after must be at least 3 heartbeats: a live daemon whose beat is a "
                "little late would see its sends taken over"
            )
        return self


class FeedConfig(Filters):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    interval: Duration = 300.0
    first_run: str = "skip"
    enrich: bool = False
    # Lets URLs this feed controls (article pages, images) reach private addresses (an intranet
    # CMS); the feed's own host is always allowed.
    allow_private: bool = False
    section: str | None = None  # forces the section instead of the feed's first category
    timeout: Duration | None = None
    # WebSub (bot/websub.py): subscribe when the feed advertises a hub and [http] public_url is
    # set; while subscribed, poll only every websub_poll_interval as a safety net.
    websub: bool = True
    websub_poll_interval: Duration = 900.0

    @field_validator("websub_poll_interval")
    @classmethod
    def _safety_net(cls, value: float) -> float:
        if not 10 <= value <= 86400:
            raise ValueError('must be between "10s" and "1d" (the safety-net poll while subscribed)')
        return value

    @field_validator("first_run")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value in ("skip", "all") or re.fullmatch(r"latest:[1-9]\d*", value):
            return value
        raise ValueError('must be "skip", "all" or "latest:N" (N ≥ 1)')

    @field_validator("interval")
    @classmethod
    def _sane_interval(cls, value: float) -> float:
        if value < 10:
            raise ValueError('polling more often than every 10s is not polite; use at least "10s"')
        return value

    @field_validator("url")
    @classmethod
    def _url_kind(cls, value: str) -> str:
        if "://" in value and not re.match(r"(?i)^(https?|file)://", value):
            raise ValueError("must be an http(s):// or file:// URL, or a local path")
        return value


class MetricsConfig(_Strict):
    # /metrics, /healthz and /readyz (bot/health.py); "" turns them off. Loopback by default:
    # they carry no authentication.
    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]*):(\d{1,5})", value.strip())
        if value and (not match or int(match.group(2)) > 65535):
            raise ValueError('must be "HOST:PORT" (e.g. "127.0.0.1:9464"), or "" for no metrics')
        return value.strip()


class HttpConfig(_Strict):
    """`[http]`: the public HTTP server that components (web push, ...) add their routes to.

    Without the section, `[webpush] listen`, `public_url` and `trust_forwarded_for` supply its
    values (see channels/webpush/config.py `http_config`).
    """

    listen: str = "127.0.0.1:8080"
    public_url: str = ""  # where the outside reaches the server's root, e.g. "https://www.example.com/siar/"
    # Peers whose X-Forwarded-For is believed (addresses or CIDRs); everyone else is the client.
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    max_connections: int = Field(default=256, ge=1, le=10_000)
    # Open connections one address may hold (trusted proxies exempt); 0 = no cap.
    max_connections_per_address: int = Field(default=32, ge=0)
    header_timeout: Duration = 10.0  # a connection must send a request's complete headers by then
    keepalive_timeout: Duration = 15.0  # an idle keep-alive connection is closed after this
    max_header_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError('must be an http(s) URL like "https://www.example.com/siar/"')
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: list[str]) -> list[str]:
        parse_networks(values)
        return values

    @field_validator("header_timeout", "keepalive_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not 0 < value <= 3600:
            raise ValueError('must be between 0 and 1h (e.g. "10s")')
        return value


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def split_listen(value: str) -> tuple[str, int]:
    """("host", port) for "127.0.0.1:8080", "[::1]:8080" or ":8080"; ValueError otherwise."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]*):(\d{1,5})", value.strip())
    if not match or int(match.group(2)) > 65535:
        raise ValueError('must be "HOST:PORT", e.g. "127.0.0.1:8080"')
    return match.group(1).strip("[]") or "0.0.0.0", int(match.group(2))


def parse_networks(values: list[str]) -> tuple[Network, ...]:
    """The networks of addresses/CIDRs like "10.0.0.0/8" or "::1"; ValueError naming a bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f'{value!r} is not an IP address or network like "10.0.0.0/8"') from None
    return tuple(out)


class Config(_Strict):
    site: Site = Site()
    store: StoreConfig = StoreConfig()
    fetch: FetchConfig = FetchConfig()
    daemon: DaemonConfig = DaemonConfig()
    cluster: ClusterConfig = ClusterConfig()
    metrics: MetricsConfig = MetricsConfig()
    cleaning: CleaningRules = CleaningRules()
    cta: CTA = CTA()
    http: HttpConfig = HttpConfig()
    feeds: list[FeedConfig] = []
    channels: dict[str, ChannelSettings] = {}
    priority: list[PriorityRule] = []  # [[priority]]: breaking news (bot/editorial.py)
    # Filled by the loader, not by the file:
    path: Path = Path("config.toml")
    # Platform sections ([telegram], [webpush]) validated by their packages' models.
    sections: dict[str, BaseModel] = {}
    disabled: dict[str, str] = {}  # channel name -> why it does not run
    secrets: list[str] = []  # secret values, for log redaction

    def feed(self, name: str) -> FeedConfig:
        """The feed called `name`; KeyError if none."""
        for feed in self.feeds:
            if feed.name == name:
                return feed
        raise KeyError(name)

    def active_channels(self) -> dict[str, ChannelSettings]:
        """Channels that are enabled and have their secrets."""
        return {n: c for n, c in self.channels.items() if c.enabled and n not in self.disabled}

    def redact(self, text: str) -> str:
        """`text` with every secret value (and every value taken from the environment) masked:
        for what leaves through other doors than the log (status, alerts, stored errors)."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def resolve_path(self, value: str) -> Path:
        """`value` as a path, relative to the config file's folder when not absolute."""
        return resolve_path(value, self.path.parent)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|file:[^}]+)(?::-([^}]*))?\}")


def expand_env(
    data: Any, path: KeyPath, missing: list[tuple[KeyPath, str]], used: list[str] | None = None
) -> Any:
    """`data` with `${VAR}`, `${VAR:-default}` and `${file:PATH}` replaced; unset ones noted.

    Every value taken from the environment or a file is appended to `used`: such values are
    often secrets (tokens, keys in URLs), so logs mask them all.
    """
    used = used if used is not None else []
    if isinstance(data, dict):
        return {k: expand_env(v, (*path, k), missing, used) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, (*path, i), missing, used) for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name.startswith("file:"):
            try:
                secret = Path(name[5:]).expanduser().read_text().strip()
                used.append(secret)
                return secret
            except OSError as exc:
                missing.append((path, f"file {name[5:]} ({exc.strerror})"))
                return ""
            except UnicodeDecodeError:
                missing.append((path, f"file {name[5:]} (not UTF-8 text)"))
                return ""
        value = os.environ.get(name)
        if value is None or value == "":
            if default is not None:
                return default
            missing.append((path, f"environment variable {name}"))
            return ""
        used.append(value)
        return value

    return _VAR.sub(replace, data)


def load_config(path: str | Path) -> Config:
    """The validated configuration in `path`; ConfigError naming key paths and lines otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return parse_config(raw, text, path.resolve())


def parse_config(raw: dict[str, Any], text: str, path: Path) -> Config:
    """Validate an already parsed TOML document (`text` is used to find line numbers)."""
    return _Parse(text, path).run(raw)


class _Parse:
    """One validation of one document: collects every problem with its `file:line: key.path`."""

    def __init__(self, text: str, path: Path) -> None:
        self.text, self.path = text, path
        self.problems: list[str] = []
        self.disabled: dict[str, str] = {}  # channel -> why it does not run
        self.section_missing: dict[str, str] = {}  # platform section -> why its channels cannot run

    def problem(self, key: KeyPath, message: str) -> None:
        line = locate(self.text, key)
        where = f"{self.path}:{line}" if line else f"{self.path}"
        self.problems.append(f"{where}: {_dotted(key) or '(top level)'}: {message}")

    def run(self, raw: dict[str, Any]) -> Config:
        missing: list[tuple[KeyPath, str]] = []
        substituted: list[str] = []
        data = expand_env(raw, (), missing, substituted)
        known = registry.REGISTRY.sections()  # [telegram], [webpush]: owned by channel packages
        self._missing(missing, known)
        sections = self._sections(data, known)
        channels = self._channels(data.pop("channels", {}))
        for internal in ("path", "disabled", "secrets", "sections"):
            if internal in data:
                self.problem((internal,), "unknown key (check the spelling)")
                data.pop(internal)
        config: Config | None = None
        try:
            config = Config.model_validate({**data, "path": self.path})
        except ValidationError as exc:
            for err in exc.errors():
                self.problem(tuple(err["loc"]), _message(err))
        _cross_check(data.get("feeds"), channels, self.problem, data.get("priority"))
        if self.problems:
            raise ConfigError(self.problems)
        assert config is not None
        self._waiting_for_sections(channels, sections)
        config.channels, config.sections, config.disabled = channels, sections, self.disabled
        config.secrets = sorted(
            {*_secrets(channels), *_secrets(sections), *(v for v in substituted if len(v) >= 6)}
        )
        return config

    def _missing(self, missing: list[tuple[KeyPath, str]], known: dict[str, Any]) -> None:
        """An unset `${VAR}` disables its channel (or its section's channels); elsewhere it is
        an error."""
        for key, what in missing:
            if len(key) >= 2 and key[0] == "channels":
                self.disabled.setdefault(str(key[1]), f"{what} is not set ({_dotted(key)})")
            elif key and key[0] in known:
                self.section_missing.setdefault(str(key[0]), f"{what} is not set ({_dotted(key)})")
            else:
                self.problem(key, f"{what} is not set")

    def _sections(self, data: dict[str, Any], known: dict[str, Any]) -> dict[str, BaseModel]:
        sections: dict[str, BaseModel] = {}
        for name, model in known.items():
            if name not in data:
                continue
            try:
                sections[name] = model.model_validate(data.pop(name))
            except ValidationError as exc:
                for err in exc.errors():
                    self.problem((name, *err["loc"]), _message(err))
        return sections

    def _channels(self, raw_channels: Any) -> dict[str, ChannelSettings]:
        channels: dict[str, ChannelSettings] = {}
        if not isinstance(raw_channels, dict):
            self.problem(("channels",), "must be a table of [channels.NAME] sections")
            return channels
        for name, table in raw_channels.items():
            settings = _channel_settings(name, table, self.problem, self.disabled)
            if settings is not None:
                channels[name] = settings
        return channels

    def _waiting_for_sections(
        self, channels: dict[str, ChannelSettings], sections: dict[str, BaseModel]
    ) -> None:
        for name, settings in channels.items():
            needs = type(settings).requires_section
            if needs and name not in self.disabled:
                if needs in self.section_missing:
                    self.disabled[name] = self.section_missing[needs]
                elif needs not in sections:
                    self.disabled[name] = f"needs a [{needs}] section"


def _channel_settings(
    name: str, table: Any, problem: Any, disabled: dict[str, str]
) -> ChannelSettings | None:
    key: KeyPath = ("channels", name)
    if not isinstance(table, dict):
        problem(key, "must be a table with at least `type = ...`")
        return None
    kind = table.get("type")
    if not isinstance(kind, str) or not kind:
        problem((*key, "type"), f"required; one of {', '.join(registry.known_types())}")
        return None
    try:
        model = registry.settings_class(kind)
    except registry.UnknownChannelType:
        problem((*key, "type"), registry.unknown_type_message(kind))
        return None
    try:
        settings = model.model_validate(table)
    except ValidationError as exc:
        for err in exc.errors():
            problem((*key, *err["loc"]), _message(err))
        return None
    if name not in disabled and settings.enabled:
        for secret in type(settings).secret_keys:
            if not _secret_value(getattr(settings, secret, None)):
                disabled[name] = f"secret {_dotted((*key, secret))} is empty"
                break
    return settings


def _cross_check(
    feeds: Any, channels: dict[str, ChannelSettings], problem: Any, priority: Any = None
) -> None:
    feeds = feeds if isinstance(feeds, list) else []
    names = [f.get("name") for f in feeds if isinstance(f, dict)]
    for i, name in enumerate(names):
        if name is not None and names.index(name) != i:
            problem(("feeds", i, "name"), f"feed name {name!r} is used twice")
    for name, settings in channels.items():
        for j, feed_name in enumerate(settings.feeds or []):
            if feed_name not in names:
                problem(("channels", name, "feeds", j), f"no feed is named {feed_name!r}")
        if settings.quiet == "digest" and settings.digest is None:
            problem(
                ("channels", name, "quiet"),
                'quiet = "digest" folds quiet-hour posts into the next digest: set `digest` too '
                '(e.g. digest = { at = ["07:00"] })',
            )
    for i, rule in enumerate(priority if isinstance(priority, list) else []):
        rule_feeds = rule.get("feeds") if isinstance(rule, dict) else None
        for j, feed_name in enumerate(rule_feeds if isinstance(rule_feeds, list) else []):
            if feed_name not in names:
                problem(("priority", i, "feeds", j), f"no feed is named {feed_name!r}")


def _secrets(models: dict[str, Any]) -> list[str]:
    values: list[str] = []
    for settings in models.values():
        parts = getattr(settings, "secret_parts", None)
        values += parts() if callable(parts) else []
        for key in getattr(type(settings), "secret_keys", ()):
            value = _secret_value(getattr(settings, key, None))
            if value and len(value) >= 4:
                values.append(value)
    return values


def _secret_value(value: Any) -> str:
    if value is None:
        return ""
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter else value)


def _message(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling)"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _dotted(key: KeyPath) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
