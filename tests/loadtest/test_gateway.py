"""The simulated Messaging API answers like LINE's and injects the configured faults."""

from __future__ import annotations

import json
import random
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import trustme

from appliance.signature import verify
from loadtest.gateway import (
    COMPLETIONS,
    DESTINATION,
    LOADING,
    PUSH,
    REPLY,
    WEBHOOK_ENDPOINT,
    WEBHOOK_TEST,
    Answer,
    Gateway,
    Probe,
    Reached,
    serve,
)
from tests.support.processes import stop
from tests.support.relay import LINERELAY

BEARER = "Bearer token"


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_reply_push_and_loading_are_answered_as_line_does() -> None:
    g = Gateway()
    reply = g.answer(
        "POST",
        REPLY,
        BEARER,
        body({"replyToken": "r", "messages": [{"type": "text", "text": "x"}]}),
    )
    push = g.answer(
        "POST", PUSH, BEARER, body({"to": "U1", "messages": [{"type": "text", "text": "x"}]})
    )
    loading = g.answer("POST", LOADING, BEARER, body({"chatId": "U1", "loadingSeconds": 5}))
    assert (reply.status, push.status, loading.status) == (200, 200, 202)
    assert g.stats() == {f"{REPLY} 200": 1, f"{PUSH} 200": 1, f"{LOADING} 202": 1}


def test_chat_completions_answer_in_openai_shape() -> None:
    answer = Gateway().answer(
        "POST", COMPLETIONS, None, body({"messages": [{"role": "user", "content": "hi"}]})
    )
    assert answer.status == 200
    assert answer.body["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    ("path", "auth", "payload", "status"),
    [
        (REPLY, None, {"replyToken": "r", "messages": [{}]}, 401),
        (REPLY, BEARER, {"messages": [{}]}, 400),
        (REPLY, BEARER, {"replyToken": "r", "messages": [{}] * 6}, 400),
        (LOADING, BEARER, {}, 400),
        ("/v2/bot/unknown", BEARER, {}, 404),
    ],
)
def test_bad_calls_get_line_errors(
    path: str, auth: str | None, payload: object, status: int
) -> None:
    assert Gateway().answer("POST", path, auth, body(payload)).status == status


def test_error_rate_injects_that_share_of_500s() -> None:
    g = Gateway(error_rate=0.3, rng=random.Random(3))
    statuses = [
        g.answer("POST", LOADING, BEARER, body({"chatId": "U"})).status for _ in range(2000)
    ]
    assert 0.25 < statuses.count(500) / 2000 < 0.35
    assert (
        Gateway(error_rate=1.0).answer("POST", LOADING, BEARER, body({"chatId": "U"})).status == 500
    )


def test_error_rate_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        Gateway(error_rate=1.5)


