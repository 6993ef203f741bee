"""Chaos soak: faults at random points under steady signed traffic and churning bridges.

    .venv/bin/python -m bench.chaos --duration 300 [--rate 50] [--tenants 3]
        [--faults kill,lock,disk] [--seed S] [--json FILE]

The relay (pinned to core 0) serves ``--tenants`` tenants, each posted signed
unique webhooks (``--rate`` a second in all, keep-alive HTTP/1.1) and each
with a bridge that churns: it connects, takes a few frames (acking most,
nacking or ignoring some), drops the connection, and comes back. Between
steady spells, one fault at a time, in a seeded order:

- ``kill``: ``kill -9`` of the relay, then a restart on the same state dir;
- ``lock``: another process (the ``sqlite3`` shell) holds ``BEGIN EXCLUSIVE``
  on ``STATE/store.db`` for a few seconds;
- ``disk``: the state dir is a small tmpfs (mounted at the start; root only)
  and a junk file fills it for a few seconds while posting goes on.

After each fault: the time until a signed webhook is answered 200 again (the
relay must recover on its own, but for the restart after ``kill``), and a
drain: every webhook answered 200 so far must reach a bridge. At the end,
with churn stopped: every 200 delivered (acked by a bridge) with the body and
signature exactly as posted, duplicates counted (at-least-once allows them),
and no answer but 200 or 503 at any time (no answer at all, while the relay
is down, is counted apart). Exit status 0 when all of that held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import connect as ws_connect

from appliance.protocol import Nack, decode, encode
from bench.attacks import Target
from bench.common import CLIENT_CORE, SERVER_CORE
from bench.traffic import Legit, latency_stats, scan_log
from bridge.wire import OFFER, acks, delivered, negotiated
from tests.support.relay import RelayProcess

FAULTS = ("kill", "lock", "disk")
#: A relay that has not answered a signed webhook 200 this long after a fault cleared
#: did not recover on its own.
RECOVERY_LIMIT = 30.0


@dataclass
class ChurningTenant(Legit):
    """A tenant's traffic whose bridge comes and goes (see the module docstring)."""

    seed: int = 0
    churn: bool = True
    nacks: int = 0
    left_unacked: int = 0
    _ws: Any = None

    def pause_churn(self) -> None:
        """Stop churning: from now on every frame is acked, on a connection that stays.

        The current connection is dropped first: frames it left unacked on purpose
        would otherwise wait for an ack forever (the relay redelivers an unacked
        webhook after a reconnect or a nack, never on a timer: PROTOCOL.md §2).
        """
        self.churn = False
        if self._ws is not None:
            self._ws.transport.abort()

    async def _bridge_loop(self) -> None:
        rng = random.Random(self.seed)
        while True:
            try:
                async with ws_connect(
                    self.target.bridge_url,
                    ssl=self.context(),
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                    max_size=None,
                    compression=None,
                    open_timeout=10,
                    subprotocols=list(OFFER),
                ) as ws:
                    self.bridge_connects += 1
                    self._ws = ws
                    await self._take(ws, rng, negotiated(ws.subprotocol))
                    if self.churn and rng.random() < 0.5:
                        ws.transport.abort()  # vanish without a close handshake
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
                pass
            await asyncio.sleep(rng.uniform(0.0, 0.5) if self.churn else 0.2)

    async def _take(self, ws: Any, rng: random.Random, version: int) -> None:
        """Webhooks until churn says go: most acked (one ack per batch in protocol 2),
        some nacked, some left unacked."""
        take = rng.randrange(1, 20)
        until = time.monotonic() + rng.uniform(0.2, 2.0)
        taken = 0
        while not self.churn or (taken < take and time.monotonic() < until):
            try:
                async with asyncio.timeout(0.5):
                    raw = await ws.recv()
            except TimeoutError:
                continue
            acked: list[str] = []
            for hook in delivered(decode(raw)):
                taken += 1
                roll = rng.random() if self.churn else 0.0
                if roll < 0.75:
                    self._on_frame(hook)
                    acked.append(hook.id)
                elif roll < 0.85:
                    self.nacks += 1
                    await ws.send(encode(Nack(hook.id, "chaos"), version))
                else:
                    self.left_unacked += 1
            for ack in acks(acked, version):
                await ws.send(ack)


