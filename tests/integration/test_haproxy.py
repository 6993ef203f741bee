"""HAProxy in front of several relays (issue 10 item 5; docs/scale-out.md).

The HAProxy is Debian's, run by the test in the foreground with
deploy/haproxy/haproxy.cfg itself, its addresses and ports substituted
(tests/support/haproxy.py: an edit of the example it does not follow fails
instead of drifting): TCP mode, TLS passed through to relays that share one
certificate, PROXY protocol v2 to the relays, health checks on each relay's
/readyz. HAProxy reaches the relays from 127.0.0.1, the only address in
their ``proxy_protocol_from``; the test's clients bind other loopback
addresses (127.0.0.2, ...), so the address a relay believes can be told from
HAProxy's and from any other.

The first tests' relays each have their own SQLite store, so a tenant lives
on each of them and a bridge gets the webhooks of its own relay only. Bridges
and webhooks on different relays need the shared Redis store: the tests at the
end of this module ("several nodes on one Redis") put two relays on one Redis
behind the balancer, a bridge on one node gets what HAProxy sent to the other,
and a node stopped under traffic costs no 200'd webhook.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    running_relay,
    tls_context,
    wait_for,
    webhook_body,
)
from tests.support import proxy_headers
from tests.support.haproxy import HAPROXY, Backend, HAProxy, start_haproxy
from tests.support.partition import Partition
from tests.support.redis import RedisServer, add_redis_tenant
from tests.support.redis import relay_config as redis_config
from tests.support.tenants import NewTenant, add_tenant
from tls import pki as tls_pki

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(HAPROXY).exists(), reason="haproxy is not installed (apt-get install haproxy)"
    ),
]

#: Where HAProxy's connections to the relays come from.
BALANCER = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls_pki.DevPKI:
    """The one certificate every relay serves (HAProxy passes TLS through)."""
    return tls_pki.create(tmp_path_factory.mktemp("pki"), ["localhost", "127.0.0.1"])


#: One admin token on every relay: HAProxy's health checks send it (deploy/haproxy/haproxy.cfg).
ADMIN_TOKEN = "lra_" + secrets.token_urlsafe(32)


def relay_config(pki: tls_pki.DevPKI, extra: str = "") -> str:
    return (
        f'tls_cert_file = "{pki.chain}"\ntls_key_file = "{pki.key}"\n'
        f'proxy_protocol_from = ["{BALANCER}"]\nadmin_auth = "token"\n{extra}'
    )


def backend(harness: Harness, name: str) -> Backend:
    return Backend(name, harness.relay.port, harness.relay.admin_port)


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, pki: tls_pki.DevPKI
) -> Iterator[tuple[Harness, Harness]]:
    """Two relays behind the balancer."""
    with (
        running_relay(
            tmp_path_factory, "node-a", config=relay_config(pki), admin_token=ADMIN_TOKEN
        ) as a,
        running_relay(
            tmp_path_factory, "node-b", config=relay_config(pki), admin_token=ADMIN_TOKEN
        ) as b,
    ):
        for harness in (a, b):
            harness.trust = (pki.root,)
        yield a, b


@pytest.fixture(scope="module")
def haproxy(
    pair: tuple[Harness, Harness], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HAProxy]:
    started = start_haproxy(
        tmp_path_factory.mktemp("haproxy"),
        [backend(pair[0], "relay1"), backend(pair[1], "relay2")],
        ADMIN_TOKEN,
    )
    try:
        wait_for(lambda: set(started.status().values()) == {"UP"}, "both relays UP")
        yield started
    finally:
        started.stop()


def client(pki: tls_pki.DevPKI, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=tls_context(pki.root), local_address=source)
    return httpx.Client(transport=transport, timeout=TIMEOUT)


def same_tenant(pair: tuple[Harness, Harness], prefix: str) -> NewTenant:
    """One tenant, with one secret and one bridge token, on both relays (each has its
    own tenants file)."""
    added = add_tenant(pair[0].relay.state_dir, prefix=prefix)
    add_tenant(pair[1].relay.state_dir, added.id, added.secret, token=added.token)
    for harness in pair:
        harness.sensitive.update((added.secret, added.token))
    return added


def post_through(
    harness: Harness, front: HAProxy, pki: tls_pki.DevPKI, tenant: NewTenant, tag: str, source: str
) -> httpx.Response:
    """One signed webhook through ``front`` from ``source``, on a connection of its own
    (so HAProxy balances each anew)."""
    body = webhook_body(tag)
    headers = {"x-line-signature": harness.sign(tenant.secret, body)}
    with client(pki, source) as fresh:
        return fresh.post(front.webhook_url(tenant.id), content=body, headers=headers)


def access_lines(pair: tuple[Harness, ...], tenant: str, count: int) -> list[dict[str, object]]:
    """The access lines of ``tenant`` on every relay of ``pair``, once there are ``count``."""

    def lines() -> list[dict[str, object]]:
        found = [
            line
            for harness in pair
            for line in harness.log_events("webhook")
            if line.get("tenant") == tenant
        ]
        return found if len(found) >= count else []

    found: list[dict[str, object]] = wait_for(lines, f"{count} access line(s) of {tenant}")
    return found


# -- whom the relays believe --------------------------------------------------------------


def test_the_relays_log_the_client_haproxy_saw(
    pair: tuple[Harness, Harness], haproxy: HAProxy, pki: tls_pki.DevPKI
) -> None:
    tenant = same_tenant(pair, "seen")
    for n in range(4):
        answer = post_through(pair[0], haproxy, pki, tenant, f"seen-{n}", "127.0.0.2")
        assert answer.status_code == 200, answer.text
    lines = access_lines(pair, tenant.id, 4)
    assert {line["client"] for line in lines} == {"127.0.0.2"}


async def test_a_bridge_through_haproxy_is_logged_with_its_own_address(
    pair: tuple[Harness, Harness], haproxy: HAProxy, pki: tls_pki.DevPKI
) -> None:
    tenant = same_tenant(pair, "wss")
    ws = await connect(
        haproxy.bridge_url,
        ssl=tls_context(pki.root),
        additional_headers={"Authorization": f"Bearer {tenant.token}"},
        local_addr=("127.0.0.3", 0),
        open_timeout=TIMEOUT,
    )
    async with Bridge(ws, {}) as bridge:
        assert (await bridge.frame())["type"] == "hello"

    def connected() -> list[dict[str, object]]:
        return [
            line
            for harness in pair
            for line in harness.log_events("bridge connected")
            if line.get("tenant") == tenant.id
        ]

    assert [line["peer"] for line in wait_for(connected)] == ["127.0.0.3"]


def test_a_proxy_header_from_anyone_but_haproxy_is_not_believed(
    pair: tuple[Harness, Harness], pki: tls_pki.DevPKI
) -> None:
    relay = pair[0].relay
    failures = pair[0].metric("linerelay_tls_handshake_failures_total")
    # A client straight to the relay, claiming to be someone else: its header is
    # bytes before a ClientHello, so the handshake fails.
    with socket.create_connection(
        ("127.0.0.1", relay.port), source_address=("127.0.0.6", 0)
    ) as raw:
        raw.sendall(proxy_headers.v2("203.0.113.9"))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_context(pki.root).wrap_socket(raw, server_hostname="localhost").close()
    wait_for(
        lambda: pair[0].metric("linerelay_tls_handshake_failures_total") == failures + 1,
        "the handshake failure to be counted",
    )
    # Without the header the same client is served, as itself.
    tenant = pair[0].tenant("direct")
    with client(pki, "127.0.0.6") as c:
        body = webhook_body("direct")
        assert c.post(tenant.url, content=body, headers=pair[0].headers(tenant, body)).is_success
    (line,) = access_lines(pair, tenant.id, 1)
    assert line["client"] == "127.0.0.6"


def test_a_connection_from_haproxys_address_without_a_header_is_dropped(
    pair: tuple[Harness, Harness], pki: tls_pki.DevPKI
) -> None:
    relay = pair[1].relay
    refused = pair[1].metric("linerelay_connections_refused_total", reason="proxy_protocol")
    with (
        socket.create_connection(("127.0.0.1", relay.port), source_address=(BALANCER, 0)) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        tls_context(pki.root).wrap_socket(raw, server_hostname="localhost").close()
    assert (
        pair[1].metric("linerelay_connections_refused_total", reason="proxy_protocol")
        == refused + 1
    )


# -- the per-address limits -----------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(
    tmp_path_factory: pytest.TempPathFactory, pki: tls_pki.DevPKI
) -> Iterator[tuple[Harness, HAProxy]]:
    """One relay allowing two connections per client address, behind its own HAProxy."""
    with running_relay(
        tmp_path_factory,
        "capped",
        config=relay_config(pki, "max_connections_per_address = 2\n"),
        admin_token=ADMIN_TOKEN,
    ) as harness:
        harness.trust = (pki.root,)
        front = start_haproxy(
            tmp_path_factory.mktemp("haproxy-capped"), [backend(harness, "relay1")], ADMIN_TOKEN
        )
        try:
            wait_for(lambda: front.status() == {"relay1": "UP"}, "the relay UP")
            yield harness, front
        finally:
            front.stop()


async def test_the_per_address_cap_counts_each_client_behind_haproxy(
    capped: tuple[Harness, HAProxy], pki: tls_pki.DevPKI
) -> None:
    harness, front = capped

    async def tls_from(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                front.port,
                ssl=tls_context(pki.root),
                server_hostname="localhost",
                local_addr=(source, 0),
            ),
            TIMEOUT,
        )

    held = [await tls_from("127.0.0.4") for _ in range(2)]
    # The third from the same client: the relay resets it before TLS.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await tls_from("127.0.0.4")
    assert harness.metric("linerelay_connections_refused_total", reason="per_address") == 1
    # Another client, through the same HAProxy, is let in.
    _, writer = await tls_from("127.0.0.5")
    writer.close()
    for _, w in held:
        w.close()


# -- health checks ----------------------------------------------------------------------------


def test_health_checks_take_a_stopped_relay_out_and_bring_it_back(
    pair: tuple[Harness, Harness], haproxy: HAProxy, pki: tls_pki.DevPKI
) -> None:
    tenant = same_tenant(pair, "health")
    pair[1].relay.stop()
    try:
        wait_for(lambda: haproxy.status() == {"relay1": "UP", "relay2": "DOWN"}, "relay2 DOWN")
        # Every new connection goes to the relay left.
        for n in range(6):
            answer = post_through(pair[0], haproxy, pki, tenant, f"health-{n}", "127.0.0.7")
            assert answer.status_code == 200, answer.text
        assert len(access_lines(pair[:1], tenant.id, 6)) == 6
    finally:
        pair[1].relay.start()
    wait_for(lambda: set(haproxy.status().values()) == {"UP"}, "relay2 UP again")


# -- several nodes on one Redis -------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, pki: tls_pki.DevPKI, redis_server: RedisServer
) -> Iterator[tuple[tuple[Harness, Harness], HAProxy]]:
    """Two relays on one Redis (one relay, two nodes) behind the balancer."""
    config = relay_config(pki, redis_config(redis_server, redis_lease_ttl=2))
    with (
        running_relay(tmp_path_factory, "shared-a", config=config, admin_token=ADMIN_TOKEN) as a,
        running_relay(tmp_path_factory, "shared-b", config=config, admin_token=ADMIN_TOKEN) as b,
    ):
        for harness in (a, b):
            harness.trust = (pki.root,)
        front = start_haproxy(
            tmp_path_factory.mktemp("haproxy-shared"),
            [backend(a, "relay1"), backend(b, "relay2")],
            ADMIN_TOKEN,
        )
        try:
            wait_for(lambda: set(front.status().values()) == {"UP"}, "both relays UP")
            yield (a, b), front
        finally:
            front.stop()


async def bridge_through(front: HAProxy, pki: tls_pki.DevPKI, token: str) -> Bridge:
    ws = await connect(
        front.bridge_url,
        ssl=tls_context(pki.root),
        additional_headers={"Authorization": f"Bearer {token}"},
        local_addr=("127.0.0.8", 0),
        open_timeout=TIMEOUT,
    )
    bridge = Bridge(ws, {})
    bridge.hello = await bridge.frame()
    return bridge


def holder(nodes: tuple[Harness, Harness], tenant: str) -> int:
    """Which node (0 or 1) logged the tenant's latest bridge connection."""
    latest = max(
        (line["ts"], n)
        for n, harness in enumerate(nodes)
        for line in harness.log_events("bridge connected")
        if line.get("tenant") == tenant
    )
    return latest[1]


