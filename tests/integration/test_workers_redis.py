"""``linerelay serve --workers 2`` on the Redis store (issue 10 items 4 and "Must show").

Real parts: one ``redis-server`` (AOF, ``appendfsync always``) for the module,
one ``linerelay serve --workers 2`` on it (a supervisor and two forked
workers sharing the listeners), clients over real TLS, bridges over real TLS
WebSockets. Which worker served a webhook is read from its access line
(``"worker": N``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import websockets

from appliance.signature import sign
from appliance.state import StateDir
from tests.integration.helpers import (
    TIMEOUT,
    Bridge,
    Harness,
    Tenant,
    async_wait_for,
    post_tags,
    tls_context,
    wait_for,
    webhook_body,
)
from tests.support.processes import stop
from tests.support.redis import RedisServer, add_redis_tenant, relay_config, running_redis
from tests.support.relay import LINERELAY, RelayProcess, free_port

pytestmark = pytest.mark.integration

#: Senders posting at once, and webhooks each posts, each on a connection of its own.
SENDERS = 24
EACH = 10


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def workers(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    """One relay of two workers on the module's Redis."""
    relay = RelayProcess(
        tmp_path_factory.mktemp("workers") / "state",
        # A short lease: a killed worker's tenants go to a live connection soon.
        config=relay_config(redis_server, redis_lease_ttl=2),
        args=["--workers", "2"],
        expected_errors=("worker exited",),
    ).start()
    harness = Harness(relay)
    try:
        yield harness
    finally:
        children = worker_pids(harness)
        # SIGTERM to the supervisor: every worker stops, then the supervisor, with 0.
        assert relay.stop() == 0
        assert not [pid for pid in children if psutil.pid_exists(pid)]
    leaked = harness.leaks()
    assert not leaked, f"relay log {relay.log_file} contains {len(leaked)} secret(s)"


def tenant_of(harness: Harness, redis_server: RedisServer) -> Tenant:
    added = add_redis_tenant(redis_server.url)
    harness.sensitive.update((added.secret, added.token))
    return Tenant(added.id, added.secret, added.token, harness.relay.webhook_url(added.id))


def worker_pids(harness: Harness) -> list[int]:
    assert harness.relay.proc is not None
    return sorted(child.pid for child in psutil.Process(harness.relay.proc.pid).children())


async def burst(harness: Harness, tenant: Tenant, prefix: str) -> dict[int, list[bytes]]:
    """SENDERS senders at once, each posting EACH webhooks one after the other, each on
    a new connection; every sender's bodies that were answered 200, in order."""

    async def sender(n: int) -> list[bytes]:
        accepted = []
        for i in range(EACH):
            body = webhook_body(f"{prefix}-{n:02d}-{i:02d}")
            async with httpx.AsyncClient(verify=harness.ssl, timeout=TIMEOUT) as client:
                try:
                    answer = await client.post(
                        tenant.url, content=body, headers=harness.headers(tenant, body)
                    )
                except httpx.TransportError:
                    continue  # LINE would retry; nothing was promised
            if answer.status_code == 200:
                accepted.append(body)
        return accepted

    results = await asyncio.gather(*(sender(n) for n in range(SENDERS)))
    return dict(enumerate(results))


def assert_in_order(delivered: list[bytes], accepted: dict[int, list[bytes]]) -> None:
    """Every 200'd body was delivered, each sender's in the order its 200s came."""
    first = list(dict.fromkeys(delivered))  # where each body was first delivered
    assert set(first) >= {body for bodies in accepted.values() for body in bodies}
    for bodies in accepted.values():
        positions = [first.index(body) for body in bodies]
        assert positions == sorted(positions), "a sender's webhooks out of order"


async def receive(bridge: Bridge, count: int) -> list[dict[str, Any]]:
    """The next ``count`` webhooks, each acked as it comes (more than a window's worth)."""
    frames = []
    for _ in range(count):
        frames.append(await bridge.webhook())
        await bridge.ack(frames[-1])
    return frames


def served(harness: Harness, tenant: Tenant, count: int) -> list[dict[str, Any]]:
    """``tenant``'s access lines, once there are ``count``."""

    def lines() -> list[dict[str, Any]]:
        found = [line for line in harness.log_events("webhook") if line.get("tenant") == tenant.id]
        return found if len(found) >= count else []

    found: list[dict[str, Any]] = wait_for(lines, f"{count} access lines of {tenant.id}")
    return found


