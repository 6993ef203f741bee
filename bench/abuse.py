"""The abuse harness: each attack of bench/attacks.py against a real relay under legitimate load.

    .venv/bin/python -m bench.abuse [--attack NAME ...] [--duration S] [--rate R]
        [--json FILE] [--relay-config FILE] [--intensity NAME=N ...] [--sources A,B]

One relay (its own temp state dir, pinned to core 0 under ``prlimit
--nofile=N:N``, so fd exhaustion comes quickly and safely) serves a
legitimate tenant: signed webhooks at ``--rate`` a second over keep-alive
HTTP/1.1 from 127.0.0.1 plus one a second on a fresh connection, and an
acking bridge. Attacks run one after another, each in its own process (core
1, ``nice 10`` so the legitimate client is not starved by the attacker on the
shared core), from 127.0.0.2 by default, each against a tenant of its own
where it needs one. For each attack the harness prints legitimate latency
and non-200s before (baseline), during and after it, webhooks answered 200
that never reached the bridge, the relay's RSS and fds before / peak / after,
and its log volume and error-level lines. A relay left unhealthy by an attack
is restarted before the next one, and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import attacks
from bench.common import CLIENT_CORE, SERVER_CORE
from bench.traffic import Legit, ProcessWatch, latency_stats, scan_log
from tests.support.relay import RelayProcess

#: The relay's open-files limit (soft and hard): low, so fd exhaustion is quick and harmless.
RELAY_NOFILE = 1024
#: A log larger than this after an attack is truncated (the relay appends, so this is safe).
LOG_CAP_BYTES = 256 * 1024 * 1024


class Campaign:
    """One relay, the legitimate load, and the attacks run against them in turn."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        config = Path(args.relay_config).read_text() if args.relay_config else None
        self.relay = RelayProcess(
            work / "state",
            config=config,
            wrapper=[
                "taskset",
                "-c",
                SERVER_CORE,
                "prlimit",
                f"--nofile={args.relay_nofile}:{args.relay_nofile}",
            ],
        )
        self.secret = secrets.token_hex(16)
        self.legit: Legit | None = None
        self.watch: ProcessWatch | None = None
        self.attacker: asyncio.subprocess.Process | None = None

    # -- relay ----------------------------------------------------------------

    def log_size(self) -> int:
        """Bytes the relay has logged so far."""
        try:
            return self.relay.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    async def healthy(self, within: float = 10.0) -> str | None:
        """None if the relay answers /healthz and a fresh signed webhook; else why not."""
        assert self.legit is not None
        deadline = time.monotonic() + within
        why = "not checked"
        while time.monotonic() < deadline:
            if self.relay.proc is None or self.relay.proc.poll() is not None:
                return "relay process exited"
            try:
                async with httpx.AsyncClient(timeout=3) as admin:
                    health = (await admin.get(f"{self.relay.admin_url}/healthz")).status_code
                answer = await self.legit.probe()
                if health == 200 and answer == 200:
                    return None
                why = f"/healthz {health}, fresh signed webhook {answer or 'no answer'}"
            except (httpx.HTTPError, OSError) as exc:
                why = f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(1)
        return why

    def left_broken(
        self,
        before: tuple[int, int] | None,
        after: tuple[int, int] | None,
        t_settle: float,
        t_end: float,
    ) -> str | None:
        """Why the relay, though it answers, is not fit for the next attack; None if it is.

        Left broken means still holding the attacker's connections after the attacker
        is gone, or failing legitimate webhooks at the end of the settle (requests due
        in its second half, up to a second before its end, answered 200 by now).
        """
        assert self.legit is not None
        if before is not None and after is not None and after[1] > before[1] + 100:
            return f"still holds {after[1]} fds after the attacker left ({before[1]} before)"
        start, end = t_settle + self.args.settle / 2, t_end - 1.0
        due = int((end - start) * self.args.rate)
        ok = sum(1 for s in self.legit.window(start, end) if s.status == 200)
        if due > 10 and ok < 0.9 * due:
            return f"only {ok} of {due} legitimate webhooks answered 200 at the end of the settle"
        return None

    async def restart(self) -> None:
        """Stop (kill if it will not stop) and start the relay again on the same state dir."""
        await asyncio.to_thread(self.relay.stop, 10.0)
        await asyncio.to_thread(self.relay.start)
        assert self.relay.proc is not None
        assert self.watch is not None
        self.watch.pid = self.relay.proc.pid

    # -- one attack ---------------------------------------------------------------

    async def run_attack(self, name: str, index: int) -> dict[str, Any]:
        """Baseline, attack, settle; figures for each; restart if the relay is left broken."""
        args, legit, watch = self.args, self.legit, self.watch
        assert legit is not None
        assert watch is not None
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.relay.port,
            "ca_file": str(self.relay.ca_file),
            "sources": args.sources.split(","),
            "duration": args.duration,
            "intensity": args.intensity.get(name, attacks.DEFAULT_INTENSITY[name]),
        }
        if attacks.NEEDS[name]:
            tenant = f"atk-{index}-{name.replace('_', '-')}"
            secret = secrets.token_hex(16)
            token = await asyncio.to_thread(self.relay.add_tenant, tenant, secret)
            params.update(tenant=tenant, secret=secret, token=token)

        t_base = time.monotonic()
        log_base = self.log_size()
        await asyncio.sleep(args.baseline)
        before = watch.read()
        t_attack, log_attack = time.monotonic(), self.log_size()
        outcome = await self.attack_process(name, params)
        t_settle, log_settle = time.monotonic(), self.log_size()
        at_end = watch.read()
        await asyncio.sleep(args.settle)
        t_end, log_end = time.monotonic(), self.log_size()
        after = watch.read()
        # A short attack may fall between two samples: the readings at its ends count too.
        peak = _highest([watch.peak(t_attack, t_settle), before, at_end])

        broken = await self.healthy() or self.left_broken(before, after, t_settle, t_end)
        if broken is not None:
            print(f"  relay unhealthy after {name} ({broken}): restarting it", flush=True)
            await self.restart()
        lost = await legit.drain(args.drain, before=t_end)
        sensitive = {self.secret, legit.token, *legit.signatures.values()}
        sensitive.update(str(params[k]) for k in ("secret", "token") if k in params)
        lost_here = len(legit.lost(t_base, t_end))
        log_path = self.relay.log_file
        report = {
            "attack": name,
            "params": {k: v for k, v in params.items() if k not in ("secret", "token", "ca_file")},
            "attacker": outcome,
            "legit": {
                "baseline": latency_stats(legit.window(t_base, t_attack)),
                "during": latency_stats(legit.window(t_attack, t_settle)),
                "after": latency_stats(legit.window(t_settle, t_end)),
                "fresh_baseline": latency_stats(legit.window(t_base, t_attack, fresh=True)),
                "fresh_during": latency_stats(legit.window(t_attack, t_settle, fresh=True)),
                "fresh_after": latency_stats(legit.window(t_settle, t_end, fresh=True)),
                "lost": lost_here,
                "lost_total_so_far": lost,
                "mismatched_total_so_far": legit.mismatched,
            },
            "relay": {
                "rss_kib": {
                    "before": before[0] if before else None,
                    "peak": peak[0] if peak else None,
                    "after": after[0] if after else None,
                },
                "fds": {
                    "before": before[1] if before else None,
                    "peak": peak[1] if peak else None,
                    "after": after[1] if after else None,
                },
                "log_baseline": scan_log(log_path, log_base, log_attack, sensitive),
                "log_during": scan_log(log_path, log_attack, log_settle, sensitive),
                "log_after": scan_log(log_path, log_settle, log_end, sensitive),
                "restarted": broken is not None,
                "unhealthy_because": broken,
            },
            # Other work on the machine shows in every latency: the 1-minute load, for judging.
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "seconds": {
                "baseline": round(t_attack - t_base, 1),
                "attack": round(t_settle - t_attack, 1),
                "settle": round(t_end - t_settle, 1),
            },
        }
        if self.log_size() > LOG_CAP_BYTES:
            os.truncate(log_path, 0)
        return report

    async def attack_process(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run one attack in its own process on the client core; its result, or why none."""
        proc = self.attacker = await asyncio.create_subprocess_exec(
            *("taskset", "-c", CLIENT_CORE, "nice", "-n", "10"),
            *(sys.executable, "-m", "bench.attacks", name),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(params).encode()), self.args.duration + 60
            )
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
        finally:
            self.attacker = None
        try:
            result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"attack exited {proc.returncode}", "stderr": err.decode()[-2000:]}
        return result

    # -- the whole run -------------------------------------------------------------

    async def run(self) -> list[dict[str, Any]]:
        """Start the relay and the load, run every attack, stop everything."""
        args = self.args
        await asyncio.to_thread(self.relay.start)
        assert self.relay.proc is not None
        token = await asyncio.to_thread(self.relay.add_tenant, "legit", self.secret)
        self.legit = Legit(
            attacks.Target("127.0.0.1", self.relay.port, str(self.relay.ca_file)),
            "legit",
            self.secret,
            token,
            rate=args.rate,
            connections=args.connections,
        )
        self.watch = ProcessWatch(self.relay.proc.pid)
        self.legit.start()
        self.watch.start()
        reports = []
        try:
            await asyncio.sleep(2)  # warm up: first connections, first commits
            for index, name in enumerate(args.attack):
                print(f"== {name} ==", flush=True)
                report = await self.run_attack(name, index)
                print(render(report), flush=True)
                reports.append(report)
        finally:
            await self.legit.stop()
            await self.watch.stop()
        return reports

    def shutdown(self) -> None:
        """Kill the attacker and stop the relay, whatever state they are in."""
        if self.attacker is not None and self.attacker.returncode is None:
            self.attacker.kill()
        self.relay.stop(10.0)


def _highest(readings: list[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The highest RSS and the highest fd count among ``readings``."""
    present = [r for r in readings if r is not None]
    if not present:
        return None
    return max(r[0] for r in present), max(r[1] for r in present)


def _fmt(stats: dict[str, Any]) -> str:
    return (
        f"p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, max {stats['max_ms']} ms, "
        f"non-200 {stats['non_200']}/{stats['requests']}"
    )


def render(report: dict[str, Any]) -> str:
    """The human-readable block for one attack."""
    a, legit, relay = report["attacker"], report["legit"], report["relay"]
    closes = a.get("close_after_s", {})
    lines = [
        f"  attack    {report['params']['intensity']} from {report['params']['sources']}, "
        f"{report['seconds']['attack']} s: opened {a.get('opened')}, refused {a.get('refused')}, "
        f"closed by server {a.get('closed_by_server')} (after p50 {closes.get('p50')} s, "
        f"max {closes.get('max')} s), requests {a.get('requests')}, resets {a.get('resets')}, "
        f"statuses {a.get('statuses')}",
        f"            notes {json.dumps(a.get('notes', a.get('error')))}",
    ]
    for phase in ("baseline", "during", "after"):
        fresh = legit[f"fresh_{phase}"]
        lines.append(
            f"  legit {phase:<8} {_fmt(legit[phase])}; fresh connections "
            f"non-200 {fresh['non_200']}/{fresh['requests']}"
        )
    lines.append(
        f"  legit lost (200, never delivered): {legit['lost']}; "
        f"delivered altered: {legit['mismatched_total_so_far']} (whole run)"
    )
    rss, fds = relay["rss_kib"], relay["fds"]

    def mib(kib: int | None) -> str:
        return "-" if kib is None else f"{kib / 1024:.0f}"

    lines.append(
        f"  relay RSS MiB {mib(rss['before'])} before, {mib(rss['peak'])} peak, "
        f"{mib(rss['after'])} after; fds {fds['before']} before, {fds['peak']} peak, "
        f"{fds['after']} after"
    )
    for phase in ("baseline", "during", "after"):
        log = relay[f"log_{phase}"]
        lines.append(
            f"  relay log {phase:<8} {log['bytes'] / 1e6:.2f} MB, {log['lines']} lines, "
            f"{log['error_lines']} error-level, {log['non_json_lines']} not JSON"
            + (f", {log['leaks']} SECRETS/TOKENS/SIGNATURES" if log["leaks"] else "")
        )
    lines.append(
        "  relay     "
        + (
            f"RESTARTED: unhealthy after the attack ({relay['unhealthy_because']})"
            if relay["restarted"]
            else "healthy after the attack"
        )
        + f"; machine load {report['loadavg_1m']} (2 cores)"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.abuse", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--attack",
        nargs="+",
        choices=list(attacks.ATTACKS),
        default=list(attacks.ATTACKS),
        help="attacks to run, in order (default: all)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=40.0,
        help="seconds per attack (past the relay's 30-second keep-alive timeout, so its closes show)",
    )
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds before each attack")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after each attack")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for deliveries")
    parser.add_argument("--rate", type=float, default=100.0, help="legitimate webhooks a second")
    parser.add_argument(
        "--connections", type=int, default=4, help="legitimate keep-alive connections"
    )
    parser.add_argument(
        "--intensity",
        action="append",
        default=[],
        metavar="NAME=N",
        help="an attack's intensity (see bench/attacks.py; defaults are capped)",
    )
    parser.add_argument(
        "--sources", default="127.0.0.2", help="attacker addresses, comma-separated"
    )
    parser.add_argument("--relay-config", help="a relay TOML config to pass through")
    parser.add_argument(
        "--relay-nofile", type=int, default=RELAY_NOFILE, help="the relay's ulimit -n"
    )
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    intensity = {}
    for item in args.intensity:
        name, _, value = item.partition("=")
        if name not in attacks.ATTACKS or not value.isdigit():
            parser.error(
                f"--intensity {item}: want NAME=N with NAME one of {list(attacks.ATTACKS)}"
            )
        intensity[name] = int(value)
    args.intensity = intensity
    if not 0 < args.duration <= attacks.MAX_DURATION:
        parser.error(f"--duration must be in (0, {attacks.MAX_DURATION:.0f}]")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the campaign; always stop the relay and any attacker at the end."""
    args = parse_args(argv)
    # The legitimate client and its bridge share the client core with the attacker.
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    work = Path(tempfile.mkdtemp(prefix="linerelay-abuse-"))
    campaign = Campaign(args, work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"relay on core {SERVER_CORE} (ulimit -n {args.relay_nofile}), legitimate load "
        f"{args.rate:g}/s and attackers on core {CLIENT_CORE}; state and log in {work}",
        flush=True,
    )
    try:
        reports = asyncio.run(campaign.run())
    finally:
        campaign.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