@pytest.mark.integration
def test_gateway_command_serves_with_latency_and_counts_what_it_got() -> None:
    process = subprocess.Popen(
        [LINERELAY, "loadtest", "gateway", "--listen", "127.0.0.1:0", "--latency-ms", "200"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base = json.loads(process.stdout.readline())["gateway"]
        call = urllib.request.Request(
            base + LOADING,
            data=body({"chatId": "U1", "loadingSeconds": 5}),
            headers={"Authorization": BEARER, "Content-Type": "application/json"},
        )
        started = time.monotonic()
        with urllib.request.urlopen(call, timeout=10) as answer:
            assert answer.status == 202
        assert time.monotonic() - started >= 0.2
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(base + REPLY, data=b"{}"), timeout=10)
        assert refused.value.code == 401
        with urllib.request.urlopen(base + "/stats", timeout=10) as answer:
            stats = json.loads(answer.read())
        assert stats == {"answers": {f"{LOADING} 202": 1, f"{REPLY} 401": 1}}
    finally:
        stop(process)


# -- a channel's webhook settings (for `linerelay tenant connect-line`) ----------

SECRET = b"0123456789abcdef0123456789abcdef"
URL = "https://relay.example.com/webhook/shop-42"


def test_the_webhook_url_is_set_and_read_back_as_line_does() -> None:
    g = Gateway()
    assert g.answer("GET", WEBHOOK_ENDPOINT, BEARER, b"") == Answer(
        200, {"endpoint": "", "active": False}
    )
    assert g.answer("PUT", WEBHOOK_ENDPOINT, BEARER, body({"endpoint": URL})) == Answer(200, {})
    assert g.answer("GET", WEBHOOK_ENDPOINT, BEARER, b"") == Answer(
        200, {"endpoint": URL, "active": True}
    )


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({"endpoint": "http://relay.example.com/webhook/a"}, "HTTPS"),
        ({"endpoint": "https:///webhook/a"}, "HTTPS"),
        ({"endpoint": "https://relay.example.com/" + "a" * 500}, "500"),
        ({"endpoint": 42}, "specified"),
        ({}, "specified"),
    ],
)
def test_a_webhook_url_line_would_refuse_is_refused_and_the_old_one_kept(
    payload: object, why: str
) -> None:
    g = Gateway()
    g.answer("PUT", WEBHOOK_ENDPOINT, BEARER, body({"endpoint": URL}))
    refused = g.answer("PUT", WEBHOOK_ENDPOINT, BEARER, body(payload))
    assert isinstance(refused, Answer)
    assert refused.status == 400
    assert why in refused.body["details"][0]["message"]
    assert refused.body["details"][0]["property"] == "endpoint"
    assert g.endpoint == URL


@pytest.mark.parametrize(
    ("method", "path", "auth", "status"),
    [
        ("PUT", WEBHOOK_ENDPOINT, None, 401),
        ("POST", WEBHOOK_ENDPOINT, BEARER, 405),
        ("GET", WEBHOOK_TEST, BEARER, 405),
        ("POST", WEBHOOK_TEST, None, 401),
    ],
)
def test_webhook_settings_calls_are_checked_like_the_rest(
    method: str, path: str, auth: str | None, status: int
) -> None:
    answer = Gateway(channel_secret=SECRET).answer(method, path, auth, body({"endpoint": URL}))
    assert isinstance(answer, Answer)
    assert answer.status == status


def test_the_webhook_test_posts_a_verification_webhook_signed_with_the_channel_secret() -> None:
    g = Gateway(channel_secret=SECRET)
    g.answer("PUT", WEBHOOK_ENDPOINT, BEARER, body({"endpoint": URL}))
    probe = g.answer("POST", WEBHOOK_TEST, BEARER, b"")
    assert isinstance(probe, Probe)
    assert probe.url == URL
    assert json.loads(probe.body) == {"destination": DESTINATION, "events": []}
    assert verify(SECRET, probe.body, probe.signature)
    # A URL given in the call is tested instead of the one set.
    other = g.answer("POST", WEBHOOK_TEST, BEARER, body({"endpoint": URL + "x"}))
    assert isinstance(other, Probe)
    assert other.url == URL + "x"


def test_the_webhook_test_needs_a_url_and_a_secret() -> None:
    unset = Gateway(channel_secret=SECRET).answer("POST", WEBHOOK_TEST, BEARER, b"")
    assert isinstance(unset, Answer)
    assert unset.status == 400
    g = Gateway()
    g.answer("PUT", WEBHOOK_ENDPOINT, BEARER, body({"endpoint": URL}))
    no_secret = g.answer("POST", WEBHOOK_TEST, BEARER, b"")
    assert isinstance(no_secret, Answer)
    assert no_secret.status == 500
    assert "channel secret" in no_secret.body["message"]