async def test_a_burst_is_spread_over_both_workers_and_each_200_delivered_once_in_order(
    workers: Harness, redis_server: RedisServer
) -> None:
    tenant = tenant_of(workers, redis_server)
    async with await Bridge.open(workers, tenant.token) as bridge:
        accepted = await burst(workers, tenant, "burst")
        total = sum(map(len, accepted.values()))
        assert total >= SENDERS * EACH * 0.9, "most of a burst on a quiet relay gets a 200"
        frames = await receive(bridge, total)
        assert await bridge.silent_for(1.0)
    delivered = [frame["body"].encode() for frame in frames]
    assert len(set(delivered)) == len(delivered), "a webhook delivered twice"
    assert_in_order(delivered, accepted)
    assert {frame["attempt"] for frame in frames} == {1}
    lines = served(workers, tenant, total)
    served_by = {line["worker"] for line in lines if line["outcome"] == "accepted"}
    assert served_by == {1, 2}, f"one worker served the whole burst: {served_by}"


async def test_metrics_count_the_webhooks_of_every_worker_whichever_answers(
    workers: Harness, redis_server: RedisServer
) -> None:
    tenant = tenant_of(workers, redis_server)
    before = workers.metric("linerelay_webhooks_total", outcome="accepted")
    accepted = await burst(workers, tenant, "counted")
    total = sum(map(len, accepted.values()))
    lines = served(workers, tenant, total)
    assert {line["worker"] for line in lines} == {1, 2}
    # Scraped again and again, whichever worker answers: the sum of both.
    for _ in range(6):
        async with httpx.AsyncClient(timeout=TIMEOUT) as fresh:  # a new connection each
            text = (await fresh.get(f"{workers.relay.admin_url}/metrics")).text
        sample = f'linerelay_webhooks_total{{outcome="accepted"}} {before + total}'
        assert sample in text


async def test_a_tenants_bridge_shows_connected_whichever_worker_holds_it(
    workers: Harness, redis_server: RedisServer
) -> None:
    tenant = tenant_of(workers, redis_server)

    def connected() -> float:
        return workers.metric("linerelay_bridge_connected", tenant=tenant.id, protocol="1")

    async with await Bridge.open(workers, tenant.token):
        # Written by each worker every tenant_poll_interval (1 s).
        await async_wait_for(
            lambda: asyncio.to_thread(lambda: all(connected() == 1 for _ in range(4))),
            "the bridge counted on every scrape",
        )
    await async_wait_for(lambda: asyncio.to_thread(lambda: connected() == 0), "the bridge gone")


async def test_the_console_shows_every_workers_bridge_and_answers_whichever_worker_draws_it(
    workers: Harness, redis_server: RedisServer
) -> None:
    tenant = tenant_of(workers, redis_server)
    async with await Bridge.open(workers, tenant.token) as bridge:
        await post_tags(workers, tenant, "console-1", "console-2", "console-3")
        await bridge.take(3)
        answers = int(workers.metric("linerelay_webhook_ack_seconds_count"))
        pages: list[str] = []

        async def poll() -> str:
            async with httpx.AsyncClient(timeout=TIMEOUT) as fresh:  # a new connection each
                page = await fresh.get(f"{workers.relay.admin_url}/fragments/overview")
            assert page.status_code == 200
            return page.text

        # Polls together, so that both workers answer some (whichever accepts first).
        for _ in range(10):
            pages += await asyncio.gather(*(poll() for _ in range(6)))
            if len({drawn_by(page) for page in pages}) == 2:
                break
    assert len({drawn_by(page) for page in pages}) == 2, "one worker drew every page"
    served_by = {bridge_row(page, tenant.id) for page in pages}
    # Every page, whichever worker drew it, shows the bridge served by the one worker.
    assert len(served_by) == 1
    assert "worker" in served_by.pop()
    assert {answer_count(page) for page in pages} == {answers}


def drawn_by(page: str) -> str:
    """The process that drew a console page (its ``drawn by`` stamp)."""
    found = re.search(r'<span id="drawn-by">([^<]+)</span>', page)
    assert found, page
    return found.group(1)


def bridge_row(page: str, tenant: str) -> str | None:
    """Who serves ``tenant``'s bridge on the overview page, None if nobody does."""
    row = re.search(rf'<tr class="tenant ([^"]*)" data-tenant="{tenant}">(.*?)</tr>', page, re.S)
    assert row, page
    if "connected" not in row.group(1).split():
        return None
    served = re.search(r'<span class="served-by">([^<]+)</span>', row.group(2))
    assert served, row.group(2)
    return served.group(1)


def answer_count(page: str) -> int:
    """The answers to LINE the page counts."""
    found = re.search(r'<span id="answers">(\d+)</span>', page)
    assert found, page
    return int(found.group(1))


