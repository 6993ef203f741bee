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

It also plays a channel's webhook settings, for ``linerelay tenant
connect-line`` (appliance/line_channel.py has LINE's shapes): ``PUT`` and
``GET /v2/bot/channel/webhook/endpoint`` keep the one webhook URL of its one
channel (HTTPS only, as LINE), and ``POST /v2/bot/channel/webhook/test``
really posts LINE's verification webhook (``"events": []``), signed with the
channel secret the gateway was given, to that URL, and answers LINE's verdict
``{"success", "timestamp", "statusCode", "reason", "detail"}``. The answer
to a test is a :class:`Probe` for the server to carry out; :meth:`Gateway.judge`
turns what came back into the verdict. Error messages are the gateway's own
wording, in LINE's ``{"message", "details"}`` shape.
"""

from __future__ import annotations

import hmac
import json
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx

from appliance.signature import sign

REPLY = "/v2/bot/message/reply"
PUSH = "/v2/bot/message/push"
LOADING = "/v2/bot/chat/loading/start"
COMPLETIONS = "/v1/chat/completions"
WEBHOOK_ENDPOINT = "/v2/bot/channel/webhook/endpoint"
WEBHOOK_TEST = "/v2/bot/channel/webhook/test"
STATS = "/stats"
MAX_BODY = 1 << 20
#: The bot's user id LINE puts in ``destination`` (this gateway's one channel).
DESTINATION = "U" + "0" * 31 + "1"
#: LINE's longest webhook URL.
MAX_ENDPOINT_CHARS = 500
#: Seconds the verification webhook may take before the verdict is REQUEST_TIMEOUT.
PROBE_TIMEOUT = 10.0
#: The methods each path answers.
_METHODS = {
    REPLY: ("POST",),
    PUSH: ("POST",),
    LOADING: ("POST",),
    COMPLETIONS: ("POST",),
    WEBHOOK_ENDPOINT: ("GET", "PUT"),
    WEBHOOK_TEST: ("POST",),
}
#: What LINE's webhooks say they are.
WEBHOOK_USER_AGENT = "LineBotWebhook/2.0"
#: LINE's answer to a channel access token it does not know.
REFUSED_ACCESS = (
    "Authentication failed due to the following reason: invalid token. "
    "Confirm that the access token in the authorization header is valid."
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A status and a JSON body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Probe:
    """LINE's verification webhook, for the server to post: where, what, signed how."""

    url: str
    body: bytes
    signature: str


@dataclass(frozen=True, slots=True)
class Reached:
    """What posting a :class:`Probe` came to: the answer's status, or why none came."""

    status: int | None
    #: With no status: "timeout", or the connection failure.
    failure: str = ""


class Gateway:
    """Decides and counts answers; thread-safe.

    ``channel_secret`` signs the verification webhooks of the webhook test;
    without one, the test answers 500 saying so. ``access_token``: the one
    channel access token taken (401 for others, as LINE answers a bad one);
    without one, any Bearer token is.
    """

    def __init__(
        self,
        error_rate: float = 0.0,
        rng: random.Random | None = None,
        channel_secret: bytes | None = None,
        access_token: str | None = None,
    ) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("the error rate is a share between 0 and 1")
        self.error_rate = error_rate
        self._rng = rng or random.Random()  # noqa: S311 - fault injection, not security
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._secret = channel_secret
        self._access_token = access_token
        #: The channel's webhook URL, as the last PUT set it.
        self.endpoint = ""

    def stats(self) -> dict[str, int]:
        """Answers given so far, keyed ``"PATH STATUS"``."""
        with self._lock:
            return dict(self._counts)

    def answer(
        self, method: str, path: str, authorization: str | None, body: bytes
    ) -> Answer | Probe:
        """The answer to one request (GET /stats is the server's, not counted), or
        for a webhook test the :class:`Probe` to post (counted by :meth:`judge`)."""
        result = self._decide(method, path, authorization, body)
        if isinstance(result, Answer):
            self._count(path, result.status)
        return result

    def judge(self, reached: Reached, now: float | None = None) -> Answer:
        """LINE's verdict on a webhook test whose probe came to ``reached``."""
        stamp = time.time() if now is None else now
        timestamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
        timestamp += f".{int(stamp * 1000) % 1000:03d}Z"
        status = reached.status
        if status is None:
            reason = "REQUEST_TIMEOUT" if reached.failure == "timeout" else "COULD_NOT_CONNECT"
            success, code, detail = False, 0, reached.failure
        else:
            reason = "OK" if status == 200 else "ERROR_STATUS_CODE"
            success, code, detail = status == 200, status, str(status)
        verdict = {"success": success, "timestamp": timestamp, "statusCode": code}
        verdict.update(reason=reason, detail=detail)
        self._count(WEBHOOK_TEST, 200)
        return Answer(200, verdict)

    def _count(self, path: str, status: int) -> None:
        with self._lock:
            self._counts[f"{path} {status}"] += 1

    def _decide(
        self, method: str, path: str, authorization: str | None, body: bytes
    ) -> Answer | Probe:
        if path not in _METHODS:
            return Answer(404, {"message": "Not found"})
        if method not in _METHODS[path]:
            return Answer(405, {"message": "Method not allowed"})
        if path != COMPLETIONS and not (authorization or "").startswith("Bearer "):
            return Answer(401, {"message": "Authentication failed. No access token found"})
        if (
            path != COMPLETIONS
            and self._access_token is not None
            and not hmac.compare_digest(authorization or "", f"Bearer {self._access_token}")
        ):
            return Answer(401, {"message": REFUSED_ACCESS})
        if method == "GET":
            return Answer(200, {"endpoint": self.endpoint, "active": bool(self.endpoint)})
        try:
            # LINE's webhook test may come without a body.
            request = json.loads(body) if body or path != WEBHOOK_TEST else {}
        except (ValueError, RecursionError):
            return Answer(400, {"message": "The request body has 1 error(s)"})
        if not isinstance(request, dict):
            return Answer(400, {"message": "The request body has 1 error(s)"})
        with self._lock:
            injected = self._rng.random() < self.error_rate
        if injected:
            return Answer(500, {"message": "simulated error"})
        if path == WEBHOOK_ENDPOINT:
            return self._set_endpoint(request)
        if path == WEBHOOK_TEST:
            return self._probe(request)
        return _success(path, request)

    def _set_endpoint(self, request: dict[str, Any]) -> Answer:
        url = request.get("endpoint")
        refusal = _endpoint_refusal(url)
        if refusal is not None:
            return refusal
        assert isinstance(url, str)
        with self._lock:
            self.endpoint = url
        return Answer(200, {})

    def _probe(self, request: dict[str, Any]) -> Answer | Probe:
        url = request.get("endpoint", self.endpoint)
        if not url:
            return Answer(400, {"message": "The webhook URL is not set"})
        refusal = _endpoint_refusal(url)
        if refusal is not None:
            return refusal
        if self._secret is None:
            return Answer(500, {"message": "the gateway has no channel secret (--channel-secret)"})
        body = json.dumps({"destination": DESTINATION, "events": []}).encode()
        return Probe(str(url), body, sign(self._secret, body))


def _endpoint_refusal(url: object) -> Answer | None:
    """LINE's refusal of ``url`` as a webhook URL, or None if LINE would take it."""
    if not isinstance(url, str):
        return _invalid("endpoint", "must be specified")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return _invalid("endpoint", "must be an HTTPS URL")
    if len(url) > MAX_ENDPOINT_CHARS:
        return _invalid("endpoint", f"size must be at most {MAX_ENDPOINT_CHARS}")
    return None


def _invalid(prop: str, message: str) -> Answer:
    return Answer(
        400,
        {
            "message": "The request body has 1 error(s)",
            "details": [{"message": message, "property": prop}],
        },
    )


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

    do_PUT = do_POST

    def _handle(self, body: bytes) -> None:
        gateway = self.server.gateway
        answer = gateway.answer(
            self.command, self.path.split("?")[0], self.headers.get("Authorization"), body
        )
        if isinstance(answer, Probe):
            answer = gateway.judge(post_probe(answer, self.server.verify))
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


def post_probe(probe: Probe, verify: ssl.SSLContext | bool = True) -> Reached:
    """Post ``probe`` as LINE posts a webhook; what came of it.

    ``verify``: the TLS context that judges the webhook URL's certificate
    (default: the system's roots, as LINE trusts public CAs only).
    """
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": WEBHOOK_USER_AGENT,
        "x-line-signature": probe.signature,
    }
    try:
        with httpx.Client(verify=verify, timeout=PROBE_TIMEOUT) as client:
            response = client.post(probe.url, content=probe.body, headers=headers)
    except httpx.TimeoutException:
        return Reached(None, "timeout")
    except httpx.HTTPError as exc:
        return Reached(None, f"{type(exc).__name__}: {exc}")
    return Reached(response.status_code)


class GatewayServer(ThreadingHTTPServer):
    """The HTTP server around a :class:`Gateway`, one thread per connection.

    ``ca_file``: the root the webhook test trusts for the relay's certificate
    (a development PKI's); default: the system's roots.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        gateway: Gateway,
        latency_ms: float,
        ca_file: str | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.gateway = gateway
        self.latency_s = max(0.0, latency_ms) / 1000
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )


def serve(
    host: str,
    port: int,
    latency_ms: float = 0.0,
    error_rate: float = 0.0,
    channel_secret: bytes | None = None,
    ca_file: str | None = None,
    access_token: str | None = None,
) -> GatewayServer:
    """A bound gateway server (port 0 picks a free one); call ``serve_forever``."""
    gateway = Gateway(error_rate, channel_secret=channel_secret, access_token=access_token)
    return GatewayServer((host, port), gateway, latency_ms, ca_file)
