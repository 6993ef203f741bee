"""Shared pieces of the relay's integration tests.

Real parts only: a :class:`Harness` wraps one :class:`RelayProcess` (a real
``linerelay serve``), registers tenants in its real tenants file and
remembers every secret, token and signature a module used, so the module can
check at teardown that none of them reached the relay's log. :class:`Bridge` is a
python-websockets client speaking the bridge protocol (PROTOCOL.md §2), version 1
unless opened with ``protocol=2`` (it then offers the ``linerelay.v2`` subprotocol);
:class:`H2Bridge` the same over HTTP/2 extended CONNECT (RFC 8441).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.events
import h2.exceptions
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection, Message, Ping, TextMessage

from appliance.protocol import SUBPROTOCOL_V2
from appliance.signature import sign
from bench.attacks import H2Client, Target, h2_headers
from tests.support.bodies import tag_of, webhook_body
from tests.support.redis import RedisServer, relay_config
from tests.support.relay import RelayProcess, linerelay
from tests.support.tenants import add_tenant
from tests.support.waiting import TIMEOUT, async_wait_for, wait_for

# TIMEOUT, the waits and the bodies are tests/support's, re-exported: test modules
# (other branches' new ones too) import them from here.
__all__ = [
    "TIMEOUT",
    "Bridge",
    "Harness",
    "Tenant",
    "async_client",
    "async_wait_for",
    "close_code",
    "post",
    "post_tags",
    "running_relay",
    "tag_of",
    "tls_context",
    "wait_for",
    "webhook_body",
]


def tls_context(*cafiles: Path) -> ssl.SSLContext:
    """A client context trusting only ``cafiles`` (the relay's dev root, usually)."""
    context = ssl.create_default_context(cafile=str(cafiles[0]))
    for cafile in cafiles[1:]:
        context.load_verify_locations(cafile=str(cafile))
    return context


@dataclass(frozen=True)
class Tenant:
    """A tenant of the relay, with everything a test needs of it."""

    id: str
    secret: str
    token: str
    url: str


@dataclass
class Harness:
    """One relay process and every sensitive value a test module gave it."""

    relay: RelayProcess
    sensitive: set[str] = field(default_factory=set)
    #: Roots clients trust; empty: the relay's dev root.
    trust: tuple[Path, ...] = ()

    @property
    def ssl(self) -> ssl.SSLContext:
        """A fresh client context trusting :attr:`trust` (default: the relay's dev root)."""
        return tls_context(*(self.trust or (self.relay.ca_file,)))

    def tenant(self, prefix: str = "t") -> Tenant:
        """A fresh tenant (unique id, random secret) in the relay's real tenants file
        (tests/support/tenants.py)."""
        added = add_tenant(self.relay.state_dir, prefix=prefix)
        self.sensitive.update((added.secret, added.token))
        return Tenant(added.id, added.secret, added.token, self.relay.webhook_url(added.id))

    def remember(self, value: str) -> str:
        """Record a sensitive value the test made itself (a token, a wrong signature)."""
        self.sensitive.add(value)
        return value

    def sign(self, secret: str, body: bytes) -> str:
        """LINE's signature of ``body`` under ``secret``; remembered for the log scan."""
        return self.remember(sign(secret.encode(), body))

    def headers(self, tenant: Tenant, body: bytes) -> dict[str, str]:
        """Headers of a correctly signed webhook request."""
        return {"x-line-signature": self.sign(tenant.secret, body)}

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``linerelay ARGS --state-dir STATE`` and return the result (never raises)."""
        return linerelay(*args, state_dir=self.relay.state_dir, stdin=stdin, check=False)

    def leaks(self) -> list[str]:
        """Sensitive values that appear in the relay's output."""
        output = self.relay.output()
        return sorted(value for value in self.sensitive if value in output)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The relay's JSON log lines whose ``event`` is ``event``."""
        found = []
        for line in self.relay.output().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on the admin listener's /metrics (0 when absent)."""
        text = self.relay.metrics()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


@contextmanager
def running_relay(
    factory: pytest.TempPathFactory,
    name: str,
    config: str | None = None,
    expected_errors: tuple[str, ...] = (),
    listen: str | None = None,
    tls: bool = True,
    admin_token: str | None = None,
) -> Iterator[Harness]:
    """A started relay for a test module (``listen``, ``tls``: see :class:`RelayProcess`;
    ``admin_token``: set with ``linerelay admin-token --token-file`` before it starts).

    On teardown the relay is stopped and its whole log scanned for every
    secret, token and signature the module used. ``expected_errors`` are the
    events of error-level lines the module provokes on purpose (the end of
    the run checks there are no others).
    """
    state = factory.mktemp(name) / "state"
    if admin_token is not None:
        linerelay("admin-token", "--token-file", "-", state_dir=state, stdin=admin_token)
    relay = RelayProcess(
        state,
        config=config,
        expected_errors=expected_errors,
        listen=listen,
        tls=tls,
        admin_token=admin_token,
    ).start()
    harness = Harness(relay)
    if admin_token is not None:
        harness.sensitive.add(admin_token)
    try:
        yield harness
    finally:
        relay.stop()
    leaked = harness.leaks()
    assert not leaked, f"relay log {relay.log_file} contains {len(leaked)} secret(s)/token(s)"


class Bridge:
    """A bridge connection: python-websockets on real TLS, speaking PROTOCOL.md §2."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello

    @classmethod
    async def open(
        cls,
        harness: Harness,
        token: str,
        *,
        in_url: bool = False,
        protocol: int = 1,
        timeout: float = TIMEOUT,
    ) -> Bridge:
        """Connect with ``token`` (as a Bearer header, or in the URL), offering
        ``linerelay.v2`` when ``protocol`` is 2, and read the hello."""
        relay = harness.relay
        if in_url:
            url, headers = f"{relay.bridge_url}/{token}", {}
        else:
            url, headers = relay.bridge_url, {"Authorization": f"Bearer {token}"}
        ws = await connect(
            url,
            ssl=harness.ssl,
            additional_headers=headers,
            max_size=None,
            open_timeout=timeout,
            subprotocols=[Subprotocol(SUBPROTOCOL_V2)] if protocol == 2 else None,
        )
        bridge = cls(ws, {})
        bridge.hello = await bridge.frame(timeout)
        return bridge

    async def __aenter__(self) -> Bridge:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (webhooks not acked stay queued at the relay)."""
        await self.ws.close()

    async def frame(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame, whatever its type."""
        text = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(text, str), "the relay sent a binary frame"
        frame: dict[str, Any] = json.loads(text)
        return frame

    async def webhook(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame, which must be a webhook."""
        frame = await self.frame(timeout)
        assert frame["type"] == "webhook", frame
        return frame

    async def webhooks(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The next ``count`` webhook frames."""
        return [await self.webhook(timeout) for _ in range(count)]

    async def take(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The next ``count`` webhook frames, each acked."""
        frames = await self.webhooks(count, timeout)
        for frame in frames:
            await self.ack(frame)
        return frames

    async def silent_for(self, seconds: float) -> bool:
        """True if no frame arrives within ``seconds``."""
        try:
            frame = await self.frame(seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"expected no frame, got {frame}")

    async def ack(self, frame: dict[str, Any]) -> None:
        """Acknowledge a webhook frame."""
        await self.ws.send(json.dumps({"type": "ack", "id": frame["id"]}))

    async def nack(self, frame: dict[str, Any], reason: str = "busy") -> None:
        """Refuse a webhook frame; the relay redelivers it after a backoff."""
        await self.ws.send(json.dumps({"type": "nack", "id": frame["id"], "reason": reason}))

    # -- protocol 2 -------------------------------------------------------------

    async def batch(self, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The items of the next frame, which must be a protocol 2 ``webhooks`` batch."""
        frame = await self.frame(timeout)
        assert frame["type"] == "webhooks", frame
        items: list[dict[str, Any]] = frame["items"]
        assert items, "an empty batch"
        return items

    async def items(self, count: int, timeout: float = TIMEOUT) -> list[list[dict[str, Any]]]:
        """Batches until they hold ``count`` webhooks (no more); the batches as received."""
        batches: list[list[dict[str, Any]]] = []
        while sum(map(len, batches)) < count:
            batches.append(await self.batch(timeout))
        assert sum(map(len, batches)) == count, f"more than {count} webhooks: {batches}"
        return batches

    async def ack_ids(self, *ids: str) -> None:
        """One protocol 2 ack naming ``ids``."""
        await self.ws.send(json.dumps({"type": "ack", "ids": list(ids)}))


async def close_code(bridge: Bridge, timeout: float) -> int | None:
    """The code the relay closes ``bridge`` with, reading (and dropping) frames until then."""
    try:
        while True:
            await bridge.frame(timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def post(
    client: httpx.AsyncClient, harness: Harness, tenant: Tenant, body: bytes
) -> httpx.Response:
    """POST ``body`` to ``tenant``'s webhook URL, signed."""
    return await client.post(tenant.url, content=body, headers=harness.headers(tenant, body))


async def post_tags(harness: Harness, tenant: Tenant, *tags: str) -> list[bytes]:
    """Post one webhook per tag, in order; each must be accepted. Returns the bodies."""
    bodies = [webhook_body(tag) for tag in tags]
    async with async_client(harness) as client:
        for body in bodies:
            response = await post(client, harness, tenant, body)
            assert response.status_code == 200, response.text
    return bodies


def async_client(harness: Harness, *, http2: bool = False) -> httpx.AsyncClient:
    """An httpx client trusting the relay's dev root."""
    return httpx.AsyncClient(verify=harness.ssl, http2=http2, timeout=TIMEOUT)


class H2Bridge:
    """A bridge over HTTP/2 extended CONNECT (RFC 8441), the path Hypercorn serves:
    h2 and wsproto on real TLS, since no stock WebSocket client speaks it.

    A task reads the connection, answers pings and the close handshake (unless
    ``silent``) and queues text frames; :attr:`ended` is set when the relay
    closes the connection.
    """

    def __init__(self, client: H2Client, stream: int, silent: bool) -> None:
        self.client = client
        self.stream = stream
        self.silent = silent
        self.ws = WSConnection(ConnectionType.CLIENT)
        #: The headers of the relay's answer to the CONNECT.
        self.response: dict[str, str] = {}
        self.answered = asyncio.Event()
        self.frames: asyncio.Queue[str] = asyncio.Queue()
        #: The code of the relay's WebSocket close frame, once one came.
        self.close_code: int | None = None
        self.ended = asyncio.Event()
        self._partial = ""
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(
        cls, harness: Harness, token: str, *, offer: str | None = None, silent: bool = False
    ) -> H2Bridge:
        """Connect with ``token``, offering the WebSocket extensions ``offer``. ``silent``:
        send nothing once connected, no pong, no answer to a close (a dead peer)."""
        relay = harness.relay
        target = Target("127.0.0.1", relay.port, str(relay.ca_file))
        client = await H2Client.open(target, "127.0.0.1")
        async with asyncio.timeout(TIMEOUT):
            while not client.conn.remote_settings.enable_connect_protocol:
                assert await client.events(), "the relay closed before its SETTINGS"
        stream = client.conn.get_next_available_stream_id()
        extra = [
            (":protocol", "websocket"),
            ("sec-websocket-version", "13"),
            ("authorization", f"Bearer {token}"),
        ]
        if offer is not None:
            extra.append(("sec-websocket-extensions", offer))
        client.conn.send_headers(
            stream, client.request_headers("CONNECT", "/bridge", target.authority, extra)
        )
        await client.flush()
        bridge = cls(client, stream, silent)
        await asyncio.wait_for(bridge.answered.wait(), TIMEOUT)
        assert bridge.response.get(":status") == "200", bridge.response
        return bridge

    async def frame(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next text frame, parsed."""
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.frames.get(), timeout))
        return frame

    async def send(self, text: str) -> None:
        """Send one text frame."""
        self.client.conn.send_data(self.stream, self.ws.send(Message(data=text)))
        await self.client.flush()

    async def close(self) -> None:
        """Drop the TCP/TLS connection."""
        self._reader.cancel()
        await self.client.close()

    async def _read(self) -> None:
        conn = self.client.conn
        try:
            while events := await self.client.events():
                for event in events:
                    if getattr(event, "stream_id", self.stream) != self.stream:
                        continue
                    if isinstance(event, h2.events.ResponseReceived):
                        self.response = h2_headers(event)
                        self.answered.set()
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, self.stream)
                        # Not a refusal's body, nor the empty frame ending the stream after a close.
                        if self.response.get(":status") == "200" and self.close_code is None:
                            self.ws.receive_data(event.data)
                            self._websocket_events()
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return
                await self.client.flush()
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            return
        finally:
            self.ended.set()

    def _websocket_events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self.frames.put_nowait(self._partial)
                    self._partial = ""
            elif isinstance(event, Ping) and not self.silent:
                self.client.conn.send_data(self.stream, self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if not self.silent:
                    self.client.conn.send_data(self.stream, self.ws.send(event.response()))


@contextmanager
def relay_nodes(
    server: RedisServer, tmp_path_factory: pytest.TempPathFactory, **config: object
) -> Iterator[tuple[Harness, Harness]]:
    """Two relay nodes (``a`` and ``b``) on ``server``'s Redis, with ``config`` keys; each
    node's log is checked for error lines once both are stopped."""
    toml = relay_config(server, **config)
    relays = [
        RelayProcess(tmp_path_factory.mktemp(f"node-{name}") / "state", config=toml).start()
        for name in "ab"
    ]
    try:
        yield Harness(relays[0]), Harness(relays[1])
    finally:
        for relay in relays:
            relay.stop()
    for relay in relays:
        assert not relay.log_problems(), relay.log_problems()
