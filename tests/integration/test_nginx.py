"""nginx in front of the relay (issue 13 item 4, docs/reverse-proxy.md).

The nginx is Debian's, started by the test on free ports with
deploy/nginx/linerelay.conf itself, its paths and ports substituted
(tests/support/nginx.py: an edit of the example that it does not follow
fails instead of drifting). Behind it, a real relay with
``public_tls = false`` on a Unix socket; in front, real clients over
HTTP/1.1 and HTTP/2, python-websockets bridges, and ``linerelay
conformance``. Clients bind to their own loopback addresses (127.0.0.3, ...)
so the address the relay believes can be told from any other.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from appliance.signature import sign
from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    Tenant,
    running_relay,
    wait_for,
    webhook_body,
)
from tests.support.nginx import NGINX, Nginx, start_nginx
from tests.support.processes import stop
from tests.support.relay import LINERELAY, free_port
from tests.support.tenants import add_tenant
from tls import pki as tls_pki

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(NGINX).exists(), reason="nginx is not installed (apt-get install nginx)"
    ),
]

CLIENT = "127.0.0.3"  # the test's clients, as nginx sees them
EXPIRY_METRIC = "linerelay_tls_certificate_expiry_timestamp_seconds"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls_pki.DevPKI:
    """nginx's certificate: the relay's dev PKI builder, for localhost and 127.0.0.1."""
    return tls_pki.create(tmp_path_factory.mktemp("pki"), ["localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """The relay behind nginx, as docs/reverse-proxy.md configures it."""
    sock = tmp_path_factory.mktemp("sock") / "public.sock"
    config = (
        f'public_tls = false\nlisten = "unix:{sock}"\ntrusted_proxies = ["unix"]\n'
        "bridge_auth_burst = 3\nbridge_auth_interval = 60\n"
    )
    with running_relay(
        tmp_path_factory, "behind-nginx", config=config, listen=f"unix:{sock}", tls=False
    ) as harness:
        yield harness


@pytest.fixture(scope="module")
def nginx(
    relay: Harness, pki: tls_pki.DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    upstream = Path(relay.relay.listen.removeprefix("unix:"))
    started = start_nginx(tmp_path_factory.mktemp("nginx"), pki, upstream)
    try:
        yield started
    finally:
        started.stop()
    leaked = sorted(value for value in relay.sensitive if value in started.logs())
    assert not leaked, f"nginx's logs in {started.directory} hold {len(leaked)} secret(s)"


def client_context(pki: tls_pki.DevPKI) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.root))


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
def http_version(request: pytest.FixtureRequest) -> str:
    version: str = request.param
    return version


@pytest.fixture
async def client(pki: tls_pki.DevPKI, http_version: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client from 127.0.0.3 to nginx, over HTTP/1.1 or HTTP/2."""
    http2 = http_version == "HTTP/2"
    transport = httpx.AsyncHTTPTransport(
        verify=client_context(pki), http2=http2, http1=not http2, local_address=CLIENT
    )
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as c:
        yield c


def webhook_lines(relay: Harness, tenant: Tenant, count: int = 1) -> list[dict[str, object]]:
    """The relay's access lines for ``tenant`` (waiting for ``count`` of them)."""

    def lines() -> list[dict[str, object]]:
        found = [line for line in relay.log_events("webhook") if line.get("tenant") == tenant.id]
        return found if len(found) >= count else []

    found: list[dict[str, object]] = wait_for(lines, f"{count} access line(s) of {tenant.id}")
    return found


# -- PROTOCOL.md §1, every row, through nginx ---------------------------------------


