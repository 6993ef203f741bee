"""Webhook ingress (PROTOCOL.md §1) against a real relay, over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    Tenant,
    async_wait_for,
    running_relay,
    webhook_body,
)

pytestmark = pytest.mark.integration

SMALL_LIMIT = 2048


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "ingress") as h:
        yield h


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """A relay whose body limit is 2 KiB."""
    with running_relay(tmp_path_factory, "small", config=f"max_body_bytes = {SMALL_LIMIT}\n") as h:
        yield h


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
def http_version(request: pytest.FixtureRequest) -> str:
    version: str = request.param
    return version


@pytest.fixture
async def client(harness: Harness, http_version: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        verify=harness.ssl, http2=http_version == "HTTP/2", timeout=TIMEOUT
    ) as c:
        yield c


@pytest.fixture
def tenant(harness: Harness) -> Tenant:
    """A fresh tenant: nothing queued, no bridge."""
    return harness.tenant("in")


@pytest.fixture(scope="module")
def accepting(harness: Harness) -> Tenant:
    """A tenant shared by tests that only check answers to valid webhooks."""
    return harness.tenant("ok")


@pytest.fixture(scope="module")
def refusing(harness: Harness) -> Tenant:
    """A tenant shared by tests whose webhooks are all refused: its queue stays empty."""
    return harness.tenant("err")


@pytest.fixture(scope="module")
def small_accepting(small: Harness) -> Tenant:
    return small.tenant("lim")


@pytest.fixture(scope="module")
def small_refusing(small: Harness) -> Tenant:
    return small.tenant("big")


def assert_error(response: httpx.Response, status: int, code: str, *secrets: str) -> None:
    """An error answer with PROTOCOL.md's status and body, echoing nothing sensitive."""
    assert response.status_code == status, response.text
    assert response.json() == {"error": code}
    raw = response.text + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
    for secret in secrets:
        assert secret not in raw


async def test_signed_webhook_is_answered_200_with_an_empty_object(
    harness: Harness, client: httpx.AsyncClient, accepting: Tenant, http_version: str
) -> None:
    body = webhook_body("hello")
    response = await client.post(
        accepting.url, content=body, headers=harness.headers(accepting, body)
    )
    assert response.http_version == http_version
    assert response.status_code == 200
    assert response.content in (b"", b"{}")
    if response.content:
        assert response.json() == {}


async def test_verify_request_with_no_events_is_answered_200_and_queues_nothing(
    harness: Harness, client: httpx.AsyncClient, tenant: Tenant, http_version: str
) -> None:
    verify = b'{"destination":"U' + b"f" * 32 + b'","events":[]}'
    response = await client.post(
        tenant.url, content=verify, headers=harness.headers(tenant, verify)
    )
    assert response.http_version == http_version
    assert response.status_code == 200
    assert harness.metric("linerelay_queue_depth", tenant=tenant.id) == 0
    # The first thing a bridge then gets is a webhook posted after the verify.
    sentinel = webhook_body("after-verify")
    response = await client.post(
        tenant.url, content=sentinel, headers=harness.headers(tenant, sentinel)
    )
    assert response.status_code == 200
    assert harness.metric("linerelay_queue_depth", tenant=tenant.id) == 1
    async with await Bridge.open(harness, tenant.token) as bridge:
        frame = await bridge.webhook()
        assert frame["body"].encode() == sentinel
        await bridge.ack(frame)


async def test_missing_signature_is_refused_401(
    client: httpx.AsyncClient, refusing: Tenant, http_version: str
) -> None:
    response = await client.post(refusing.url, content=webhook_body("unsigned"))
    assert response.http_version == http_version
    assert_error(response, 401, "invalid_signature")


