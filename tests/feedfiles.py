"""Feeds served from a folder by a process of its own (`python -m tests.feedfiles DIR PORTFILE`):
the arrival time of each request (CLOCK_MONOTONIC, comparable across processes) goes to
DIR/arrivals.log, untouched by the load of the test process. Publish by replacing files."""

from __future__ import annotations

import os
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def publish(folder: Path, name: str, body: bytes) -> None:
    """Replace `name` atomically (a request never sees half a file)."""
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(body)
    os.replace(tmp, folder / name)


def arrivals(folder: Path) -> list[tuple[str, float]]:
    """(path, monotonic time) of every request so far."""
    found = []
    for line in (folder / "arrivals.log").read_text().splitlines():
        path, _, at = line.rpartition(" ")
        found.append((path, float(at)))
    return found


def serve(folder: Path, port_file: Path) -> None:
    log = (folder / "arrivals.log").open("a", buffering=1)
    lock = threading.Lock()

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with lock:
                log.write(f"{self.path} {time.monotonic()}\n")
            super().do_GET()

        def guess_type(self, path: str | os.PathLike[str]) -> str:
            return "application/rss+xml; charset=utf-8"

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]))