async def test_every_ingress_row_through_nginx(
    relay: Harness, nginx: Nginx, client: httpx.AsyncClient, http_version: str
) -> None:
    tenant = relay.tenant("row")
    url = nginx.webhook_url(tenant.id)

    async def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
        started = time.perf_counter()
        response = await client.post(url, content=body, headers=headers)
        assert response.http_version == http_version
        # LINE's budget, nginx included.
        assert time.perf_counter() - started < 1.0 or response.status_code == 503
        return response

    body = webhook_body("accepted")
    accepted = await post(body, relay.headers(tenant, body))
    assert (accepted.status_code, accepted.content) == (200, b"{}")

    verify = b'{"destination": "U0", "events": []}'
    assert (await post(verify, relay.headers(tenant, verify))).status_code == 200

    bad = webhook_body("bad")
    wrong = relay.remember(relay.sign("not-the-secret", bad))
    for headers in ({}, {"x-line-signature": wrong}):
        refused = await post(bad, headers)
        assert (refused.status_code, refused.json()) == (401, {"error": "invalid_signature"})
        assert wrong not in refused.text

    malformed = b'{"events": {}}'
    answer = await post(malformed, relay.headers(tenant, malformed))
    assert (answer.status_code, answer.json()) == (400, {"error": "malformed_body"})

    unknown = await client.post(
        f"{nginx.base_url}/webhook/nobody-here", content=body, headers=relay.headers(tenant, body)
    )
    assert (unknown.status_code, unknown.json()) == (404, {"error": "unknown_tenant"})

    # One byte over the relay's limit: the relay's 413. Far over nginx's: nginx's, same
    # words. (httpx's HTTP/2 client reads no answer before its whole body is sent, and
    # nginx stops reading at its limit: curl --http2 gets the same 413, httpx a timeout.)
    sizes = [1024 * 1024 + 1] + ([3 * 1024 * 1024] if http_version == "HTTP/1.1" else [])
    for size in sizes:
        large = b'{"events": [], "pad": "' + b"x" * (size - 24) + b'"}'
        too_large = await post(large, relay.headers(tenant, large))
        assert (too_large.status_code, too_large.json()) == (413, {"error": "body_too_large"})

    get = await client.get(url)
    assert get.status_code == 405

    # The store cannot commit before the deadline (another process holds its lock).
    store = sqlite3.connect(relay.relay.state.store, isolation_level=None)
    try:
        store.execute("BEGIN IMMEDIATE")
        late = webhook_body("late")
        overloaded = await post(late, relay.headers(tenant, late))
        store.execute("ROLLBACK")
    finally:
        store.close()
    assert (overloaded.status_code, overloaded.json()) == (503, {"error": "overloaded"})
    assert int(overloaded.headers["retry-after"]) >= 1

    # accepted, verify, 401 twice, 400, the relay's 413, 405, 503
    lines = webhook_lines(relay, tenant, 8)
    assert {line["client"] for line in lines} == {CLIENT}


async def test_a_bridge_through_nginx_gets_a_signed_webhook_byte_identical(
    relay: Harness, nginx: Nginx, pki: tls_pki.DevPKI
) -> None:
    tenant = relay.tenant("wss")
    for n, (url, headers) in enumerate(
        (
            (nginx.bridge_url, {"Authorization": f"Bearer {tenant.token}"}),
            (f"{nginx.bridge_url}/{tenant.token}", {}),
        )
    ):
        # Bytes a re-serialising proxy would change: spacing, escapes, raw UTF-8, CRLF.
        body = (
            b'{"destination":"U0" ,  "events":[{"type":"message","message":{"type":"text",'
            b'"text":"\xe3\x81\x82 \\u3042 \\/ \\r\\n"}, "x": 1.50, "n": %d}]}\r\n' % n
        )
        ws = await connect(
            url, ssl=client_context(pki), additional_headers=headers, open_timeout=TIMEOUT
        )
        async with Bridge(ws, {}) as bridge:
            bridge.hello = await bridge.frame()
            assert bridge.hello["type"] == "hello"
            signature = relay.sign(tenant.secret, body)
            async with httpx.AsyncClient(verify=client_context(pki), timeout=TIMEOUT) as c:
                posted = await c.post(
                    nginx.webhook_url(tenant.id),
                    content=body,
                    headers={"x-line-signature": signature},
                )
            assert posted.status_code == 200
            frame = await bridge.webhook()
            assert frame["body"].encode() == body
            assert frame["signature"] == signature
            await bridge.ack(frame)
    access = (nginx.directory / "logs" / "linerelay.access.log").read_text()
    assert "/bridge/[redacted]" in access
    assert tenant.token not in access