@pytest.mark.parametrize("how", ["other-secret", "other-body", "not-base64", "empty", "truncated"])
async def test_wrong_signature_is_refused_401_and_not_echoed(
    harness: Harness, client: httpx.AsyncClient, refusing: Tenant, how: str
) -> None:
    body = webhook_body("forged")
    signature = {
        "other-secret": harness.sign("not-the-" + refusing.secret, body),
        "other-body": harness.sign(refusing.secret, body + b" "),
        "not-base64": harness.remember("!!" + harness.sign(refusing.secret, body)[2:]),
        "empty": "",
        "truncated": harness.remember(harness.sign(refusing.secret, body)[:-4]),
    }[how]
    response = await client.post(
        refusing.url, content=body, headers={"x-line-signature": signature}
    )
    assert_error(response, 401, "invalid_signature", *([signature] if signature else []))
    assert harness.metric("linerelay_queue_depth", tenant=refusing.id) == 0


def test_http_1_0_webhook_is_accepted(harness: Harness, accepting: Tenant) -> None:
    """LINE's webhook client may speak HTTP/1.0 (no keep-alive, no Host needed)."""
    body = webhook_body("http-1.0")
    request = (
        f"POST /webhook/{accepting.id} HTTP/1.0\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Line-Signature: {harness.sign(accepting.secret, body)}\r\n\r\n"
    ).encode() + body
    with (
        socket.create_connection(("127.0.0.1", harness.relay.port), timeout=TIMEOUT) as raw,
        harness.ssl.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"200", answer
    assert rest.endswith(b"\r\n\r\n{}") or rest.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("name", ["X-LINE-SIGNATURE", "X-Line-Signature", "x-LiNe-SiGnAtUrE"])
async def test_signature_header_name_is_read_case_insensitively(
    harness: Harness, client: httpx.AsyncClient, accepting: Tenant, name: str
) -> None:
    body = webhook_body("odd-case")
    response = await client.post(
        accepting.url, content=body, headers={name: harness.sign(accepting.secret, body)}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"events": [], "x": "\xff\xfe"}', id="not-utf8"),
        pytest.param(b"\xef\xbb\xbf" + b"\x80" + b'{"events":[]}', id="bad-utf8-after-bom"),
        pytest.param(b"destination=U1&events=[]", id="not-json"),
        pytest.param(b'{"events": [', id="truncated-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b'[{"events": []}]', id="array"),
        pytest.param(b'"events"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"destination": "U1"}', id="no-events"),
        pytest.param(b'{"events": {"type": "message"}}', id="events-object"),
        pytest.param(b'{"events": "[]"}', id="events-string"),
        pytest.param(b'{"events": null}', id="events-null"),
    ],
)
async def test_malformed_body_is_refused_400(
    harness: Harness, client: httpx.AsyncClient, refusing: Tenant, body: bytes
) -> None:
    signature = harness.sign(refusing.secret, body)
    response = await client.post(
        refusing.url, content=body, headers={"x-line-signature": signature}
    )
    assert_error(response, 400, "malformed_body", signature, refusing.secret)
    assert harness.metric("linerelay_queue_depth", tenant=refusing.id) == 0


@pytest.mark.parametrize("tenant_id", ["nobody-here", "UPPER", "a" * 64, "-dash"])
async def test_unknown_tenant_is_refused_404(
    harness: Harness, client: httpx.AsyncClient, refusing: Tenant, tenant_id: str
) -> None:
    body = webhook_body("lost")
    # Signed with a real tenant's secret: it must not matter.
    signature = harness.sign(refusing.secret, body)
    response = await client.post(
        harness.relay.webhook_url(tenant_id), content=body, headers={"x-line-signature": signature}
    )
    assert_error(response, 404, "unknown_tenant", signature)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_methods_other_than_post_are_refused_405(
    harness: Harness, client: httpx.AsyncClient, refusing: Tenant, method: str
) -> None:
    body = webhook_body("wrong-method")
    signature = harness.sign(refusing.secret, body)
    content = None if method == "GET" else body
    response = await client.request(
        method, refusing.url, content=content, headers={"x-line-signature": signature}
    )
    assert response.status_code == 405
    assert signature not in response.text
    assert harness.metric("linerelay_queue_depth", tenant=refusing.id) == 0


