"""Fakes of the bridge's third parties, as small real HTTP servers on 127.0.0.1.

:class:`FakeLine` plays LINE's Messaging API (reply, push, loading
animation) and :class:`FakeChat` an OpenAI-compatible chat API. Each runs a
stdlib ``ThreadingHTTPServer`` on a free port in a daemon thread, records
every request for assertions and can be told to fail: an expired reply
token (400 "Invalid reply token"), 429 with ``Retry-After``, 500, slowness.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    """An answer the fake gives instead of success, ``times`` times."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


class _Server:
    """A threaded HTTP server calling ``handle(method, path, headers, body)``."""

    def __init__(self, handle: Callable[[Recorded], tuple[int, dict[str, Any], dict[str, str]]]):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                request = Recorded(
                    "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                with outer.lock:
                    outer.requests.append(request)
                status, payload, headers = handle(request)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a timeout test); nothing to answer

        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class FakeLine:
    """LINE's Messaging API: ``/v2/bot/message/reply``, ``/push``, ``/v2/bot/chat/loading/start``."""

    REPLY = "/v2/bot/message/reply"
    PUSH = "/v2/bot/message/push"
    LOADING = "/v2/bot/chat/loading/start"

    def __init__(self) -> None:
        self.failures: dict[str, list[Failure]] = {}
        self.expired_reply_tokens: set[str] = set()
        self._used_reply_tokens: set[str] = set()
        self._retry_keys: set[str] = set()
        self._accepted: list[Recorded] = []
        self._server = _Server(self._handle)

    def __enter__(self) -> FakeLine:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def fail(self, path: str, failure: Failure) -> None:
        """Answer the next request(s) to ``path`` with ``failure``."""
        with self._server.lock:
            self.failures.setdefault(path, []).append(failure)

    def requests(self, path: str | None = None) -> list[Recorded]:
        with self._server.lock:
            return [r for r in self._server.requests if path is None or r.path == path]

    def delivered(self) -> list[Recorded]:
        """Replies and pushes LINE accepted (each would reach the user)."""
        with self._server.lock:
            return list(self._accepted)

    def _handle(self, request: Recorded) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._server.lock:
            queue = self.failures.get(request.path)
            if queue:
                failure = queue[0]
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
                return failure.status, failure.body, failure.headers
            body = request.body if isinstance(request.body, dict) else {}
            if request.path == self.REPLY:
                token = body.get("replyToken")
                if token in self.expired_reply_tokens or token in self._used_reply_tokens:
                    return 400, {"message": "Invalid reply token"}, {}
                self._used_reply_tokens.add(str(token))
                self._accepted.append(request)
                return 200, {"sentMessages": [{"id": "1"}]}, {}
            if request.path == self.PUSH:
                key = request.headers.get("x-line-retry-key")
                if key and key in self._retry_keys:
                    return 409, {"message": "The retry key is already accepted"}, {}
                if key:
                    self._retry_keys.add(key)
                self._accepted.append(request)
                return 200, {"sentMessages": [{"id": "2"}]}, {}
            if request.path == self.LOADING:
                return 202, {}, {}
            return 404, {"message": "Not found"}, {}


class FakeChat:
    """An OpenAI-compatible ``/v1/chat/completions`` answering ``answer(user_text)``."""

    PATH = "/v1/chat/completions"

    def __init__(self, answer: Callable[[str], str] | None = None) -> None:
        self.answer = answer or (lambda text: f"model says: {text}")
        self.status = 200
        self.delay = 0.0
        self._server = _Server(self._handle)

    def __enter__(self) -> FakeChat:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url + self.PATH

    def requests(self) -> list[Recorded]:
        with self._server.lock:
            return list(self._server.requests)

    def _handle(self, request: Recorded) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.delay:
            time.sleep(self.delay)
        if self.status != 200:
            return self.status, {"error": {"message": "model unavailable"}}, {}
        body = request.body if isinstance(request.body, dict) else {}
        messages = body.get("messages") or [{}]
        text = str(messages[-1].get("content", ""))
        return (
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.answer(text)},
                        "finish_reason": "stop",
                    }
                ],
            },
            {},
        )
