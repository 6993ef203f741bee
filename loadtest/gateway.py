"""A simulated LINE Messaging API (and chat model) for bridges to answer to.

LINE forbids load tests against its API, so a full bridge -> API path is
loaded against this small real HTTP server instead: it answers the reply,
push and loading-animation calls a bridge makes, plus an OpenAI-compatible
``/v1/chat/completions``, after a configurable latency and with a
configurable share of injected 500 errors, and counts what it got
(``GET /stats``). :class:`Gateway` decides every answer without I/O;
:func:`serve` puts it on a threading HTTP server.

Point a bridge at it with ``"line_api_base": "http://HOST:PORT"`` and
``"openclaw_url": "http://HOST:PORT/v1/chat/completions"``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "/v2/bot/message/reply"
PUSH = "/v2/bot/message/push"
LOADING = "/v2/bot/chat/loading/start"
COMPLETIONS = "/v1/chat/completions"
STATS = "/stats"
MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Answer:
    """A status and a JSON body."""

    status: int
    body: dict[str, Any]


class Gateway:
    """Decides and counts answers; thread-safe."""

    def __init__(self, error_rate: float = 0.0, rng: random.Random | None = None) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("the error rate is a share between 0 and 1")
        self.error_rate = error_rate
        self._rng = rng or random.Random()  # noqa: S311 - fault injection, not security
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def stats(self) -> dict[str, int]:
        """Answers given so far, keyed ``"PATH STATUS"``."""
        with self._lock:
            return dict(self._counts)

    def answer(self, method: str, path: str, authorization: str | None, body: bytes) -> Answer:
        """The answer to one request (GET /stats is the server's, not counted)."""
        result = self._decide(method, path, authorization, body)
        with self._lock:
            self._counts[f"{path} {result.status}"] += 1
        return result

    def _decide(self, method: str, path: str, authorization: str | None, body: bytes) -> Answer:
        if path not in (REPLY, PUSH, LOADING, COMPLETIONS):
            return Answer(404, {"message": "Not found"})
        if method != "POST":
            return Answer(405, {"message": "Method not allowed"})
        if path != COMPLETIONS and not (authorization or "").startswith("Bearer "):
            return Answer(401, {"message": "Authentication failed. No access token found"})
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return Answer(400, {"message": "The request body has 1 error(s)"})
        if not isinstance(request, dict):
            return Answer(400, {"message": "The request body has 1 error(s)"})
        with self._lock:
            injected = self._rng.random() < self.error_rate
        if injected:
            return Answer(500, {"message": "simulated error"})
        return _success(path, request)


def _success(path: str, request: dict[str, Any]) -> Answer:
    if path == COMPLETIONS:
        if not isinstance(request.get("messages"), list):
            return Answer(400, {"error": {"message": "'messages' is required"}})
        return Answer(
            200,
            {
                "id": "chatcmpl-loadtest",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(request.get("model", "loadtest")),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Thanks for your message!"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
            },
        )
    messages = request.get("messages")
    if path == LOADING:
        if not isinstance(request.get("chatId"), str):
            return Answer(400, {"message": "The request body has 1 error(s)"})
        return Answer(202, {})
    key = "replyToken" if path == REPLY else "to"
    if not isinstance(request.get(key), str) or not isinstance(messages, list) or not messages:
        return Answer(400, {"message": "The request body has 1 error(s)"})
    if len(messages) > 5:
        return Answer(400, {"message": "Size must be between 1 and 5"})
    return Answer(200, {"sentMessages": [{"id": "1", "quoteToken": "q"} for _ in messages]})


class _Handler(BaseHTTPRequestHandler):
    server: GatewayServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == STATS:
            self._send(Answer(200, {"answers": self.server.gateway.stats()}), delay=False)
        else:
            self._handle(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(Answer(413, {"message": "Request entity too large"}), delay=False)
            self.close_connection = True
            return
        self._handle(self.rfile.read(length))

    def _handle(self, body: bytes) -> None:
        answer = self.server.gateway.answer(
            self.command, self.path.split("?")[0], self.headers.get("Authorization"), body
        )
        self._send(answer, delay=True)

    def _send(self, answer: Answer, *, delay: bool) -> None:
        if delay and self.server.latency_s:
            time.sleep(self.server.latency_s)
        data = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the counts at ``/stats`` are the log."""


class GatewayServer(ThreadingHTTPServer):
    """The HTTP server around a :class:`Gateway`, one thread per connection."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], gateway: Gateway, latency_ms: float) -> None:
        super().__init__(address, _Handler)
        self.gateway = gateway
        self.latency_s = max(0.0, latency_ms) / 1000


def serve(host: str, port: int, latency_ms: float = 0.0, error_rate: float = 0.0) -> GatewayServer:
    """A bound gateway server (port 0 picks a free one); call ``serve_forever``."""
    return GatewayServer((host, port), Gateway(error_rate), latency_ms)
