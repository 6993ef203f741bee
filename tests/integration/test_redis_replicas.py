"""``redis_min_replicas``: a 200 waits until that many replicas have the webhook (issue 10).

Real parts: a primary ``redis-server`` (AOF, ``appendfsync always``) and a
replica of it (``--replicaof``, configured the same), one ``linerelay serve``
on the primary, a bridge over a real TLS WebSocket. A replica that hangs is
frozen with SIGSTOP: its primary still counts it connected, and ``WAIT 1``
falls short.

What a 503 for a missing replica means (docs/redis.md): the primary already
has the webhook, so it is delivered all the same (at least once); LINE retries
it, and the retry is a known retry: answered 200 once the replica confirms it,
and not delivered again.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.helpers import (
    Bridge,
    Harness,
    Tenant,
    async_client,
    post,
    tag_of,
    wait_for,
    webhook_body,
)
from tests.support.redis import (
    RedisServer,
    add_redis_tenant,
    relay_config,
    running_redis,
    running_replica,
)
from tests.support.relay import RelayProcess

pytestmark = pytest.mark.integration

#: Short, so that a test of the 503 is short; the WAIT for replicas gets as long.
ACK_DEADLINE_MS = 500
#: What the answer may take past the deadline on a busy two-core machine.
SLACK_S = 0.5
BEHIND = "store: Redis replicas behind, webhooks answered 503"


@contextmanager
def relay_on(
    primary: RedisServer, directory: Path, **config: object
) -> Iterator[tuple[Harness, Tenant]]:
    """One relay on ``primary`` with ``config`` keys, and a tenant it serves; the relay's
    log is checked for error lines once it is stopped."""
    added = add_redis_tenant(primary.url)
    toml = relay_config(primary, ack_deadline_ms=ACK_DEADLINE_MS, **config)
    relay = RelayProcess(directory / "state", config=toml).start()
    harness = Harness(relay, {added.secret, added.token})
    try:
        yield harness, Tenant(added.id, added.secret, added.token, relay.webhook_url(added.id))
    finally:
        relay.stop()
    assert not relay.log_problems(), relay.log_problems()
    assert not harness.leaks()


def answered(harness: Harness, outcome: str) -> float:
    return harness.metric("linerelay_webhooks_total", outcome=outcome)


def reload_with(harness: Harness, primary: RedisServer, **config: object) -> None:
    """Rewrite the relay's config with ``config`` keys, SIGHUP, and wait until applied."""
    config_file = harness.relay.config_file
    assert config_file is not None
    done = len(harness.log_events("reload: certificate loaded"))
    config_file.write_text(relay_config(primary, ack_deadline_ms=ACK_DEADLINE_MS, **config))
    harness.relay.signal(signal.SIGHUP)
    wait_for(
        lambda: len(harness.log_events("reload: certificate loaded")) > done,
        "the relay to apply the reload",
    )


async def test_without_its_replica_a_webhook_is_503_yet_delivered_and_its_retry_200_not_again(
    tmp_path: Path,
) -> None:
    with (
        running_redis(tmp_path / "primary") as primary,
        running_replica(tmp_path / "replica", primary) as replica,
        relay_on(primary, tmp_path, redis_min_replicas=1) as (harness, tenant),
    ):
        bridge = await Bridge.open(harness, tenant.token)
        async with bridge, async_client(harness) as client:
            # The replica up and in sync: a 200, and the bridge gets it.
            response = await post(client, harness, tenant, webhook_body("with-replica"))
            assert response.status_code == 200, response.text
            assert [tag_of(f) for f in await bridge.take(1)] == ["with-replica"]

            # The replica hangs: no 200 the replica has not confirmed.
            replica.pause()
            unconfirmed = webhook_body("replica-hung")
            signature = harness.sign(tenant.secret, unconfirmed)
            started = time.perf_counter()
            response = await client.post(
                tenant.url, content=unconfirmed, headers={"x-line-signature": signature}
            )
            took = time.perf_counter() - started
            assert response.status_code == 503, response.text
            assert response.json() == {"error": "overloaded"}
            assert response.headers.get("retry-after")
            assert took < ACK_DEADLINE_MS / 1000 + SLACK_S, took
            # Counted as a 503 of the ack deadline (WAIT is given the whole deadline,
            # so it usually ends just after it: "overloaded"; "store_error" if the
            # WAIT's answer lands first), and the store says why, once.
            wait_for(
                lambda: answered(harness, "overloaded") + answered(harness, "store_error") == 1,
                "the 503 to be counted",
            )
            (behind,) = wait_for(lambda: harness.log_events(BEHIND), "the store to say why")
            assert (behind["level"], behind["needed"]) == ("warning", 1)

            # The primary has it: it is delivered all the same (at least once).
            frame = await bridge.webhook()
            assert (tag_of(frame), frame["attempt"]) == ("replica-hung", 1)
            assert frame["body"].encode() == unconfirmed
            await bridge.ack(frame)

            # The replica back and in sync: LINE's retry (the same bytes and
            # signature) is answered 200 as a known retry and not delivered again.
            replica.resume()
            wait_for(lambda: primary.replicas_in_sync() >= 1, "the replica to catch up")
            response = await client.post(
                tenant.url, content=unconfirmed, headers={"x-line-signature": signature}
            )
            assert response.status_code == 200, response.text
            wait_for(lambda: answered(harness, "duplicate") == 1, "the retry counted a duplicate")
            response = await post(client, harness, tenant, webhook_body("after-retry"))
            assert response.status_code == 200, response.text
            # The next frame is the next webhook: the retry was not delivered again.
            assert [tag_of(f) for f in await bridge.take(1)] == ["after-retry"]
            assert harness.log_events("store: Redis replicas caught up")


async def test_redis_min_replicas_raised_on_reload_makes_a_relay_without_replicas_answer_503(
    tmp_path: Path,
) -> None:
    with (
        running_redis(tmp_path / "primary") as primary,
        relay_on(primary, tmp_path, redis_min_replicas=0) as (harness, tenant),
    ):
        # A new client per answer: after a 503 the relay may close the connection.
        async with async_client(harness) as client:
            response = await post(client, harness, tenant, webhook_body("no-replica-needed"))
            assert response.status_code == 200, response.text

        reload_with(harness, primary, redis_min_replicas=1)
        async with async_client(harness) as client:
            response = await post(client, harness, tenant, webhook_body("one-replica-needed"))
            assert response.status_code == 503, response.text
        wait_for(lambda: harness.log_events(BEHIND), "the store to say the replica is missing")

        reload_with(harness, primary, redis_min_replicas=0)
        async with async_client(harness) as client:
            response = await post(client, harness, tenant, webhook_body("none-needed-again"))
            assert response.status_code == 200, response.text
        assert not harness.log_events("reload: these keys need a restart")