async def test_retry_with_identical_bytes_is_answered_200_and_queued_once(
    harness: Harness, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = webhook_body("retried")
    headers = harness.headers(tenant, body)
    for _ in range(3):
        response = await client.post(tenant.url, content=body, headers=headers)
        assert response.status_code == 200
    sentinel = webhook_body("sentinel")
    assert (
        await client.post(tenant.url, content=sentinel, headers=harness.headers(tenant, sentinel))
    ).status_code == 200
    async with await Bridge.open(harness, tenant.token) as bridge:
        frames = await bridge.take(2)
        assert [f["body"].encode() for f in frames] == [body, sentinel]


async def test_line_redelivery_with_different_bytes_is_queued_as_a_new_webhook(
    harness: Harness, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    original = webhook_body("same-event")
    event = json.loads(original)
    event["events"][0]["deliveryContext"]["isRedelivery"] = True
    redelivery = json.dumps(event, indent=1).encode()
    assert redelivery != original
    for body in (original, redelivery):
        response = await client.post(
            tenant.url, content=body, headers=harness.headers(tenant, body)
        )
        assert response.status_code == 200
    async with await Bridge.open(harness, tenant.token) as bridge:
        frames = await bridge.take(2)
        assert [f["body"].encode() for f in frames] == [original, redelivery]
        assert frames[0]["id"] != frames[1]["id"]


async def test_concurrent_identical_retries_are_all_answered_200_and_queued_once(
    harness: Harness, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = webhook_body("raced")
    headers = harness.headers(tenant, body)
    responses = await asyncio.gather(
        *(client.post(tenant.url, content=body, headers=headers) for _ in range(6))
    )
    assert [r.status_code for r in responses] == [200] * 6
    sentinel = webhook_body("sentinel")
    response = await client.post(
        tenant.url, content=sentinel, headers=harness.headers(tenant, sentinel)
    )
    assert response.status_code == 200
    async with await Bridge.open(harness, tenant.token) as bridge:
        frames = await bridge.take(2)
        assert [f["body"].encode() for f in frames] == [body, sentinel]


async def test_body_just_under_the_default_limit_is_accepted_and_relayed_intact(
    harness: Harness, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = padded_body(1024 * 1024 - 1)
    response = await client.post(tenant.url, content=body, headers=harness.headers(tenant, body))
    assert response.status_code == 200
    async with await Bridge.open(harness, tenant.token) as bridge:
        frame = await bridge.webhook()
        await bridge.ack(frame)
    assert frame["body"].encode() == body


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_operator_endpoints_are_404_on_the_public_listener_and_200_on_admin(
    harness: Harness, client: httpx.AsyncClient, path: str
) -> None:
    public = await client.get(harness.relay.base_url + path)
    assert public.status_code == 404
    async with httpx.AsyncClient(timeout=TIMEOUT) as admin_client:
        admin = await admin_client.get(harness.relay.admin_url + path)
    assert admin.status_code == 200


async def test_metrics_report_ack_time_outcomes_and_connected_bridges(
    harness: Harness, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    accepted = harness.metric("linerelay_webhooks_total", outcome="accepted")
    refused = harness.metric("linerelay_webhooks_total", outcome="invalid_signature")
    observed = harness.metric("linerelay_webhook_ack_seconds_count")
    body = webhook_body("counted")
    assert (
        await client.post(tenant.url, content=body, headers=harness.headers(tenant, body))
    ).status_code == 200
    assert (
        await client.post(tenant.url, content=body, headers={"x-line-signature": "AAAA"})
    ).status_code == 401
    assert harness.metric("linerelay_webhooks_total", outcome="accepted") == accepted + 1
    assert harness.metric("linerelay_webhooks_total", outcome="invalid_signature") == refused + 1
    assert harness.metric("linerelay_webhook_ack_seconds_count") == observed + 2
    # Buckets around the one-second budget.
    assert harness.metric("linerelay_webhook_ack_seconds_bucket", le="1.0") >= observed + 2

    async def none_left() -> bool:
        return harness.metric("linerelay_bridges_connected") == 0

    # Earlier tests' bridges may still be closing.
    await async_wait_for(none_left, "no bridge connected")
    async with await Bridge.open(harness, tenant.token) as bridge:

        async def one_more() -> bool:
            return harness.metric("linerelay_bridges_connected") == 1

        await async_wait_for(one_more, "linerelay_bridges_connected to count the bridge")
        await bridge.ack(await bridge.webhook())

    await async_wait_for(none_left, "linerelay_bridges_connected to drop the bridge")


# -- the body limit (a relay with max_body_bytes = 2048) ----------------------


def padded_body(size: int) -> bytes:
    """A valid webhook body of exactly ``size`` bytes."""
    head = b'{"destination":"U1","events":[{"type":"follow"}],"pad":"'
    tail = b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
async def test_body_at_the_limit_is_accepted(
    small: Harness, small_accepting: Tenant, http2: bool
) -> None:
    tenant = small_accepting
    body = padded_body(SMALL_LIMIT)
    async with httpx.AsyncClient(verify=small.ssl, http2=http2, timeout=TIMEOUT) as c:
        response = await c.post(tenant.url, content=body, headers=small.headers(tenant, body))
    assert response.status_code == 200


@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
async def test_body_over_the_limit_is_refused_413(
    small: Harness, small_refusing: Tenant, http2: bool, streamed: bool
) -> None:
    tenant = small_refusing
    body = padded_body(SMALL_LIMIT + 1)
    signature = small.sign(tenant.secret, body)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    async with httpx.AsyncClient(verify=small.ssl, http2=http2, timeout=TIMEOUT) as c:
        response = await c.post(
            tenant.url,
            content=chunks() if streamed else body,
            headers={"x-line-signature": signature},
        )
    assert_error(response, 413, "body_too_large", signature)
    assert small.metric("linerelay_queue_depth", tenant=tenant.id) == 0


@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
async def test_body_far_over_the_limit_is_refused_413(
    small: Harness, small_refusing: Tenant, http2: bool
) -> None:
    body = padded_body(100 * SMALL_LIMIT)
    signature = small.sign(small_refusing.secret, body)
    async with httpx.AsyncClient(verify=small.ssl, http2=http2, timeout=TIMEOUT) as c:
        response = await c.post(
            small_refusing.url, content=body, headers={"x-line-signature": signature}
        )
    assert_error(response, 413, "body_too_large", signature)


def read_response(tls: ssl.SSLSocket) -> bytes:
    """One whole answer read off a raw TLS socket (JSON body, plain or chunked)."""
    data = b""
    while not (data.endswith(b"0\r\n\r\n") or (data.endswith(b"}") and b"\r\n\r\n" in data)):
        try:
            chunk = tls.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_an_early_413_announces_close_or_leaves_the_connection_usable(
    small: Harness, small_refusing: Tenant, small_accepting: Tenant
) -> None:
    def request(tenant: Tenant, body: bytes) -> tuple[bytes, bytes]:
        head = (
            f"POST /webhook/{tenant.id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Line-Signature: {small.sign(tenant.secret, body)}\r\n\r\n"
        ).encode()
        return head, body

    big_head, big_body = request(small_refusing, padded_body(SMALL_LIMIT + 1000))
    with (
        socket.create_connection(("127.0.0.1", small.relay.port), timeout=TIMEOUT) as raw,
        small.ssl.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # Headers first, as most clients write them: the relay answers from Content-Length.
        tls.sendall(big_head)
        refused = read_response(tls)
        assert refused.startswith(b"HTTP/1.1 413 ")
        if b"\r\nconnection: close\r\n" in refused.lower():
            return
        next_head, next_body = request(small_accepting, webhook_body("next"))
        with contextlib.suppress(OSError):
            tls.sendall(big_body + next_head + next_body)
        answer = read_response(tls)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


async def test_an_http2_413_leaves_the_connection_usable(
    small: Harness, small_refusing: Tenant, small_accepting: Tenant
) -> None:
    async with httpx.AsyncClient(verify=small.ssl, http2=True, timeout=TIMEOUT) as c:
        big = padded_body(SMALL_LIMIT + 1000)
        refused = await c.post(
            small_refusing.url, content=big, headers=small.headers(small_refusing, big)
        )
        assert refused.status_code == 413
        body = webhook_body("after-413")
        response = await c.post(
            small_accepting.url, content=body, headers=small.headers(small_accepting, body)
        )
    assert response.status_code == 200


# -- the acknowledgement deadline -------------------------------------------------


async def test_webhook_not_committed_by_the_deadline_gets_503_and_its_retry_is_not_lost(
    harness: Harness, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = webhook_body("slow-disk")
    headers = harness.headers(tenant, body)
    # Another process (a backup, say) holds the store's write lock past the
    # relay's 800 ms acknowledgement deadline.
    store = sqlite3.connect(harness.relay.state.store, isolation_level=None)
    try:
        store.execute("BEGIN IMMEDIATE")
        first = await client.post(tenant.url, content=body, headers=headers)
        store.execute("ROLLBACK")
    finally:
        store.close()
    assert first.status_code == 503
    assert first.json() == {"error": "overloaded"}
    assert int(first.headers["retry-after"]) >= 1
    assert headers["x-line-signature"] not in first.text

    async def retried() -> bool:
        # LINE retries the same bytes: once the first copy commits, a known duplicate.
        response = await client.post(tenant.url, content=body, headers=headers)
        return response.status_code == 200

    await async_wait_for(retried, "a retry answered 200")
    sentinel = webhook_body("sentinel")
    response = await client.post(
        tenant.url, content=sentinel, headers=harness.headers(tenant, sentinel)
    )
    assert response.status_code == 200
    async with await Bridge.open(harness, tenant.token) as bridge:
        frames = await bridge.take(2)
    assert [f["body"].encode() for f in frames] == [body, sentinel]
    assert harness.metric("linerelay_webhooks_total", outcome="overloaded") >= 1


@pytest.mark.parametrize(
    ("method", "path_tenant"), [("POST", "nobody-here"), ("PUT", None)], ids=["404", "405"]
)
def test_an_early_error_leaves_the_keep_alive_connection_usable(
    small: Harness, small_accepting: Tenant, method: str, path_tenant: str | None
) -> None:
    """Answered before its body was read, a request would cost the client its next one."""
    target = path_tenant or small_accepting.id
    bad_body = b'{"events": [{"type": "follow"}]}'
    good_body = webhook_body("after-early-error")
    head = (
        f"{method} /webhook/{target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(bad_body)}\r\n\r\n"
    ).encode()
    good = (
        f"POST /webhook/{small_accepting.id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(good_body)}\r\n"
        f"x-line-signature: {small.sign(small_accepting.secret, good_body)}\r\n\r\n"
    ).encode()
    with (
        socket.create_connection(("127.0.0.1", small.relay.port), timeout=TIMEOUT) as raw,
        small.ssl.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # Headers, then the body a moment later, as a client's separate writes
        # may arrive: an answer sent before the body would close the connection.
        tls.sendall(head)
        time.sleep(0.3)
        tls.sendall(bad_body)
        first = read_response(tls)
        assert first.split(b" ", 2)[1] in (b"404", b"405")
        tls.sendall(good + good_body)
        assert read_response(tls).startswith(b"HTTP/1.1 200 ")
