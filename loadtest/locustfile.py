"""The Locust side of ``linerelay loadtest``: webhook users, bridge users, load shapes.

Started by :mod:`loadtest.cli` (``locust -f`` this file) with the run's
:class:`~loadtest.config.RunConfig` in the environment. Every process counts
into its own :class:`~loadtest.tally.Tally`; workers ship theirs to the
master once a second (Locust custom messages), the master merges them and,
before ending the run, asks every worker for its last counts
(:mod:`loadtest.closing`). The master (or the single local process) writes
``tally.json`` into the report directory when the test stops, for the
command to judge. Targets for each webhook and bridge come from
:mod:`loadtest.routing`.

- :class:`WebhookUser` (FastHttpUser) posts signed LINE-like webhooks at a
  constant per-user throughput, over keep-alive connections (one per
  target) with a share of requests closing theirs, as LINE's client does.
- :class:`BridgeUser` holds one bridge WebSocket per tenant, acks every
  delivery and counts it, with its end-to-end latency, into the tally; with
  ``--gateway`` it then answers through the simulated Messaging API. It
  speaks what ``linerelay bridge`` speaks (bridge/wire.py): protocol 2, one
  ack per batch, unless the relay selects protocol 1 or ``--bridge-protocol
  1`` asks for it.
- :class:`SteadyShape`, :class:`SpikeShape`, :class:`SoakShape`: the run's
  profile over time, then a drain period with only the bridges left.

Only the webhooks reach Locust's statistics (its request event): the
bridges' deliveries, connections and gateway calls are counted in the tally
alone, so that every Locust table and chart, in the report and the live web
UI, is about the webhooks LINE's platform posts (a 40/s run shows 40/s).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import random
import ssl
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.lock
import gevent.pool
import gevent.ssl
from locust import FastHttpUser, LoadTestShape, User, constant, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
from locust.event import EventHook
from locust.runners import MasterRunner, WorkerRunner
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from appliance import protocol
from appliance.signature import sign, verify
from bridge.wire import acks, delivered, negotiated, offer
from loadtest.closing import FinalCounts
from loadtest.config import RunConfig, Tenant
from loadtest.events import (
    Templates,
    WebhookFactory,
    destination_for,
    gateway_calls,
    marker_of,
    ulid_ms,
)
from loadtest.pacing import Pace, drain_done, users_at
from loadtest.routing import Routing, bridge_url, webhook_url
from loadtest.tally import BAD_FRAME, CHURN, CONNECT, TALLY_FILE, Tally

CONFIG = RunConfig.from_env()
PACE = Pace(CONFIG.rate, CONFIG.users, CONFIG.per_user_rate)
ROUTING = Routing(CONFIG.targets, CONFIG.bridge_targets, CONFIG.shared_store)
TALLY = Tally()
#: Worker -> master: a worker's counts since its last message.
TALLY_MESSAGE = "linerelay_tally"
#: Master -> workers: send your counts, answering this round with your next stats report.
FLUSH_MESSAGE = "linerelay_flush"
#: The key of a worker's stats report (Locust's ``report_to_master``) that answers a round.
ROUND_KEY = "linerelay_round"
FINAL_COUNTS = FinalCounts()
#: On a worker: the round the master asked for and the next stats report answers.
_ASKED: dict[str, int] = {}
#: One delta at a time leaves a worker, so deltas reach the master in the order taken.
_SEND_LOCK = gevent.lock.Semaphore()
#: Bridge users started in this process, to spread their connections over the targets.
_BRIDGE_NUMBERS = itertools.count()
_log = logging.getLogger(__name__)
#: Gateway calls one bridge host has in flight at most.
GATEWAY_CONCURRENCY = 50
#: A channel access token for the simulated gateway, which only checks that there is one.
GATEWAY_HEADERS = {"Authorization": "Bearer loadtest-channel-token"}
#: How long a bridge waits before reconnecting after a drop (a real bridge backs off too).
RECONNECT_PAUSE = 0.5

#: The gateway sessions' request event: Locust's own would put the calls in its statistics.
GATEWAY_CALLS = EventHook()  # type: ignore[no-untyped-call]

_rng = random.Random()  # noqa: S311 - traffic generation, not security
_factory = WebhookFactory(Templates.load(), CONFIG.mix, _rng)


def _ssl_context(**_: Any) -> ssl.SSLContext:
    """A verifying client context trusting every ``--ca`` (or the system store)."""
    cafiles = CONFIG.ca_files
    context: ssl.SSLContext = gevent.ssl.create_default_context(
        cafile=cafiles[0] if cafiles else None
    )
    for cafile in cafiles[1:]:
        context.load_verify_locations(cafile=cafile)
    return context


class WebhookUser(FastHttpUser):
    """LINE's platform: signed webhooks at a constant per-user throughput."""

    # Requests name whole URLs (several targets); Locust still wants a base.
    host = CONFIG.targets[0]
    wait_time = constant_throughput(CONFIG.per_user_rate)
    insecure = False
    ssl_context_factory = staticmethod(_ssl_context)
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        """Start each user's turn over the targets at a different one."""
        self._sequence = _rng.randrange(len(CONFIG.targets))

    @task
    def send_webhook(self) -> None:
        """Build, sign and post one webhook to its target; count its answer."""
        tenant = _rng.choice(CONFIG.tenants)
        target = ROUTING.webhook_target(tenant, self._sequence)
        self._sequence += 1
        hook = _factory.build(destination_for(tenant.tenant), int(time.time() * 1000))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "LineBotWebhook/2.0",
            "x-line-signature": sign(tenant.channel_secret.encode(), hook.body),
        }
        if _rng.random() < CONFIG.new_connection_ratio:
            headers["Connection"] = "close"
        sent_at = time.time()
        started = time.perf_counter()
        with self.client.post(
            webhook_url(CONFIG.targets[target], tenant.tenant),
            # Locust's hints say str, but bytes go out as they are: the signed bytes exactly.
            data=hook.body,  # type: ignore[arg-type]
            headers=headers,
            name=f"webhook {hook.kind}",
            catch_response=True,
        ) as answer:
            ms = (time.perf_counter() - started) * 1000
            status = answer.status_code or 0
            if status == 0:
                reason = type(answer.error).__name__ if answer.error else "no answer"
                TALLY.failed(reason, ms, target=target, sent_at=sent_at)
                answer.failure(answer.error or "no answer")
                return
            TALLY.answered(status, ms, hook.marker, target=target, sent_at=sent_at)
            if status != 200:
                answer.failure(f"HTTP {status}")
            elif ms > CONFIG.budget_ms:
                answer.failure(
                    f"answered after {ms:.0f} ms, over the {CONFIG.budget_ms:g} ms budget"
                )
            else:
                answer.success()


