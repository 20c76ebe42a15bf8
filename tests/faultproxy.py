"""A fault-injecting HTTP proxy in front of Azurite (stdlib only, threaded, 127.0.0.1).

The test stack's ``wasb_default`` points at this proxy, so a test can make the storage misbehave for
the requests it chooses, while every other request is forwarded unchanged. Rules match on the HTTP
method and a substring of the (percent-decoded) request path and query; tests use a unique marker in
a file name, so one test's rule never touches another test's blobs. Actions:

- ``fail``: answer with an HTTP error status (500 by default) and never forward.
- ``hold``: keep the request waiting until the rule is released (``Rule.release()``), then forward it
  (or drop it, when its client has gone). ``Rule.hit`` is set as soon as one request is held.

When Azurite itself is down, the proxy closes the client's connection without an answer, as a dead
host would: the SDK sees a connection error, not an HTTP status.
"""

from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "proxy-authorization", "proxy-authenticate"}


@dataclass
class Rule:
    method: str
    marker: str
    action: str  # "fail" | "hold"
    status: int = 500
    limit: int | None = None  # act on at most this many requests, then forward the rest
    hits: int = 0
    hit: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    active: bool = True

    def matches(self, method: str, target: str) -> bool:
        return (self.active and method == self.method and self.marker in target
                and (self.limit is None or self.hits < self.limit))

    def release(self) -> None:
        """Let held requests go on, and stop acting on new ones."""
        self.active = False
        self.released.set()


class FaultProxy:
    """``FaultProxy(upstream_port).start()`` listens on an ephemeral 127.0.0.1 port (``.port``)."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.rules: list[Rule] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: pytest output stays readable
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _any

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # a client that hangs up (a killed task) is expected here, not news

        self.server = Server((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def start(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True, name="faultproxy").start()
        return self

    def close(self) -> None:
        for rule in self.rules:
            rule.release()
        self.server.shutdown()
        self.server.server_close()

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def fail(self, method: str, marker: str, status: int = 500) -> Rule:
        return self.add(Rule(method, marker, "fail", status=status))

    def hold(self, method: str, marker: str, limit: int | None = 1) -> Rule:
        return self.add(Rule(method, marker, "hold", limit=limit))

    def _match(self, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target):
                    rule.hits += 1
                    return rule
        return None

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        rule = self._match(req.command, unquote(req.path))
        if rule and rule.action == "fail":
            message = f"fault injected by the test proxy for {rule.marker!r}".encode()
            req.send_response(rule.status)
            req.send_header("Content-Type", "text/plain")
            req.send_header("Content-Length", str(len(message)))
            req.send_header("x-ms-error-code", "InternalError")
            req.end_headers()
            req.wfile.write(message)
            return
        if rule and rule.action == "hold":
            rule.hit.set()
            rule.released.wait()
        try:
            upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
            headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(req.command, req.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except (ConnectionError, socket.timeout, OSError, http.client.HTTPException):
            # The storage is down: a dead host answers nothing.
            req.close_connection = True
            return
        try:
            req.send_response_only(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    req.send_header(key, value)
            if req.command == "HEAD":
                req.send_header("Content-Length", response.getheader("Content-Length", "0"))
            else:
                req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            if req.command != "HEAD":
                req.wfile.write(data)
        except OSError:
            req.close_connection = True  # the client went away (e.g. its process was killed)
        finally:
            upstream.close()
