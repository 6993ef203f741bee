"""``linerelay loadtest``: run the Locust harness against a relay and judge the run.

Two forms share the command name (PROTOCOL.md §4 fixes the first)::

    linerelay loadtest --target BASE_URL --tenant ID --channel-secret SECRET
        [--bridge-token TOKEN] [--ca FILE] [--users N] [--rate PER_SECOND]
        [--duration SECONDS] [--report DIR] [more options, see --help]
    linerelay loadtest gateway [--listen HOST:PORT] [--latency-ms N] [--error-rate X]
        [--channel-secret-file FILE] [--ca FILE] [--channel-access-token-file FILE]

The first starts Locust (one process, or a master and ``--generators N``
worker processes) on :mod:`loadtest.locustfile`, against one target or
several (``--target`` repeated, spread as :mod:`loadtest.routing` says),
waits for the run and its drain, scrapes the relays' ``/metrics`` before and
after when ``--admin-url`` is given, writes ``verdict.json`` and
``summary.json`` next to Locust's HTML and CSV reports (Locust's hold the
webhooks alone) and adds the verdict, the harness's own charts and the
bridges' side to the HTML report (:mod:`loadtest.report`).
Exit status: 0 the verdict passes, 1 it does not, 2 bad input or no run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance.cli import add_state_dir
from loadtest import gateway, metrics, report
from loadtest.config import ENV_VAR, ConfigError, RunConfig, tenants_from_file, tenants_from_options
from loadtest.pacing import PROFILES, PacingError, pace
from loadtest.routing import normalise, place
from loadtest.safety import BadTarget, ForbiddenTarget, check_target
from loadtest.tally import TALLY_FILE, Tally
from loadtest.verdict import Slo, Verdict, judge

#: Bridge churn for the soak profile when ``--churn`` is not given: each bridge
#: drops its connection about once a minute.
SOAK_CHURN_SECONDS = 60.0
#: The locustfile every Locust process of a run loads (``locust -f``).
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
#: How long Locust users get to finish an in-flight request when the shape removes them.
STOP_TIMEOUT = 15
#: How often the relay's metrics are read while the run goes on.
POLL_SECONDS = 1.0
#: How long a master waits for its workers to connect before giving up.
WORKER_WAIT_SECONDS = 120
#: Extra time, past duration and drain, before a hung Locust is stopped.
GRACE_SECONDS = 120


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``loadtest`` (and its ``gateway`` form) to the ``linerelay`` parser."""
    parser = subparsers.add_parser(
        "loadtest",
        help="load-test a relay with simulated LINE traffic and bridges (Locust)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_state_dir(parser)
    target = parser.add_argument_group("targets and tenants")
    target.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="URL",
        help="a relay's base URL, e.g. https://relay.example:8443; repeat for several nodes",
    )
    target.add_argument(
        "--shared-store",
        action="store_true",
        help="every target serves every tenant (one shared store): webhooks go to the targets "
        "in turn and bridges connect across them; default: each target has its own tenants",
    )
    target.add_argument(
        "--bridge-target",
        action="append",
        default=[],
        metavar="URL",
        help="with --shared-store: bridges connect to these (repeatable) instead of the targets",
    )
    target.add_argument("--tenant", action="append", default=[], metavar="ID", help="repeatable")
    target.add_argument(
        "--channel-secret",
        action="append",
        default=[],
        metavar="SECRET",
        help="one per --tenant, in order",
    )
    target.add_argument(
        "--bridge-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="one per --tenant, in order; enables simulated bridges and the delivery count",
    )
    target.add_argument(
        "--tenants",
        type=Path,
        metavar="FILE",
        help='JSON file: [{"tenant", "channel_secret", "bridge_token"?, "target"?}, ...]',
    )
    target.add_argument(
        "--ca",
        action="append",
        default=[],
        metavar="FILE",
        help="CA bundle for the relays' certificates; repeatable",
    )
    target.add_argument(
        "--admin-url",
        action="append",
        default=[],
        metavar="URL",
        help="a relay's admin listener (e.g. http://127.0.0.1:9443) for /metrics; repeatable",
    )
    target.add_argument(
        "--gateway",
        metavar="URL",
        help="simulated bridges reply through this Messaging API (e.g. the loadtest gateway)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--rate", type=float, default=50.0, help="steady webhooks per second")
    load.add_argument(
        "--users",
        type=int,
        help=f"webhook users sharing the rate (default: rate / {5:g})",
    )
    load.add_argument("--duration", type=float, default=60.0, help="sending time in seconds")
    load.add_argument(
        "--drain",
        type=float,
        default=30.0,
        help="at most this many seconds after sending for deliveries to arrive",
    )
    load.add_argument("--profile", choices=PROFILES, default="steady")
    load.add_argument("--bridges", type=int, default=1, help="bridge connections per tenant")
    load.add_argument(
        "--bridge-protocol",
        type=int,
        choices=(1, 2),
        default=2,
        help="bridge protocol the bridges ask for: 2 (batches; a relay without it gets 1), or 1",
    )
    load.add_argument(
        "--churn",
        type=float,
        metavar="SECONDS",
        help=f"bridges drop and reconnect about this often (soak default {SOAK_CHURN_SECONDS:g})",
    )
    load.add_argument(
        "--new-connection-ratio",
        type=float,
        default=0.1,
        help="share of requests that close their connection afterwards",
    )
    processes = load.add_mutually_exclusive_group()
    processes.add_argument(
        "--generators",
        type=int,
        metavar="N",
        help="load-generating processes on this machine: 1 (default) runs one Locust process, "
        "N >= 2 Locust's master and N worker processes; with --master-bind, local workers "
        "beside remote ones (default 0); with --join, workers joining the master (default 1)",
    )
    processes.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="the former name: N Locust worker processes beside a master (0: one process)",
    )
    load.add_argument(
        "--master-bind",
        metavar="HOST:PORT",
        help="distributed mode across machines: listen for workers here",
    )
    load.add_argument(
        "--expect-workers",
        type=int,
        default=0,
        help="with --master-bind: wait for this many workers (local ones included)",
    )
    load.add_argument(
        "--join",
        metavar="HOST:PORT",
        help="run workers of the master at HOST:PORT (same options as the master)",
    )
    load.add_argument(
        "--web",
        metavar="HOST:PORT",
        help="serve Locust's web UI here instead of running headless",
    )
    load.add_argument(
        "--web-linger",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --web: keep the UI up this long after the run before judging it",
    )
    report = parser.add_argument_group("report and SLO")
    report.add_argument("--report", type=Path, default=Path("loadtest-report"), metavar="DIR")
    report.add_argument("--budget-ms", type=float, default=1000.0, help="the ack budget")
    report.add_argument("--slo-ack-p99-ms", type=float, default=1000.0)
    report.add_argument("--slo-max-over-budget", type=int, default=0)
    report.add_argument("--slo-max-lost", type=int, default=0)
    report.add_argument("--slo-max-error-rate", type=float, default=0.001)
    parser.set_defaults(func=run)

    forms = parser.add_subparsers(dest="loadtest_form", metavar="[gateway]")
    gw = forms.add_parser("gateway", help="run the simulated Messaging API gateway")
    add_state_dir(gw)
    gw.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    gw.add_argument("--latency-ms", type=float, default=0.0)
    gw.add_argument("--error-rate", type=float, default=0.0, help="share of 500 answers")
    gw.add_argument(
        "--channel-secret-file",
        metavar="FILE",
        help="the channel secret that signs the webhook test's verification webhook",
    )
    gw.add_argument(
        "--ca", metavar="FILE", help="root CA the webhook test trusts for the relay's certificate"
    )
    gw.add_argument(
        "--channel-access-token-file",
        metavar="FILE",
        help="take only this channel access token (401 for others); default: any",
    )
    gw.set_defaults(func=run_gateway)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def run_gateway(args: argparse.Namespace) -> int:
    """Serve the simulated gateway until interrupted."""
    try:
        host, port = _host_port(args.listen)
        secret = token = None
        if args.channel_secret_file:
            secret = Path(args.channel_secret_file).read_text(encoding="utf-8").strip().encode()
        if args.channel_access_token_file:
            token = Path(args.channel_access_token_file).read_text(encoding="utf-8").strip()
        server = gateway.serve(
            host, port, args.latency_ms, args.error_rate, secret, args.ca or None, token
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"linerelay loadtest gateway: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"gateway": f"http://{host}:{server.server_port}"}), flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def local_workers(args: argparse.Namespace) -> int:
    """How many Locust worker processes to start here (0: one process does everything)."""
    if args.workers is not None:
        if args.workers < (1 if args.join else 0):
            raise ConfigError("--workers must be at least 0, and at least 1 with --join")
        return int(args.workers)
    count: int | None = args.generators
    if args.master_bind:
        # The master coordinates and counts; here it only starts the local workers asked for.
        if count is not None and count < 0:
            raise ConfigError("--generators must be at least 0 with --master-bind")
        return count or 0
    if count is not None and count < 1:
        raise ConfigError("--generators must be at least 1")
    if args.join:
        return count or 1
    return 0 if count in (None, 1) else int(count)


def _targets(urls: list[str], option: str) -> tuple[str, ...]:
    for url in urls:
        check_target(url)
    targets = tuple(normalise(url) for url in urls)
    if any(not t for t in targets):
        raise ConfigError(f"{option} needs a URL")
    return targets


def build_config(args: argparse.Namespace) -> RunConfig:
    """The run's config from the parsed options; :class:`ConfigError` and friends on bad input."""
    if not args.target:
        raise ConfigError("--target is required")
    targets = _targets(args.target, "--target")
    bridge_targets = _targets(args.bridge_target, "--bridge-target")
    if bridge_targets and not args.shared_store:
        raise ConfigError(
            "--bridge-target needs --shared-store: without a shared store a tenant's "
            "bridges must connect to the node that has the tenant"
        )
    if not args.shared_store:
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ConfigError(
                f"target {twice[0]} is given twice; one relay listed twice is one shared "
                "store: add --shared-store"
            )
    if args.gateway:
        check_target(args.gateway)
    if args.tenants and (args.tenant or args.channel_secret or args.bridge_token):
        raise ConfigError("give tenants either with --tenants FILE or with --tenant options")
    tenants = (
        tenants_from_file(args.tenants)
        if args.tenants
        else tenants_from_options(args.tenant, args.channel_secret, args.bridge_token)
    )
    if not tenants:
        raise ConfigError("no tenant: give --tenant ID --channel-secret SECRET, or --tenants FILE")
    ids = [t.tenant for t in tenants]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ConfigError(f"tenant {twice[0]!r} is given twice")
    tenants = place(tenants, targets, shared=args.shared_store)
    if len({t.bridge_token is None for t in tenants}) > 1:
        raise ConfigError("give a bridge token for every tenant or for none")
    if args.gateway and tenants[0].bridge_token is None:
        raise ConfigError("--gateway needs simulated bridges: give --bridge-token")
    for ca in args.ca:
        if not Path(ca).is_file():
            raise ConfigError(f"CA file {ca} does not exist")
    if not math.isfinite(args.duration) or args.duration <= 0:
        raise ConfigError("--duration must be a positive number of seconds")
    if not math.isfinite(args.drain) or args.drain < 0:
        raise ConfigError("--drain must be zero or a positive number of seconds")
    if args.bridges < 1:
        raise ConfigError("--bridges must be at least 1")
    local_workers(args)
    if not 0 <= args.new_connection_ratio <= 1:
        raise ConfigError("--new-connection-ratio is a share between 0 and 1")
    steady = pace(args.rate, args.users)
    churn = (
        args.churn
        if args.churn is not None
        else (SOAK_CHURN_SECONDS if args.profile == "soak" else None)
    )
    if churn is not None and churn <= 0:
        raise ConfigError("--churn must be a positive number of seconds")
    return RunConfig(
        targets=targets,
        tenants=tenants,
        bridge_targets=bridge_targets or targets,
        shared_store=args.shared_store,
        ca_files=tuple(str(Path(ca).resolve()) for ca in args.ca),
        profile=args.profile,
        rate=steady.rate,
        users=steady.users,
        per_user_rate=steady.per_user_rate,
        duration=args.duration,
        drain=args.drain,
        bridges=args.bridges,
        bridge_protocol=args.bridge_protocol,
        churn_seconds=churn,
        new_connection_ratio=args.new_connection_ratio,
        budget_ms=args.budget_ms,
        gateway=args.gateway.rstrip("/") if args.gateway else None,
        report_dir=str(args.report.resolve()),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def locust_commands(
    config: RunConfig, args: argparse.Namespace, free_port: Callable[[], int] = _free_port
) -> list[list[str]]:
    """The Locust command lines of the run: the main process first, then local workers.

    Local workers find their master on ``free_port()`` unless ``--master-bind`` names one.
    With ``--join`` every command is a worker of the master named there.
    """
    report = Path(config.report_dir)
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", config.targets[0]]
    base += ["--loglevel", "WARNING", "--stop-timeout", str(STOP_TIMEOUT)]
    workers = local_workers(args)
    if args.join:
        host, port = _host_port(args.join)
        joining = [*base, "--worker", "--master-host", host, "--master-port", str(port)]
        return [joining for _ in range(workers)]
    main = [*base, "--html", str(report / "report.html"), "--csv", str(report / "locust")]
    main += ["--logfile", str(report / "locust.log"), "--exit-code-on-error", "0", "--only-summary"]
    if args.web:
        host, port = _host_port(args.web)
        main += ["--web-host", host, "--web-port", str(port), "--autostart"]
        main += ["--autoquit", str(max(0, math.ceil(args.web_linger)))]
    else:
        main += ["--headless"]
    expect = max(args.expect_workers, workers)
    if not expect:
        return [main]
    if args.master_bind:
        bind_host, bind_port = _host_port(args.master_bind)
    else:
        bind_host, bind_port = "127.0.0.1", free_port()
    main += ["--master", "--master-bind-host", bind_host, "--master-bind-port", str(bind_port)]
    main += ["--expect-workers", str(expect), "--expect-workers-max-wait", str(WORKER_WAIT_SECONDS)]
    connect_host = "127.0.0.1" if bind_host in ("0.0.0.0", "*", "") else bind_host  # noqa: S104
    worker = [*base, "--worker", "--master-host", connect_host, "--master-port", str(bind_port)]
    return [main] + [worker for _ in range(workers)]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _bridges_connected(admin_urls: list[str]) -> float | None:
    """Bridges connected to all nodes now, as their metrics say (None: no node said)."""
    seen = [metrics.scrape(url, timeout=1.0) for url in admin_urls]
    counts = [
        m.bridges_connected for m in seen if m is not None and m.bridges_connected is not None
    ]
    return sum(counts) if counts else None


def _drive(
    commands: list[list[str]], env: dict[str, str], timeout: float, admin_urls: list[str]
) -> float | None:
    """Run Locust's processes until the main one ends; the peak of connected bridges seen."""
    processes: list[subprocess.Popen[bytes]] = []
    peak: float | None = None
    try:
        for command in commands:
            processes.append(subprocess.Popen(command, env=env))
        deadline = time.monotonic() + timeout
        while processes[0].poll() is None:
            if time.monotonic() > deadline:
                print(
                    f"linerelay loadtest: Locust did not finish in {timeout:.0f} s", file=sys.stderr
                )
                break
            # The bridge gauge is only interesting while the run holds its bridges.
            during = _bridges_connected(admin_urls) if admin_urls else None
            if during is not None:
                peak = max(peak or 0.0, during)
            try:
                processes[0].wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue
    finally:
        _stop(processes)
    return peak


def _join(commands: list[list[str]], env: dict[str, str]) -> int:
    """Run workers of a master elsewhere until they end; 0 when all ended well."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes = [subprocess.Popen(command, env=env) for command in commands]
        codes = [process.wait() for process in processes]
    finally:
        _stop(processes)
    return 0 if all(code == 0 for code in codes) else 2


def _relay_metrics(
    admin_urls: list[str],
    before: list[metrics.RelayMetrics | None],
    after: list[metrics.RelayMetrics | None],
) -> dict[str, Any] | None:
    """The relays' own counts over the run, all nodes added up (and each node apart)."""
    read = [(b, a) for b, a in zip(before, after, strict=True) if a is not None]
    if not read:
        return None
    combined = metrics.difference(
        metrics.combine([b or metrics.RelayMetrics() for b, _ in read]),
        metrics.combine([a for _, a in read]),
    )
    if len(admin_urls) > 1:
        combined["nodes"] = [
            {"admin_url": url, **metrics.difference(b, a)} if a is not None else {"admin_url": url}
            for url, b, a in zip(admin_urls, before, after, strict=True)
        ]
    return combined


def _facts(
    config: RunConfig, args: argparse.Namespace, summary: dict[str, Any], verdict: Verdict
) -> list[tuple[str, str]]:
    """What the HTML report's verdict section says about the run, as label and text."""
    generators = max(args.expect_workers, local_workers(args)) or 1
    facts = [("targets", ", ".join(config.targets))]
    if config.bridge_targets != config.targets:
        facts.append(("bridge targets", ", ".join(config.bridge_targets)))
    if len(config.targets) > 1 or config.bridge_targets != config.targets:
        store = "shared by every target" if config.shared_store else "one per target"
        facts.append(("store", store))
    facts += [
        ("generator processes", str(generators)),
        ("profile", f"{config.profile}, {config.rate:g}/s for {config.duration:g} s"),
        ("reached", f"{summary['rate_reached']}/s ({summary['requests']} webhooks)"),
        (
            "accepted / delivered / lost",
            f"{verdict.accepted} / {verdict.delivered} / {verdict.lost}",
        ),
        ("ack p50 / p99", f"{verdict.ack_p50_ms} / {verdict.ack_p99_ms} ms"),
        ("e2e p50 / p99", f"{summary['e2e_p50_ms']} / {verdict.e2e_p99_ms} ms"),
    ]
    return facts


def run(args: argparse.Namespace) -> int:
    """Run the load test; 0 when the verdict passes, 1 when not, 2 when it could not run."""
    try:
        config = build_config(args)
        slo = Slo(
            budget_ms=args.budget_ms,
            ack_p99_ms=args.slo_ack_p99_ms,
            max_over_budget=args.slo_max_over_budget,
            max_lost=args.slo_max_lost,
            max_error_rate=args.slo_max_error_rate,
        )
        commands = locust_commands(config, args)
    except (ForbiddenTarget, ConfigError, PacingError, BadTarget) as exc:
        print(f"linerelay loadtest: {exc}", file=sys.stderr)
        return 2
    env = {**os.environ, ENV_VAR: config.to_env()}
    if args.join:
        # Workers of a master elsewhere: the master counts, judges and reports.
        return _join(commands, env)
    report_dir = Path(config.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    tally_file = report_dir / TALLY_FILE
    tally_file.unlink(missing_ok=True)
    admin_urls = list(dict.fromkeys(url.rstrip("/") for url in args.admin_url))
    before = [metrics.scrape(url) for url in admin_urls]
    timeout = config.duration + config.drain + GRACE_SECONDS + (args.web_linger if args.web else 0)
    peak_bridges = _drive(commands, env, timeout, admin_urls)
    if not tally_file.is_file():
        print(
            f"linerelay loadtest: the run produced no counts; see {report_dir / 'locust.log'}",
            file=sys.stderr,
        )
        return 2
    tally = Tally.from_wire(json.loads(tally_file.read_text("utf-8")))
    verdict = judge(tally, slo, with_bridges=config.with_bridges)
    after = [metrics.scrape(url) for url in admin_urls]
    nodes = report.node_rows(config.targets, config.bridge_targets, tally.by_target)
    bridges = report.BridgeSide.from_tally(tally) if config.with_bridges else None
    summary: dict[str, Any] = {
        "profile": config.profile,
        "rate_target": config.rate,
        "duration_s": config.duration,
        "requests": tally.requests,
        "rate_reached": round(tally.requests / config.duration, 1),
        "statuses": dict(tally.statuses),
        "ack_p50_ms": verdict.ack_p50_ms,
        "e2e_p50_ms": tally.e2e.percentile(50),
        "deliveries": tally.deliveries,
        "bad_deliveries": tally.bad_deliveries,
        # The bot's side in full (Locust's statistics hold the webhooks alone).
        "bridges": bridges.to_json() if bridges is not None else None,
        "lost_sample": sorted(tally.waiting)[:100] if config.with_bridges else [],
        "targets": [{k: v for k, v in asdict(n).items() if v is not None} for n in nodes],
        "relay_metrics": _relay_metrics(admin_urls, before, after),
    }
    if summary["relay_metrics"] is not None:
        summary["relay_metrics"]["bridges_connected_peak"] = peak_bridges
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    (report_dir / "verdict.json").write_text(
        json.dumps(verdict.to_json(), indent=2) + "\n", "utf-8"
    )
    html = report_dir / "report.html"
    section = report.section(
        verdict,
        report.Series.from_timeline(tally.timeline),
        nodes,
        _facts(config, args, summary, verdict),
        bridges,
    )
    try:
        report.add_to(html, section)
    except report.ReportError as exc:
        print(f"linerelay loadtest: the verdict is not in the HTML report: {exc}", file=sys.stderr)
    tally_file.unlink()
    _print(verdict.to_json(), summary, report_dir)
    return 0 if verdict.passed else 1


def _print(verdict: dict[str, Any], summary: dict[str, Any], report: Path) -> None:
    word = "PASS" if verdict["pass"] else "FAIL"
    print(
        f"{word}: {summary['requests']} requests ({summary['rate_reached']}/s), "
        f"{verdict['accepted']} accepted, "
        f"delivered {verdict['delivered']}, lost {verdict['lost']}, "
        f"ack p50 {summary['ack_p50_ms']} ms p99 {verdict['ack_p99_ms']} ms, "
        f"over budget {verdict['over_budget']}, e2e p99 {verdict['e2e_p99_ms']} ms"
    )
    for reason in verdict["slo"]["failures"]:
        print(f"  - {reason}")
    print(f"report: {report}")