class BridgeUser(User):
    """A bridge host: one WebSocket per tenant, acking every delivery.

    Each tenant's connection goes to the tenant's node, or with a shared
    store to a bridge target picked by tenant and bridge number, so that
    bridges of one tenant spread over the nodes.
    """

    abstract = not CONFIG.with_bridges
    fixed_count = CONFIG.bridges
    wait_time = constant(1)

    def on_start(self) -> None:
        """Open one bridge connection per tenant, each in its own greenlet."""
        self._running = True
        self._sockets: dict[str, ClientConnection] = {}
        # Answers go out after the ack, as a bridge works; a full pool holds up receiving.
        self._answers = gevent.pool.Pool(GATEWAY_CONCURRENCY)
        self._api = (
            FastHttpSession(
                CONFIG.gateway,
                GATEWAY_CALLS,
                self,
                insecure=False,
                ssl_context_factory=_ssl_context,
                concurrency=GATEWAY_CONCURRENCY,
            )
            if CONFIG.gateway
            else None
        )
        runner = self.environment.runner
        number = next(_BRIDGE_NUMBERS) + int(getattr(runner, "worker_index", 0))
        self._holders = [
            gevent.spawn(self._hold, tenant, ROUTING.bridge_target(i, tenant, number))
            for i, tenant in enumerate(CONFIG.tenants)
        ]

    def on_stop(self) -> None:
        """Close every connection; the relay redelivers what was not acked."""
        self._running = False
        for ws in list(self._sockets.values()):
            ws.close()
        gevent.killall(self._holders, block=True, timeout=5)

    @task
    def idle(self) -> None:
        """Deliveries arrive on the connections' greenlets; the user itself only waits."""

    def _hold(self, tenant: Tenant, target: int) -> None:
        url = bridge_url(CONFIG.bridge_targets[target])
        context = _ssl_context() if url.startswith("wss:") else None
        while self._running:
            pause = RECONNECT_PAUSE
            try:
                with connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {tenant.bridge_token}"},
                    ssl=context,
                    open_timeout=15,
                    # A protocol 2 batch carries up to the relay's bridge_window_bytes of bodies.
                    max_size=2**25,
                    subprotocols=offer(CONFIG.bridge_protocol),
                ) as ws:
                    TALLY.bridge_event(CONNECT)
                    self._sockets[tenant.tenant] = ws
                    self._receive(tenant, target, ws, negotiated(ws.subprotocol))
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                if self._running:
                    TALLY.connection_failed(_reason(exc))
                if isinstance(exc, InvalidStatus) and exc.response.status_code == 429:
                    # Reconnecting too often for the relay (PROTOCOL.md §2): as a real bridge does.
                    wait = exc.response.headers.get("Retry-After", "")
                    pause = max(pause, float(wait) if wait.isdigit() else pause)
            finally:
                self._sockets.pop(tenant.tenant, None)
            gevent.sleep(pause)

    def _receive(self, tenant: Tenant, target: int, ws: ClientConnection, version: int) -> None:
        churn_at = (
            time.monotonic() + CONFIG.churn_seconds * _rng.uniform(0.5, 1.5)
            if CONFIG.churn_seconds
            else None
        )
        secret = tenant.channel_secret.encode()
        while True:
            if churn_at is not None and time.monotonic() >= churn_at:
                TALLY.bridge_event(CHURN)
                return
            try:
                text = ws.recv(timeout=1.0)
            except TimeoutError:
                continue
            try:
                frame = protocol.decode(text)
            except protocol.FrameError:
                TALLY.bridge_event(BAD_FRAME)
                continue
            hooks = delivered(frame)
            if hooks:
                ours = [hook for hook in hooks if self._deliver(hook, secret, target)]
                for ack in acks([hook.id for hook in hooks], version):
                    ws.send(ack)
                if self._api is not None:
                    for hook in ours:
                        self._answers.spawn(self._answer, hook.body)
            elif isinstance(frame, protocol.Hello) and frame.tenant != tenant.tenant:
                # A hello for another tenant on this tenant's token.
                TALLY.bridge_event(BAD_FRAME)

    def _answer(self, body: str) -> None:
        """Call the gateway as a bridge would for ``body`` (the tally counts each call)."""
        assert self._api is not None
        for path, payload in gateway_calls(body):
            name = "reply" if path.endswith("/reply") else "loading"
            self._api.post(path, json=payload, headers=GATEWAY_HEADERS, name=name)

    def _deliver(self, frame: protocol.Webhook, secret: bytes, target: int) -> bool:
        """Count one delivery; whether the body was ours, with a valid signature."""
        body = frame.body.encode("utf-8")
        marker = marker_of(body) if verify(secret, body, frame.signature) else None
        sent_ms = ulid_ms(marker) if marker else None
        now = time.time()
        e2e = now * 1000 - sent_ms if sent_ms is not None else None
        TALLY.delivered_one(marker, e2e, redelivery=frame.attempt > 1, target=target, at=now)
        return marker is not None


