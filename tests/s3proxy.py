"""A real HTTP proxy in front of the loopback S3 server, for faults a healthy server cannot produce.

Requests go through unchanged unless a rule says otherwise: fail with 503 (a
store that is briefly unavailable), hang until released (a store that stopped
answering), or drop the conditional-write headers (a store that ignores them).
Rules match a substring of the request path, so a test can break the lock file
alone, or the runs table alone, while everything else keeps working.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass
class _Rule:
    pattern: str
    action: str  # "fail" | "hang" | "delay"
    methods: tuple[str, ...] = ()  # empty: every method
    until: float = float("inf")  # time.monotonic() when the rule ends
    remaining: int | None = None  # requests left to break (None: no count)
    seconds: float = 0.0  # "delay": how long each matching request waits before it is forwarded
    hits: int = 0
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        if self.pattern not in path or (self.methods and method not in self.methods):
            return False
        if time.monotonic() >= self.until or self.remaining == 0:
            return False
        return True


class S3FaultProxy:
    """``with S3FaultProxy(upstream) as proxy:`` -> ``proxy.endpoint`` serves what ``upstream`` serves."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.strip_conditionals = False
        self.rules: list[_Rule] = []
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for rule in self.rules:
            rule.released.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ rules
    def fail(
        self, pattern: str, *, seconds: float | None = None, count: int | None = None, methods: tuple[str, ...] = ()
    ) -> _Rule:
        """Answer matching requests with 503 SlowDown, for ``seconds`` or ``count`` requests (or until cleared)."""
        until = time.monotonic() + seconds if seconds is not None else float("inf")
        return self._add(_Rule(pattern, "fail", methods, until, count))

    def delay(self, pattern: str, seconds: float, *, methods: tuple[str, ...] = ()) -> _Rule:
        """Forward matching requests only after ``seconds`` (a slow link between a reader's check and its write)."""
        return self._add(_Rule(pattern, "delay", methods, seconds=seconds))

    @contextmanager
    def hang(self, pattern: str, *, methods: tuple[str, ...] = ()) -> Iterator[_Rule]:
        """Hold matching requests unanswered inside the block; they go through when it ends."""
        rule = self._add(_Rule(pattern, "hang", methods))
        try:
            yield rule
        finally:
            rule.released.set()
            with self._lock:
                self.rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            for rule in self.rules:
                rule.released.set()
            self.rules.clear()

    def _add(self, rule: _Rule) -> _Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def _match(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule
        return None

    # ------------------------------------------------------------------ serving
    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        method, path = req.command, req.path
        body = _read_body(req)
        rule = self._match(method, path)
        if rule is not None and rule.action == "hang":
            rule.released.wait()
        elif rule is not None and rule.action == "delay":
            time.sleep(rule.seconds)
        elif rule is not None:
            payload = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>injected by the test proxy</Message></Error>"
            )
            self._record(method, path, 503)
            req.send_response(503)
            req.send_header("Content-Type", "application/xml")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            if method != "HEAD":
                req.wfile.write(payload)
            return
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP}
        if self.strip_conditionals:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("if-none-match", "if-match")}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self._record(method, path, resp.status)
            req.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP and (k.lower() != "content-length" or method == "HEAD"):
                    req.send_header(k, v)  # (a HEAD's length is the object's, not its empty body's)
            if method != "HEAD":
                req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            if method != "HEAD":
                req.wfile.write(data)
        finally:
            conn.close()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, status))


def _read_body(req: BaseHTTPRequestHandler) -> bytes:
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(req.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            out += req.rfile.read(size)
            req.rfile.readline()
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length else b""