async def test_bridge_tokens_are_locked_out_per_client_behind_nginx(
    relay: Harness, nginx: Nginx, pki: tls_pki.DevPKI
) -> None:
    """The relay's lockout counts the address nginx vouches for, not nginx's."""

    async def status_from(address: str) -> int:
        bogus = relay.remember("lrb_" + os.urandom(16).hex())
        try:
            async with connect(
                nginx.bridge_url,
                ssl=client_context(pki),
                additional_headers={"Authorization": f"Bearer {bogus}"},
                local_addr=(address, 0),
                open_timeout=TIMEOUT,
            ):
                pass
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        raise AssertionError("a bogus token was let in")

    statuses = [await status_from("127.0.0.4") for _ in range(4)]
    assert statuses == [401, 401, 401, 429]  # bridge_auth_burst = 3
    assert await status_from("127.0.0.5") == 401


# -- what the relay believes ------------------------------------------------------------


async def test_a_client_sent_x_forwarded_for_through_nginx_is_not_believed(
    relay: Harness, nginx: Nginx, client: httpx.AsyncClient
) -> None:
    tenant = relay.tenant("xff")
    body = webhook_body("forged")
    headers = {**relay.headers(tenant, body), "X-Forwarded-For": "203.0.113.9"}
    assert (
        await client.post(nginx.webhook_url(tenant.id), content=body, headers=headers)
    ).is_success
    (line,) = webhook_lines(relay, tenant)
    assert line["client"] == CLIENT


@pytest.fixture(scope="module")
def tcp_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """A relay on loopback TCP, plain HTTP, trusting 127.0.0.1 only."""
    with running_relay(
        tmp_path_factory,
        "tcp-behind",
        config='public_tls = false\ntrusted_proxies = ["127.0.0.1"]\n',
        tls=False,
    ) as harness:
        yield harness


@pytest.mark.parametrize(
    ("source", "believed"), [("127.0.0.2", "127.0.0.2"), ("127.0.0.1", "203.0.113.7")]
)
def test_x_forwarded_for_straight_to_the_relay_counts_only_from_a_trusted_peer(
    tcp_relay: Harness, source: str, believed: str
) -> None:
    tenant = tcp_relay.tenant("direct")
    body = webhook_body("direct")
    headers = {**tcp_relay.headers(tenant, body), "X-Forwarded-For": "203.0.113.7"}
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=TIMEOUT) as direct:
        assert direct.post(tenant.url, content=body, headers=headers).status_code == 200
    (line,) = webhook_lines(tcp_relay, tenant)
    assert line["client"] == believed


def test_a_relay_behind_a_proxy_exports_no_certificate_expiry(relay: Harness) -> None:
    # nginx serves the certificate; a 0 here would read as one expired in 1970.
    assert EXPIRY_METRIC not in relay.relay.metrics()


# -- the whole suite, and what plain HTTP carries -----------------------------------------


def test_conformance_passes_against_the_nginx_fronted_relay(
    relay: Harness, nginx: Nginx, pki: tls_pki.DevPKI, tmp_path: Path
) -> None:
    tenant = relay.tenant("conf")
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            LINERELAY,
            "conformance",
            nginx.webhook_url(tenant.id),
            "--tenant-secret",
            tenant.secret,
            "--ca",
            str(pki.root),
            "--report",
            "json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {check["id"]: check for check in json.loads(report.read_text())["checks"]}
    assert not [check for check in checks.values() if check["status"] in ("fail", "skip")]
    # The same TLS policy as the relay's: TLS 1.3 only, the three groups, the full chain.
    assert checks["tls-protocols"]["detail"].startswith("accepts TLS 1.3;")
    assert checks["tls-groups"]["detail"] == "offers X25519, secp256r1, secp384r1"
    assert checks["cert-chain-complete"]["status"] == "pass"
    assert checks["webhook-latency"]["status"] == "pass"  # LINE's budget, nginx included
    lines = webhook_lines(relay, tenant, 20)
    assert {line["outcome"] for line in lines} >= {"verify"}