@pytest.mark.parametrize(
    ("reached", "success", "code", "reason", "detail"),
    [
        (Reached(200), True, 200, "OK", "200"),
        (Reached(401), False, 401, "ERROR_STATUS_CODE", "401"),
        (Reached(503), False, 503, "ERROR_STATUS_CODE", "503"),
        (Reached(None, "timeout"), False, 0, "REQUEST_TIMEOUT", "timeout"),
        (
            Reached(None, "ConnectError: refused"),
            False,
            0,
            "COULD_NOT_CONNECT",
            "ConnectError: refused",
        ),
    ],
)
def test_the_verdict_is_in_line_s_shape(
    reached: Reached, success: bool, code: int, reason: str, detail: str
) -> None:
    g = Gateway()
    verdict = g.judge(reached, now=1601444300.031)
    assert verdict == Answer(
        200,
        {
            "success": success,
            "timestamp": "2020-09-30T05:38:20.031Z",
            "statusCode": code,
            "reason": reason,
            "detail": detail,
        },
    )
    assert g.stats() == {f"{WEBHOOK_TEST} 200": 1}


class Target:
    """A tiny real HTTPS server standing in for a relay: answers ``status``, records requests."""

    def __init__(self, ca: trustme.CA, status: int) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                target.requests.append((dict(self.headers), data))
                self.send_response(target.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}/webhook/shop-42"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def call(base: str, method: str, path: str, payload: object = None) -> tuple[int, object]:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if payload is None else body(payload),
        headers={"Authorization": BEARER, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.integration
@pytest.mark.parametrize(("status", "success"), [(200, True), (401, False)])
def test_the_gateway_server_really_posts_the_verification_webhook(
    tmp_path: Path, status: int, success: bool
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    target = Target(ca, status)
    server = serve("127.0.0.1", 0, channel_secret=SECRET, ca_file=str(ca_file))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert call(base, "PUT", WEBHOOK_ENDPOINT, {"endpoint": target.url}) == (200, {})
        code, verdict = call(base, "POST", WEBHOOK_TEST)
    finally:
        server.shutdown()
        server.server_close()
        target.close()
    assert code == 200
    assert isinstance(verdict, dict)
    assert (verdict["success"], verdict["statusCode"]) == (success, status)
    ((headers, sent),) = target.requests
    assert json.loads(sent) == {"destination": DESTINATION, "events": []}
    assert verify(SECRET, sent, headers["x-line-signature"])
    assert headers["User-Agent"] == "LineBotWebhook/2.0"


@pytest.mark.integration
def test_a_relay_whose_certificate_the_gateway_does_not_trust_is_not_reached(
    tmp_path: Path,
) -> None:
    target = Target(trustme.CA(), 200)
    server = serve("127.0.0.1", 0, channel_secret=SECRET)  # the system's roots only, as LINE
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        code, verdict = call(base, "POST", WEBHOOK_TEST, {"endpoint": target.url})
    finally:
        server.shutdown()
        server.server_close()
        target.close()
    assert code == 200
    assert isinstance(verdict, dict)
    assert (verdict["success"], verdict["reason"]) == (False, "COULD_NOT_CONNECT")
    assert "certificate" in verdict["detail"].lower()
    assert target.requests == []


def test_with_an_access_token_set_any_other_is_refused_as_line_refuses_it() -> None:
    g = Gateway(access_token="right")
    refused = g.answer("GET", WEBHOOK_ENDPOINT, "Bearer wrong", b"")
    assert isinstance(refused, Answer)
    assert refused.status == 401
    assert "invalid token" in refused.body["message"]
    assert g.answer("GET", WEBHOOK_ENDPOINT, "Bearer right", b"") == Answer(
        200, {"endpoint": "", "active": False}
    )
    # The chat model is no LINE API: the channel's token is not asked for there.
    chat = g.answer("POST", COMPLETIONS, None, body({"messages": []}))
    assert isinstance(chat, Answer)
    assert chat.status == 200


@pytest.mark.integration
@pytest.mark.parametrize("option", ["--channel-secret-file", "--ca", "--channel-access-token-file"])
def test_gateway_command_with_an_unreadable_file_exits_2(option: str) -> None:
    result = subprocess.run(
        [LINERELAY, "loadtest", "gateway", option, "/nonexistent/file"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "linerelay loadtest gateway:" in result.stderr
    assert "Traceback" not in result.stderr