async def post_many(
    front: HAProxy, pki: tls_pki.DevPKI, harness: Harness, tenant: NewTenant, tags: list[str]
) -> list[bytes]:
    """Post one webhook per tag through ``front``, one after the other, each on a new
    connection; the bodies answered 200, in order (the others LINE would retry)."""
    accepted = []
    for tag in tags:
        body = webhook_body(tag)
        headers = {"x-line-signature": harness.sign(tenant.secret, body)}
        transport = httpx.AsyncHTTPTransport(
            verify=tls_context(pki.root), local_address="127.0.0.9"
        )
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as fresh:
            try:
                answer = await fresh.post(
                    front.webhook_url(tenant.id), content=body, headers=headers
                )
            except httpx.TransportError:
                continue
        if answer.status_code == 200:
            accepted.append(body)
    return accepted


async def test_a_bridge_on_one_node_gets_what_haproxy_sent_to_the_other(
    shared: tuple[tuple[Harness, Harness], HAProxy],
    pki: tls_pki.DevPKI,
    redis_server: RedisServer,
) -> None:
    nodes, front = shared
    tenant = add_redis_tenant(redis_server.url)
    for harness in nodes:
        harness.sensitive.update((tenant.secret, tenant.token))
    bridge = await bridge_through(front, pki, tenant.token)
    async with bridge:
        held = holder(nodes, tenant.id)
        other = nodes[1 - held]
        # The bridge's node drained, as an operator drains a node: its connections (the
        # bridge's) stay, and every new one (each webhook) goes to the other node.
        server = f"relays/relay{held + 1}"
        front.command(f"set server {server} state drain")
        try:
            bodies = await post_many(
                front, pki, nodes[0], tenant, [f"across-{i:02d}" for i in range(20)]
            )
        finally:
            front.command(f"set server {server} state ready")
        assert len(bodies) == 20
        frames = await bridge.take(20)
    assert [frame["body"].encode() for frame in frames] == bodies
    # Access lines are written off the hot path: wait for them, do not read once.
    on_other = wait_for(
        lambda: [line for line in other.log_events("webhook") if line.get("tenant") == tenant.id],
        "a webhook logged by the node without the bridge",
    )
    assert {line["client"] for line in on_other} == {"127.0.0.9"}