def test_plain_http_carries_only_acme_challenges(relay: Harness, nginx: Nginx) -> None:
    challenge = nginx.directory / "acme" / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / "token-1").write_text("token-1.thumbprint")
    base = f"http://127.0.0.1:{nginx.http_port}"
    assert httpx.get(f"{base}/.well-known/acme-challenge/token-1").text == "token-1.thumbprint"
    seen = len(relay.log_events("webhook"))
    assert httpx.post(f"{base}/webhook/anyone", content=b"{}").status_code == 404
    time.sleep(0.5)  # the relay writes its access lines every 0.1 s
    assert len(relay.log_events("webhook")) == seen


# -- the relay unreachable ------------------------------------------------------------


async def test_with_the_relay_unreachable_line_is_asked_to_retry_and_no_token_is_logged(
    pki: tls_pki.DevPKI, tmp_path: Path
) -> None:
    down = start_nginx(tmp_path / "nginx", pki, tmp_path / "no-relay.sock")
    try:
        async with httpx.AsyncClient(verify=client_context(pki), timeout=TIMEOUT) as c:
            answer = await c.post(f"{down.base_url}/webhook/shop-1", content=b"{}")
        assert (answer.status_code, answer.json()) == (503, {"error": "overloaded"})
        assert answer.headers["retry-after"] == "1"
        token = "lrb_" + os.urandom(16).hex()
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(f"{down.bridge_url}/{token}", ssl=client_context(pki))
        assert refused.value.response.status_code == 503
        await asyncio.sleep(0.2)
    finally:
        down.stop()
    logs = down.logs()
    assert "connect() to unix:" in logs  # nginx does log the failures...
    assert "/webhook/shop-1" in logs
    assert token not in logs  # ...but never a bridge token


# -- with the units' socket activation ----------------------------------------------


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed",
)
def test_the_relay_socket_activated_on_a_unix_socket_serves_behind_nginx(
    pki: tls_pki.DevPKI, tmp_path: Path
) -> None:
    """docs/reverse-proxy.md's linerelay.socket drop-in: systemd opens the Unix socket
    (systemd-socket-activate stands in), the relay takes it as "public"."""
    sock, admin, state = tmp_path / "public.sock", free_port(), tmp_path / "state"
    config = tmp_path / "relay.toml"
    config.write_text(
        f'public_tls = false\nlisten = "unix:{sock}"\ntrusted_proxies = ["unix"]\n'
        f'admin_listen = "127.0.0.1:{admin}"\n'
    )
    secret = add_tenant(state, "activated", "socket-activated-secret").secret
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "systemd-socket-activate",
                *("-l", str(sock), "-l", f"127.0.0.1:{admin}", "--fdname=public:admin"),
                *(LINERELAY, "serve", "--config", str(config), "--state-dir", str(state)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    front = None
    try:

        def ready() -> bool:
            # The first connection starts the relay, as a socket unit would.
            try:
                return httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "the socket-activated relay", timeout=60, interval=0.2)
        front = start_nginx(tmp_path / "nginx", pki, sock)
        body = webhook_body("activated")
        transport = httpx.HTTPTransport(verify=client_context(pki), local_address=CLIENT)
        with httpx.Client(transport=transport, timeout=TIMEOUT) as c:
            answer = c.post(
                front.webhook_url("activated"),
                content=body,
                headers={"x-line-signature": sign(secret.encode(), body)},
            )
        assert (answer.status_code, answer.content) == (200, b"{}")

        def lines() -> list[dict[str, object]]:
            return [json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{"]

        webhook = wait_for(
            lambda: [line for line in lines() if line.get("event") == "webhook"], "the access line"
        )
        assert webhook[0]["client"] == CLIENT
        serving = next(line for line in lines() if line.get("event") == "relay serving")
        assert serving["socket_activated"] == ["admin", "public"]
    finally:
        if front is not None:
            front.stop()
        stop(proc, TIMEOUT)
