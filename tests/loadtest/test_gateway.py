"""The simulated Messaging API answers like LINE's and injects the configured faults."""

from __future__ import annotations

import json
import random
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from loadtest.gateway import COMPLETIONS, LOADING, PUSH, REPLY, Gateway
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
