"""One daemon per SQLite store (an exclusive lock file beside the database), and the pid file
`siar reload` finds the running daemon by."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO


class AlreadyRunning(Exception):
    pass


class StoreLock:
    """Held for the life of a daemon; the kernel releases it if the process dies."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the holder's pid."""
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(
                f"another siar daemon (pid {holder}) is using the store {self.path.with_suffix('')}; "
                "stop it first, or give this one its own [store] url"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def pid_path(config_path: Path) -> Path:
    """Where the daemon of `config_path` writes its pid: one file per config file, in the
    user's runtime folder (or the temp folder), so `siar reload --config X` finds the daemon
    that runs X whatever its store (SQLite or PostgreSQL)."""
    digest = hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:16]
    folder = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return folder / f"siar-{digest}.pid"


class PidFile:
    """The running daemon's pid, for `siar reload`; written at start, removed at stop."""

    def __init__(self, config_path: Path) -> None:
        self.path = pid_path(config_path)
        self.config_path = config_path

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n{self.config_path.resolve()}\n")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        try:
            if self.path.read_text().split("\n", 1)[0] == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass


def running_pid(config_path: Path) -> int | None:
    """The pid of the live daemon running `config_path`, or None (no pid file, a stale one, or
    a pid now used by another program)."""
    try:
        pid_text, config_text, *_ = [*pid_path(config_path).read_text().split("\n"), ""]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if config_text != str(config_path.resolve()):
        return None
    try:
        os.kill(pid, 0)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ProcessLookupError):
        return None
    return pid if ("siar" in command or "main.py" in command) else None