def _reason(exc: Exception) -> str:
    """Why a bridge connection failed or broke, as the tally counts it."""
    if isinstance(exc, InvalidStatus):
        # The relay's refusal says more by its status (401 token, 429 too many attempts).
        return f"{type(exc).__name__} {exc.response.status_code}"
    return type(exc).__name__


def _on_gateway_call(
    name: str, response_time: float, exception: BaseException | None, **_: Any
) -> None:
    TALLY.gateway_call(name, response_time, ok=exception is None)


class _ProfileShape(LoadTestShape):
    """Webhook users per the profile, plus the bridges; then the drain, bridges only."""

    abstract = True
    profile = "steady"

    def tick(self) -> tuple[int, float] | None:
        """The user count now, or None once the drain is done and every count is in."""
        t: float = self.get_run_time()  # type: ignore[no-untyped-call]
        pending = TALLY.pending if CONFIG.with_bridges else 0
        bridges = CONFIG.bridges if CONFIG.with_bridges else 0
        # Webhook users told to stop still finish the request they are in; its answer counts.
        running = max(0, self.runner.user_count - bridges) if self.runner else 0
        users = users_at(self.profile, t, PACE, CONFIG.duration) + bridges
        shape = (users, max(50.0, 10.0 * PACE.users))
        if not drain_done(t, CONFIG.duration, CONFIG.drain, pending, running):
            FINAL_COUNTS.cancel()
            return shape
        return None if self._counts_in() else shape

    def _counts_in(self) -> bool:
        """Whether every worker's counts are in; asks for them the first time."""
        runner = self.runner
        if not isinstance(runner, MasterRunner):
            return True
        clock = time.monotonic()
        if not FINAL_COUNTS.is_open:
            workers = runner.clients.ready + runner.clients.spawning + runner.clients.running
            number = FINAL_COUNTS.open([w.id for w in workers], clock)
            runner.send_message(FLUSH_MESSAGE, {"round": number})
            return False
        if not FINAL_COUNTS.settled(clock):
            return False
        if FINAL_COUNTS.missing():
            _log.warning("workers %s sent no final counts", sorted(FINAL_COUNTS.missing()))
        return True