async def test_a_node_stopped_under_traffic_costs_no_200d_webhook(
    shared: tuple[tuple[Harness, Harness], HAProxy],
    pki: tls_pki.DevPKI,
    redis_server: RedisServer,
) -> None:
    nodes, front = shared
    tenant = add_redis_tenant(redis_server.url)
    for harness in nodes:
        harness.sensitive.update((tenant.secret, tenant.token))
    bridge = await bridge_through(front, pki, tenant.token)
    # The node holding the bridge is the one stopped: its bridge moves too.
    stopped = nodes[holder(nodes, tenant.id)]
    senders = [
        asyncio.ensure_future(
            post_many(front, pki, nodes[0], tenant, [f"stop-{s}-{i:02d}" for i in range(30)])
        )
        for s in range(4)
    ]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(stopped.relay.stop)
    accepted = await asyncio.gather(*senders)
    wanted = {body for bodies in accepted for body in bodies}
    assert len(wanted) >= 60, "most webhooks were accepted, by either node"
    frames: list[dict[str, object]] = []
    while not wanted <= {str(frame["body"]).encode() for frame in frames}:
        try:
            frame = await bridge.webhook()
            frames.append(frame)
            await bridge.ack(frame)
        except websockets.ConnectionClosed:
            # Its node stopped (close code 1001): it connects again, through HAProxy.
            bridge = await bridge_through(front, pki, tenant.token)
    await bridge.close()
    first = list(dict.fromkeys(str(frame["body"]).encode() for frame in frames))
    for bodies in accepted:
        positions = [first.index(body) for body in bodies]
        assert positions == sorted(positions), "a sender's webhooks out of order"
    first_sends = [frame["body"] for frame in frames if frame["attempt"] == 1]
    assert len(first_sends) == len(set(first_sends)), "sent twice, not as a redelivery"
    stopped.relay.start()
    wait_for(lambda: set(front.status().values()) == {"UP"}, "the stopped node UP again")


