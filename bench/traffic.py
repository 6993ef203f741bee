"""Legitimate traffic for the abuse harness and the fuzzer, and what it saw.

:class:`Legit` posts signed, unique webhooks to one tenant at a steady rate
(open loop: latency counts from when a request was due, so a stalled relay
shows as latency, not as a slower sender) over a few keep-alive HTTP/1.1
connections from 127.0.0.1, plus one request a second on a fresh connection
(LINE opens new connections too, and a relay out of file descriptors fails
those first). An acking bridge of the same tenant records every body it is
handed, so a 200 that never reaches the bridge is found.

:class:`ProcessWatch` samples a process's RSS and open fds from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import connect as ws_connect

from appliance.protocol import Webhook, decode
from appliance.signature import sign
from bench.attacks import Target, open_tcp, read_response, request_bytes
from bench.common import body_600
from bridge.wire import OFFER, acks, delivered, negotiated

#: A request not answered in this long counts as failed (status 0).
REQUEST_TIMEOUT = 10.0
#: How the relay marks a line an operator must act on.
ERROR_LEVELS = (b'"level":"error"', b'"level":"critical"')
#: Shapes a secret can take in a log line: hex secrets and URL-safe tokens, base64 signatures.
_WORDS = re.compile(rb"[A-Za-z0-9_-]{16,}")
_SIGNATURES = re.compile(rb"[A-Za-z0-9+/]{43}=")


@dataclass(frozen=True, slots=True)
class Sample:
    """One legitimate request: when it was due, how long until its answer, the status."""

    due: float
    latency: float
    status: int  # 0: no answer (timeout, reset, refused)
    fresh: bool  # sent on a new connection


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def latency_stats(samples: list[Sample]) -> dict[str, Any]:
    """p50/p99/max latency (ms, answered requests only) and the non-200 count."""
    answered = [s.latency for s in samples if s.status]
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return {
        "requests": len(samples),
        "p50_ms": _ms(percentile(answered, 0.5)),
        "p99_ms": _ms(percentile(answered, 0.99)),
        "max_ms": _ms(max(answered, default=None)),
        "non_200": sum(1 for s in samples if s.status != 200),
        "statuses": statuses,
    }


@dataclass
class Legit:
    """Signed webhooks to ``tenant`` at ``rate`` a second and a bridge that acks them.

    The client is a few lines of HTTP/1.1 over asyncio streams rather than
    httpx: its cost per request is small and fixed on a core it shares with
    the attacker, and a connection that hangs is abandoned at the deadline
    instead of queueing later requests in a pool behind it.
    """

    target: Target
    tenant: str
    secret: str
    token: str
    rate: float = 100.0
    connections: int = 4
    #: Seconds between requests on a fresh connection; 0: none.
    fresh_every: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    #: Body → when it was due, for every body answered 200.
    accepted: dict[bytes, float] = field(default_factory=dict)
    #: Body → signature as posted, for the byte-exact check on delivery.
    signatures: dict[bytes, str] = field(default_factory=dict)
    delivered: set[bytes] = field(default_factory=set)
    #: Body → how many times a bridge acked it (more than once: an at-least-once duplicate).
    delivery_count: Counter[bytes] = field(default_factory=Counter)
    #: Delivered frames whose body or signature differ from anything posted.
    mismatched: int = 0
    bridge_connects: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)

    def context(self) -> ssl.SSLContext:
        """A client TLS context trusting the relay's CA, HTTP/1.1 only."""
        return self.target.tls()

    def start(self) -> None:
        """Start posting and the bridge (on the running loop)."""
        self._tasks = [
            asyncio.create_task(self._post_loop()),
            asyncio.create_task(self._fresh_loop()),
            asyncio.create_task(self._bridge_loop()),
        ]

    async def stop_posting(self) -> None:
        """Stop posting and wait for answers still due; the bridge goes on."""
        self._stop.set()
        await asyncio.gather(*self._tasks[:2], return_exceptions=True)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=REQUEST_TIMEOUT + 1)

    async def stop(self) -> None:
        """Stop posting, wait for answers still due, stop the bridge."""
        await self.stop_posting()
        self._tasks[2].cancel()
        await asyncio.gather(self._tasks[2], return_exceptions=True)

    def window(self, start: float, end: float, *, fresh: bool = False) -> list[Sample]:
        """Samples due in ``[start, end)``; fresh-connection ones or keep-alive ones."""
        return [s for s in self.samples if start <= s.due < end and s.fresh == fresh]

    def lost(self, start: float = 0.0, end: float = float("inf")) -> list[bytes]:
        """Bodies due in ``[start, end)`` that got a 200 and have not reached the bridge."""
        return [
            b for b, due in self.accepted.items() if start <= due < end and b not in self.delivered
        ]

    async def drain(self, within: float, before: float = float("inf")) -> int:
        """Wait up to ``within`` seconds until every body accepted (due) before ``before``
        has been delivered; how many have not."""
        deadline = time.monotonic() + within
        # Polled: deliveries arrive on the bridge task, any of them may be the last one.
        while self.lost(end=before) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        return len(self.lost(end=before))

    async def probe(self) -> int:
        """One signed webhook on a fresh connection, outside the samples; its status (0: none)."""
        body, signature = self._new_body()
        status = await self._fresh_request(body, signature)
        if status == 200:
            self.accepted[body] = time.monotonic()
        return status

    # -- posting ---------------------------------------------------------------

    def _new_body(self) -> tuple[bytes, str]:
        body = body_600(f"legit-{uuid.uuid4().hex}")
        signature = sign(self.secret.encode(), body)
        self.signatures[body] = signature
        return body, signature

    def _request(self, body: bytes, signature: str) -> bytes:
        return request_bytes(
            "POST",
            f"/webhook/{self.tenant}",
            self.target.authority,
            {"x-line-signature": signature, "content-type": "application/json"},
            body,
        )

    def _record(self, body: bytes, due: float, status: int, fresh: bool) -> None:
        self.samples.append(Sample(due, time.monotonic() - due, status, fresh))
        if status == 200:
            self.accepted[body] = due

    async def _fresh_request(self, body: bytes, signature: str) -> int:
        writer = None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader, writer = await open_tcp(self.target, "127.0.0.1", tls=self.context())
                writer.write(self._request(body, signature))
                return (await read_response(reader)).status
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return 0
        finally:
            if writer is not None:
                writer.transport.abort()

    async def _post_loop(self) -> None:
        """Due requests go to a queue that ``connections`` keep-alive lanes take from."""
        queue: asyncio.Queue[float] = asyncio.Queue()
        lanes = [asyncio.create_task(self._lane(queue)) for _ in range(self.connections)]
        started = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                due = started + n / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                queue.put_nowait(due)
                n += 1
            async with asyncio.timeout(REQUEST_TIMEOUT + 1):
                await queue.join()
        except TimeoutError:
            pass
        finally:
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    async def _lane(self, queue: asyncio.Queue[float]) -> None:
        """One keep-alive connection: take a due request, send it, read its answer."""
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            due = await queue.get()
            body, signature = self._new_body()
            status = 0
            try:
                # The deadline counts from when the request was due, as LINE's would.
                async with asyncio.timeout(max(0.0, REQUEST_TIMEOUT - (time.monotonic() - due))):
                    if reader is None or writer is None:
                        reader, writer = await open_tcp(
                            self.target, "127.0.0.1", tls=self.context()
                        )
                    writer.write(self._request(body, signature))
                    response = await read_response(reader)
                    status = response.status
                    if response.headers.get("connection", "").lower() == "close":
                        raise ConnectionResetError("the server closes this connection")
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                if writer is not None:
                    writer.transport.abort()
                reader = writer = None
            self._record(body, due, status, fresh=False)
            queue.task_done()

    async def _fresh_once(self, due: float) -> None:
        body, signature = self._new_body()
        self._record(body, due, await self._fresh_request(body, signature), fresh=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _fresh_loop(self) -> None:
        if self.fresh_every <= 0:
            return
        started = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = started + n * self.fresh_every
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self._spawn(self._fresh_once(due))
            n += 1

    # -- the bridge ------------------------------------------------------------

    def _on_frame(self, frame: Webhook) -> None:
        body = frame.body.encode()
        if self.signatures.get(body) != frame.signature:
            self.mismatched += 1
        self.delivered.add(body)
        self.delivery_count[body] += 1

    async def _bridge_loop(self) -> None:
        def connected() -> None:
            self.bridge_connects += 1

        await acking_bridge(self.target, self.token, self._on_frame, connected)


async def acking_bridge(
    target: Target,
    token: str,
    on_frame: Callable[[Webhook], None],
    on_connect: Callable[[], None] | None = None,
    source: str = "127.0.0.1",
) -> None:
    """A bridge that hands every webhook to ``on_frame`` and acks it, until cancelled;
    it reconnects whenever the connection goes (a restarted relay). It speaks what
    ``linerelay bridge`` speaks: protocol 2 (one ack per batch) or, if the relay
    selects no subprotocol, protocol 1."""
    while True:
        try:
            async with ws_connect(
                target.bridge_url,
                ssl=target.tls(),
                additional_headers={"Authorization": f"Bearer {token}"},
                max_size=None,
                compression=None,
                open_timeout=10,
                local_addr=(source, 0),
                subprotocols=list(OFFER),
            ) as ws:
                version = negotiated(ws.subprotocol)
                if on_connect is not None:
                    on_connect()
                async for raw in ws:
                    hooks = delivered(decode(raw))
                    for hook in hooks:
                        on_frame(hook)
                    for ack in acks([hook.id for hook in hooks], version):
                        await ws.send(ack)
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
            pass
        await asyncio.sleep(0.5)


def scan_log(path: Path, start: int, end: int, sensitive: Collection[str] = ()) -> dict[str, int]:
    """Bytes, lines, error-level lines and non-JSON lines in ``path[start:end]``, and
    ``leaks``: how many distinct ``sensitive`` values (secrets, tokens, signatures) it holds."""
    figures = {
        "bytes": max(0, end - start),
        "lines": 0,
        "error_lines": 0,
        "non_json_lines": 0,
        "leaks": 0,
    }
    wanted = {v.encode() for v in sensitive}
    found: set[bytes] = set()
    with path.open("rb") as fh:
        fh.seek(start)
        remaining = end - start
        tail = b""
        while remaining > 0:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                figures["lines"] += 1
                if not line.startswith(b"{"):
                    figures["non_json_lines"] += 1
                elif any(level in line for level in ERROR_LEVELS):
                    figures["error_lines"] += 1
                if wanted:
                    # Candidates, not substrings: a set lookup per word keeps this fast
                    # with a signature for every webhook of the run.
                    found.update(w for w in _WORDS.findall(line) if w in wanted)
                    found.update(w for w in _SIGNATURES.findall(line) if w in wanted)
    figures["leaks"] = len(found)
    return figures


class ProcessWatch:
    """Samples a process's RSS (KiB) and open fds every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        #: (monotonic time, RSS KiB, open fds)
        self.samples: list[tuple[float, int, int]] = []
        self._task: asyncio.Task[None] | None = None

    def read(self) -> tuple[int, int] | None:
        """RSS (KiB) and open fds now; None if the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]), fds
        return None

    def start(self) -> None:
        """Begin sampling on the running loop."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            now = self.read()
            if now is not None:
                self.samples.append((time.monotonic(), *now))
            await asyncio.sleep(self.interval)

    def peak(self, start: float, end: float) -> tuple[int, int] | None:
        """Highest RSS and highest fd count sampled in ``[start, end)``."""
        inside = [(rss, fds) for t, rss, fds in self.samples if start <= t < end]
        if not inside:
            return None
        return max(r for r, _ in inside), max(f for _, f in inside)