class SteadyShape(_ProfileShape):
    """The steady rate for the whole duration."""

    abstract = CONFIG.profile != "steady"
    profile = "steady"


class SpikeShape(_ProfileShape):
    """The steady rate with a burst of ten times it in the middle of the run."""

    abstract = CONFIG.profile != "spike"
    profile = "spike"


class SoakShape(_ProfileShape):
    """The steady rate for a long run; the command turns bridge churn on for it."""

    abstract = CONFIG.profile != "soak"
    profile = "soak"


def _flush(environment: Environment) -> None:
    """A worker's delta to the master, if it counted anything."""
    with _SEND_LOCK:
        delta = TALLY.take()
        if environment.runner is None:
            return
        if delta.counted:
            environment.runner.send_message(TALLY_MESSAGE, {"tally": delta.to_wire()})


def _flusher(environment: Environment) -> None:
    while True:
        gevent.sleep(1.0)
        _flush(environment)


def _on_flush(environment: Environment, msg: Any, **_: Any) -> None:
    # Answered by the next stats report, not at once: Locust sends a worker's own
    # request statistics only with those reports, so once a round is answered the
    # master has Locust's figures too, not only the tally (loadtest/closing.py).
    _ASKED["round"] = int(msg.data["round"])


def _on_report_to_master(environment: Environment, data: dict[str, Any], **_: Any) -> None:
    round_number = _ASKED.pop("round", None)
    if round_number is None:
        return
    _flush(environment)  # ahead of this report: one worker's messages arrive in order
    data[ROUND_KEY] = round_number


def _on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    if ROUND_KEY in data:
        FINAL_COUNTS.answered(client_id, int(data[ROUND_KEY]))


def _on_tally(environment: Environment, msg: Any, **_: Any) -> None:
    TALLY.merge(Tally.from_wire(msg.data["tally"]))


def _on_init(environment: Environment, **_: Any) -> None:
    # Locust's event hooks carry no type hints, so mypy --strict cannot check add_listener.
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(TALLY_MESSAGE, _on_tally)
        environment.events.worker_report.add_listener(_on_worker_report)  # type: ignore[no-untyped-call]
    elif isinstance(environment.runner, WorkerRunner):
        environment.runner.register_message(FLUSH_MESSAGE, _on_flush)
        environment.events.report_to_master.add_listener(  # type: ignore[no-untyped-call]
            functools.partial(_on_report_to_master, environment)
        )
        gevent.spawn(_flusher, environment)


def _on_test_stop(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        _flush(environment)
        return
    report = Path(CONFIG.report_dir) / TALLY_FILE
    tmp = report.with_suffix(".tmp")
    tmp.write_text(json.dumps(TALLY.to_wire()), "utf-8")
    tmp.replace(report)


# Locust's event hooks carry no type hints, so mypy --strict cannot check these calls.
events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_on_test_stop)  # type: ignore[no-untyped-call]
GATEWAY_CALLS.add_listener(_on_gateway_call)  # type: ignore[no-untyped-call]
