"""A local HTTP server on 127.0.0.1 that serves feeds the way real sites do (and misbehave)."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/rss+xml; charset=utf-8"
    etag: bool = True  # answer with an ETag and honour If-None-Match
    last_modified: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    redirect_to: str | None = None
    delay: float = 0.0


class FeedServer:
    """`server.routes["/feed.xml"] = Route(body=...)`; `server.requests` records each request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.arrivals: list[tuple[str, float]] = []  # (path, monotonic time) of each request
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                outer.arrivals.append((self.path, time.monotonic()))
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.delay:
                    threading.Event().wait(route.delay)
                if route.redirect_to:
                    self.send_response(route.status)
                    self.send_header("Location", route.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                tag = '"' + hashlib.md5(route.body).hexdigest() + '"'
                if route.etag and self.headers.get("If-None-Match") == tag:
                    self.send_response(304)
                    self.send_header("ETag", tag)
                    self.end_headers()
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                if route.etag:
                    self.send_header("ETag", tag)
                if route.last_modified:
                    self.send_header("Last-Modified", route.last_modified)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(route.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def __enter__(self) -> FeedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def rss(items: list[dict[str, str]], title: str = "Test feed") -> bytes:
    """A small RSS 2.0 document; each item dict may have title, link, guid, category, pubDate, description."""
    parts = []
    for item in items:
        cats = "".join(f"<category>{c}</category>" for c in item.get("category", "").split("|") if c)
        parts.append(
            f"<item><title>{item.get('title', '')}</title><link>{item.get('link', '')}</link>"
            + (f'<guid isPermaLink="false">{item["guid"]}</guid>' if item.get("guid") else "")
            + f"<pubDate>{item.get('pubDate', 'Fri, 09 Oct 2020 13:53:00 +0700')}</pubDate>{cats}"
            f"<description><![CDATA[{item.get('description', '')}]]></description></item>"
        )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>{title}</title>'
        f"<link>https://example.com/</link><description>d</description>{''.join(parts)}"
        "</channel></rss>"
    ).encode()
