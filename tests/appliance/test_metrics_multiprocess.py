"""The metrics of several processes (``--workers``) add up on whichever process is scraped.

Real processes: a Python started with ``PROMETHEUS_MULTIPROC_DIR`` set (as the
supervisor sets it before prometheus-client is imported) forks workers that
count on their own :class:`appliance.metrics.Metrics`; the parent's registry,
serving /metrics, must show their sum.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from prometheus_client import generate_latest
    from prometheus_client.multiprocess import mark_process_dead
    from appliance.metrics import Metrics

    def worker(accepted, bridges, connected):
        metrics = Metrics()
        for _ in range(accepted):
            metrics.outcome["accepted"].inc()
        metrics.connections_open.inc(2)
        for tenant in connected:
            metrics.bridge_connects[tenant] += 1
        metrics.publish_bridges(bridges, {(tenant, 1) for tenant in connected})

    plan = json.loads(sys.argv[1])
    pids = []
    for accepted, bridges, connected in plan:
        pid = os.fork()
        if pid == 0:
            worker(accepted, bridges, connected)
            os._exit(0)
        os.waitpid(pid, 0)
        pids.append(pid)
    scraped = Metrics()
    before = generate_latest(scraped.registry).decode()
    mark_process_dead(pids[0], os.environ["PROMETHEUS_MULTIPROC_DIR"])
    after = generate_latest(scraped.registry).decode()
    print(json.dumps([before, after]))
    """
)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(tmp_path: Path, plan: list[tuple[int, list[str], list[str]]]) -> list[Samples]:
    """Fork a worker per ``plan`` entry (webhooks accepted, tenants known, tenants whose
    bridge it holds), one after the other; /metrics of the parent, before and after the
    first worker is marked dead."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(plan)],
        env={"PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(Path.cwd())},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [samples(text) for text in json.loads(done.stdout)]


def test_counters_are_the_sum_of_every_process_even_after_one_ended(tmp_path: Path) -> None:
    before, after = scrape(tmp_path, [(3, [], []), (4, [], [])])
    accepted = ("linerelay_webhooks_total", (("outcome", "accepted"),))
    assert before[accepted] == 7
    # A counter never goes back: the ended worker's webhooks still count.
    assert after[accepted] == 7
    # What every process has alike is served once, from the scraped one.
    assert [name for name, _ in before if name == "linerelay_build_info"] == [
        "linerelay_build_info"
    ]


def test_open_connections_count_only_live_processes(tmp_path: Path) -> None:
    before, after = scrape(tmp_path, [(0, [], []), (0, [], [])])
    assert before[("linerelay_connections_open", ())] == 4
    assert after[("linerelay_connections_open", ())] == 2


def test_a_tenants_bridge_shows_connected_whichever_process_holds_it(tmp_path: Path) -> None:
    before, after = scrape(tmp_path, [(0, ["a", "b"], ["a"]), (0, ["a", "b"], [])])

    def bridge(result: Samples, tenant: str) -> float:
        value: float = result[
            ("linerelay_bridge_connected", (("protocol", "1"), ("tenant", tenant)))
        ]
        return value

    assert (bridge(before, "a"), bridge(before, "b")) == (1, 0)
    assert before[("linerelay_bridge_connects_total", (("tenant", "a"),))] == 1
    assert before[("linerelay_bridge_connects_total", (("tenant", "b"),))] == 0
    # The process holding a's bridge ended: no process holds it now.
    assert bridge(after, "a") == 0


GLANCE = textwrap.dedent(
    """
    import json, os, sys, types
    from appliance.config import RelayConfig
    from appliance.console.overview import glance_of
    from appliance.metrics import Metrics

    for seconds in json.loads(sys.argv[1]):
        pid = os.fork()
        if pid == 0:
            metrics = Metrics()
            metrics.ack_seconds.observe(seconds)
            metrics.outcome["accepted" if seconds < 1 else "overloaded"].inc()
            if seconds > 1:
                metrics.over_budget.inc()
            os._exit(0)
        os.waitpid(pid, 0)
    glance = glance_of(types.SimpleNamespace(metrics=Metrics(), config=RelayConfig()))
    print(json.dumps({
        "answers": glance.answers,
        "over_budget": glance.over_budget,
        "unavailable": glance.unavailable,
        "outcomes": dict(glance.outcomes),
        "bars": sum(bar.count for bar in glance.buckets),
    }))
    """
)


def test_the_consoles_glance_counts_every_workers_answers(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", GLANCE, json.dumps([0.001, 0.02, 1.5])],
        env={"PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(Path.cwd())},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    glance = json.loads(done.stdout)
    # Drawn by a process that answered nothing itself: the three workers' answers.
    assert glance == {
        "answers": 3,
        "over_budget": 1,
        "unavailable": 1,
        "outcomes": {"accepted": 2, "overloaded": 1},
        "bars": 3,
    }