async def test_a_killed_worker_is_replaced_and_costs_no_200d_webhook(
    workers: Harness, redis_server: RedisServer
) -> None:
    tenant = tenant_of(workers, redis_server)
    before = worker_pids(workers)
    bridge = await Bridge.open(workers, tenant.token)
    posting = asyncio.ensure_future(burst(workers, tenant, "killed"))
    await asyncio.sleep(0.3)
    psutil.Process(before[0]).send_signal(signal.SIGKILL)
    accepted = await posting
    wanted = {body for bodies in accepted.values() for body in bodies}
    wait_for(lambda: len(worker_pids(workers)) == 2 and worker_pids(workers) != before)
    frames: list[dict[str, Any]] = []
    while not wanted <= {frame["body"].encode() for frame in frames}:
        try:
            frame = await bridge.webhook()
            frames.append(frame)
            await bridge.ack(frame)
        except websockets.ConnectionClosed:
            # The bridge was on the killed worker: it connects again, to either, and
            # is sent what it had not acked.
            bridge = await Bridge.open(workers, tenant.token)
    await bridge.close()
    delivered = [frame["body"].encode() for frame in frames]
    assert_in_order(delivered, accepted)
    first_sends = [frame["body"] for frame in frames if frame["attempt"] == 1]
    assert len(first_sends) == len(set(first_sends)), "sent twice, not as a redelivery"
    exits = [line for line in workers.log_events("worker exited") if line["pid"] == before[0]]
    assert [line["status"] for line in exits] == [-9]


def test_a_reload_reaches_every_worker(workers: Harness, redis_server: RedisServer) -> None:
    seen = len(workers.log_events("reload: certificate loaded"))
    workers.relay.signal(signal.SIGHUP)
    lines = wait_for(
        lambda: (
            len(workers.log_events("reload: certificate loaded")) >= seen + 2
            and workers.log_events("reload: certificate loaded")[seen:]
        )
    )
    assert sorted(line["worker"] for line in lines) == [1, 2]


def test_a_hung_worker_is_killed_by_the_watchdog_and_replaced(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    relay = RelayProcess(
        tmp_path / "state",
        config=relay_config(redis_server),
        args=["--workers", "2"],
        # As systemd's WatchdogSec=5s would: the workers' watchdog is the same.
        env={"WATCHDOG_USEC": "5000000"},
        expected_errors=("worker hung: killed", "worker exited"),
    ).start()
    harness = Harness(relay)
    try:
        # /readyz answers once one worker serves; the watchdog watches a worker once it
        # said READY=1, and the supervisor says when all have.
        wait_for(lambda: harness.log_events("workers serving"), "both workers ready")
        before = worker_pids(harness)
        os.kill(before[0], signal.SIGSTOP)  # its event loop stops: no more pings
        wait_for(
            lambda: len(worker_pids(harness)) == 2 and before[0] not in worker_pids(harness),
            "the hung worker replaced",
        )
        (hung,) = harness.log_events("worker hung: killed")
        assert (hung["pid"], hung["why"]) == (before[0], "silent for 5 s (watchdog)")
        tenant = tenant_of(harness, redis_server)
        body = webhook_body("after-the-hang")
        answer = httpx.post(
            tenant.url, content=body, headers=harness.headers(tenant, body), verify=harness.ssl
        )
        assert answer.status_code == 200
    finally:
        assert relay.stop() == 0


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed",
)
def test_socket_activated_workers_serve_the_sockets_systemd_passed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """linerelay.socket and linerelay-admin.socket with `--workers 2`:
    systemd-socket-activate stands in for systemd and passes both sockets."""
    port, admin = free_port(), free_port()
    config = tmp_path / "relay.toml"
    config.write_text(relay_config(redis_server))
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "systemd-socket-activate",
                *("-l", f"127.0.0.1:{port}", "-l", f"127.0.0.1:{admin}"),
                "--fdname=public:admin",
                # It passes on no variable unasked: the code under test is found through this one.
                *(("-E", "PYTHONPATH") if "PYTHONPATH" in os.environ else ()),
                *(LINERELAY, "serve", "--config", str(config), "--workers", "2"),
                *("--state-dir", str(tmp_path / "state")),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            # The first connection starts the relay, as a socket unit would.
            try:
                return httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "the socket-activated workers", timeout=60, interval=0.2)

        def events(name: str) -> list[dict[str, Any]]:
            lines = (json.loads(text) for text in log.read_text().splitlines() if text[:1] == "{")
            return [line for line in lines if line.get("event") == name]

        (starting,) = events("workers starting")
        assert starting["socket_activated"] == ["admin", "public"]
        wait_for(lambda: sorted(line["worker"] for line in events("relay serving")) == [1, 2])
        added = add_redis_tenant(redis_server.url)
        body = webhook_body("activated")
        answer = httpx.post(
            f"https://127.0.0.1:{port}/webhook/{added.id}",
            content=body,
            headers={"x-line-signature": sign(added.secret.encode(), body)},
            verify=tls_context(StateDir(tmp_path / "state").pki / "root.pem"),
            timeout=TIMEOUT,
        )
        assert answer.status_code == 200
    finally:
        stop(proc, TIMEOUT)
    assert proc.returncode == 0