async def test_a_node_cut_off_from_redis_is_taken_out_by_its_readyz_and_costs_no_webhook(
    shared: tuple[tuple[Harness, Harness], HAProxy],
    pki: tls_pki.DevPKI,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A third node reaching Redis through a link that can fail, behind a balancer of its
    # own with the first node: the node keeps running and answering, but not ready.
    nodes, _ = shared
    link = Partition(redis_server.port).heal()
    config = relay_config(
        pki,
        redis_config(redis_server, redis_lease_ttl=2).replace(
            f":{redis_server.port}/", f":{link.port}/"
        ),
    )
    tenant = add_redis_tenant(redis_server.url)
    with running_relay(
        tmp_path_factory, "cut-off", config=config, admin_token=ADMIN_TOKEN
    ) as cut_off:
        cut_off.trust = (pki.root,)
        for harness in (nodes[0], cut_off):
            harness.sensitive.update((tenant.secret, tenant.token))
        front = start_haproxy(
            tmp_path_factory.mktemp("haproxy-partition"),
            [backend(nodes[0], "relay1"), backend(cut_off, "relay2")],
            ADMIN_TOKEN,
        )
        try:
            wait_for(lambda: set(front.status().values()) == {"UP"}, "both relays UP")
            link.cut()
            wait_for(lambda: front.status().get("relay2") == "DOWN", "relay2 DOWN", 30)
            # HAProxy took it out by its health check, not because it stopped answering.
            readyz = httpx.get(
                f"{cut_off.relay.admin_url}/readyz",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=TIMEOUT,
            )
            assert readyz.status_code == 503
            assert "store" in readyz.json()
            bodies = await post_many(
                front, pki, nodes[0], tenant, [f"partition-{i:02d}" for i in range(10)]
            )
            assert len(bodies) == 10, "a webhook went to the node that is not ready"
            assert not [
                line for line in cut_off.log_events("webhook") if line.get("tenant") == tenant.id
            ]
            link.heal()
            wait_for(lambda: set(front.status().values()) == {"UP"}, "relay2 UP again", 30)
        finally:
            front.stop()
            link.cut()