@dataclass
class FaultRecord:
    """One fault: what, when, what the relay answered meanwhile, how it came back."""

    kind: str
    started: float
    cleared: float = 0.0
    recovered: float | None = None
    statuses: Counter[int] = field(default_factory=Counter)
    lost_after_drain: int | None = None
    drain_s: float = 0.0
    note: str = ""

    def summary(self, t0: float) -> dict[str, Any]:
        """JSON-able, times relative to the run's start."""
        return {
            "fault": self.kind,
            "at_s": round(self.started - t0, 1),
            "held_s": round(self.cleared - self.started, 1),
            "recovery_s": None
            if self.recovered is None
            else round(self.recovered - self.cleared, 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "lost_after_drain": self.lost_after_drain,
            "drain_s": self.drain_s,
            "note": self.note,
        }


class Chaos:
    """The relay, its tenants, and the faults."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.state = work / "state"
        self.mounted = False
        config = Path(args.relay_config).read_text() if args.relay_config else None
        wrapper = ["taskset", "-c", SERVER_CORE] if args.pin else []
        self.relay = RelayProcess(self.state, config=config, wrapper=wrapper)
        self.tenants: list[ChurningTenant] = []
        self.faults: list[FaultRecord] = []

    # -- set-up ------------------------------------------------------------------

    def mount(self) -> None:
        """Put the state dir on a tmpfs of ``--tmpfs-size`` (for the ``disk`` fault)."""
        self.state.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.args.tmpfs_size},mode=0700",
                "tmpfs",
                str(self.state),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        self.mounted = True

    def unmount(self) -> None:
        """Undo :meth:`mount` (the relay must be stopped)."""
        if self.mounted:
            subprocess.run(["umount", str(self.state)], check=False, capture_output=True)
            self.mounted = False

    async def start(self) -> Target:
        """Relay up, tenants added, posting and bridges running."""
        await asyncio.to_thread(self.relay.start)
        target = Target("127.0.0.1", self.relay.port, str(self.relay.ca_file))
        rate = self.args.rate / self.args.tenants
        for i in range(self.args.tenants):
            secret = os.urandom(16).hex()
            token = await asyncio.to_thread(self.relay.add_tenant, f"chaos-{i}", secret)
            tenant = ChurningTenant(
                target,
                f"chaos-{i}",
                secret,
                token,
                rate=rate,
                connections=2,
                fresh_every=0,
                seed=self.args.seed * 100 + i,
            )
            tenant.start()
            self.tenants.append(tenant)
        return target

    # -- faults ------------------------------------------------------------------

    async def kill(self, record: FaultRecord) -> None:
        """kill -9, a moment of nothing, then a restart on the same state dir."""
        await asyncio.to_thread(self.relay.kill)
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        record.cleared = time.monotonic()
        await asyncio.to_thread(self.relay.start)
        record.note = "restarted (the one manual step allowed)"

    async def lock(self, record: FaultRecord) -> None:
        """``BEGIN EXCLUSIVE`` on the store from the sqlite3 shell, held a few seconds."""
        hold = self.rng.uniform(2.0, 5.0)
        shell = await asyncio.create_subprocess_exec(
            "sqlite3",
            str(self.relay.state.store),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert shell.stdin is not None
        assert shell.stdout is not None
        shell.stdin.write(b".timeout 10000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n")
        await shell.stdin.drain()
        try:
            async with asyncio.timeout(15):
                line = await shell.stdout.readline()
            record.note = (
                f"held {hold:.1f} s" if line.strip() == b"locked" else f"lock not taken: {line!r}"
            )
            await asyncio.sleep(hold)
        finally:
            shell.stdin.write(b"COMMIT;\n.quit\n")
            with contextlib.suppress(OSError):
                await shell.stdin.drain()
            async with asyncio.timeout(10):
                await shell.wait()
            record.cleared = time.monotonic()

    async def disk(self, record: FaultRecord) -> None:
        """Fill the state dir's tmpfs with a junk file, post on, then delete it."""
        hold = self.rng.uniform(2.0, 5.0)
        junk = self.state / "junk.fill"
        written = await asyncio.to_thread(_fill, junk)
        record.note = f"{written // 1024} KiB of junk, full for {hold:.1f} s"
        try:
            await asyncio.sleep(hold)
        finally:
            junk.unlink(missing_ok=True)
            record.cleared = time.monotonic()

    async def recovered(self, record: FaultRecord) -> None:
        """Wait until a signed webhook is answered 200 again (at most RECOVERY_LIMIT)."""
        deadline = record.cleared + RECOVERY_LIMIT
        while time.monotonic() < deadline:
            if await self.tenants[0].probe() == 200:
                record.recovered = time.monotonic()
                return
            await asyncio.sleep(0.2)

    async def drain(self, within: float) -> int:
        """Wait until every 200 so far has reached a bridge; how many have not.

        Posting goes on meanwhile: webhooks answered after the drain began are the
        next check's, not this one's (some are always on their way).
        """
        began = time.monotonic()
        deadline = began + within
        for tenant in self.tenants:
            await tenant.drain(max(0.0, deadline - time.monotonic()), before=began)
        return sum(len(t.lost(end=began)) for t in self.tenants)

    # -- the run -----------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Steady spells and faults until ``--duration``, then stop churn and drain."""
        args = self.args
        t0 = time.monotonic()
        await self.start()
        kinds = [f for f in args.faults.split(",") if f]
        order: list[str] = []
        end = t0 + args.duration
        try:
            while time.monotonic() < end - 8:
                await asyncio.sleep(self.rng.uniform(args.steady / 2, args.steady))
                if not order:  # each fault once per cycle, in a seeded order
                    order = self.rng.sample(kinds, len(kinds))
                kind = order.pop()
                record = FaultRecord(kind, time.monotonic())
                print(f"  {record.started - t0:6.1f} s  fault: {kind}", flush=True)
                await getattr(self, kind)(record)
                await self.recovered(record)
                # The check after each fault: churn paused so the bridges take everything.
                for tenant in self.tenants:
                    tenant.pause_churn()
                drain_started = time.monotonic()
                record.lost_after_drain = await self.drain(args.drain)
                record.drain_s = round(time.monotonic() - drain_started, 1)
                for tenant in self.tenants:
                    tenant.churn = True
                for tenant in self.tenants:
                    for sample in tenant.samples:
                        if record.started <= sample.due < (record.recovered or time.monotonic()):
                            record.statuses[sample.status] += 1
                self.faults.append(record)
                print(f"          {json.dumps(record.summary(t0))}", flush=True)
        finally:
            for tenant in self.tenants:
                tenant.pause_churn()
            await asyncio.gather(*(t.stop_posting() for t in self.tenants))
        lost = await self.drain(args.final_drain)
        for tenant in self.tenants:
            await tenant.stop()
        return self.summary(t0, lost)

    def summary(self, t0: float, lost: int) -> dict[str, Any]:
        """Figures for the whole run, and the verdict."""
        statuses: Counter[int] = Counter()
        for tenant in self.tenants:
            statuses.update(s.status for s in tenant.samples)
        accepted = sum(len(t.accepted) for t in self.tenants)
        duplicates = sum(c - 1 for t in self.tenants for c in t.delivery_count.values() if c > 1)
        altered = sum(t.mismatched for t in self.tenants)
        wrong = {s: n for s, n in statuses.items() if s not in (0, 200, 503)}
        unrecovered = [f.kind for f in self.faults if f.recovered is None]
        sensitive = {v for t in self.tenants for v in (t.secret, t.token, *t.signatures.values())}
        log = scan_log(self.relay.log_file, 0, self.relay.log_file.stat().st_size, sensitive)
        problems = []
        if lost:
            where = [
                f"{t.tenant} at {due - t0:.1f} s"
                for t in self.tenants
                for due in sorted(t.accepted[b] for b in t.lost())
            ]
            problems.append(
                f"{lost} webhooks answered 200 never reached a bridge (posted: {where[:5]})"
            )
        if altered:
            problems.append(f"{altered} deliveries differ from what was posted")
        if wrong:
            problems.append(f"answers other than 200/503: {wrong}")
        if log["leaks"]:
            problems.append(f"{log['leaks']} secrets, tokens or signatures in the relay's log")
        if unrecovered:
            problems.append(f"no 200 within {RECOVERY_LIMIT:.0f} s after: {unrecovered}")
        return {
            "seed": self.args.seed,
            "seconds": round(time.monotonic() - t0, 1),
            "posted": sum(statuses.values()),
            "latency": latency_stats([s for t in self.tenants for s in t.samples]),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "accepted": accepted,
            "delivered": sum(len(t.delivered) for t in self.tenants),
            "lost": lost,
            "duplicates": duplicates,
            "altered": altered,
            "bridge_connects": sum(t.bridge_connects for t in self.tenants),
            "nacks": sum(t.nacks for t in self.tenants),
            "left_unacked": sum(t.left_unacked for t in self.tenants),
            "faults": [f.summary(t0) for f in self.faults],
            "relay_log": log,
            "problems": problems,
            "ok": not problems,
        }


def _fill(path: Path) -> int:
    """Write ``path`` until the file system is full; bytes written."""
    written = 0
    block = b"\0" * (1 << 20)
    with path.open("wb") as fh:
        while True:
            try:
                written += fh.write(block)
                fh.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return written


def mount_permitted() -> str | None:
    """None if this process may mount a tmpfs; else why not."""
    probe = Path(tempfile.mkdtemp(prefix="linerelay-mount-"))
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return f"mount -t tmpfs failed: {result.stderr.strip() or result.returncode}"
        subprocess.run(["umount", str(probe)], check=False)
        return None
    except FileNotFoundError as exc:
        return str(exc)
    finally:
        probe.rmdir()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=300.0, help="seconds of traffic and faults"
    )
    parser.add_argument(
        "--rate", type=float, default=50.0, help="signed webhooks a second, all tenants"
    )
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--faults", default=",".join(FAULTS), help="any of kill,lock,disk")
    parser.add_argument(
        "--steady", type=float, default=8.0, help="longest steady spell between faults"
    )
    parser.add_argument(
        "--drain", type=float, default=30.0, help="seconds to deliver after each fault"
    )
    parser.add_argument("--final-drain", type=float, default=60.0)
    parser.add_argument("--tmpfs-size", default="64m", help="the state dir's tmpfs (disk fault)")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--relay-config", help="a relay TOML config to pass through")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin to cores")
    parser.add_argument("--json", help="write the summary to this file")
    args = parser.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULTS) - {""}
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when nothing was lost or altered and every fault was survived."""
    args = parse_args(argv)
    if "disk" in args.faults.split(","):
        why = mount_permitted()
        if why is not None:
            print(f"the disk fault needs a tmpfs mount: {why}", file=sys.stderr)
            return 2
    if args.pin and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(CLIENT_CORE)})
    else:
        args.pin = False
    work = Path(tempfile.mkdtemp(prefix="linerelay-chaos-"))
    print(f"chaos seed={args.seed} faults={args.faults}; relay log in {work}", flush=True)
    chaos = Chaos(args, work)
    try:
        if "disk" in args.faults.split(","):
            chaos.mount()
        summary = asyncio.run(chaos.run())
    finally:
        chaos.relay.stop(10.0)
        chaos.unmount()
    print(json.dumps(summary, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
