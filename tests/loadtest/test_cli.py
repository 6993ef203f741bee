"""The command's options: validation before anything runs, and the Locust processes it starts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtest.cli import build_config, local_workers, locust_commands, register
from loadtest.config import ConfigError
from loadtest.pacing import PacingError
from loadtest.safety import ForbiddenTarget

BASE = ["--target", "https://127.0.0.1:8443", "--tenant", "a", "--channel-secret", "s"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="linerelay")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["loadtest", *argv])


def test_protocol_form_builds_a_run_with_bridges_and_paced_users() -> None:
    config = build_config(parse(*BASE, "--bridge-token", "t", "--rate", "100", "--users", "20"))
    assert config.with_bridges
    assert (config.users, config.per_user_rate) == (20, 5.0)
    assert config.churn_seconds is None


def test_soak_turns_bridge_churn_on_unless_told_otherwise() -> None:
    assert build_config(parse(*BASE, "--profile", "soak")).churn_seconds == 60
    assert build_config(parse(*BASE, "--profile", "soak", "--churn", "5")).churn_seconds == 5


def test_bridges_ask_for_protocol_2_unless_told_to_speak_protocol_1() -> None:
    assert build_config(parse(*BASE, "--bridge-token", "t")).bridge_protocol == 2
    forced = build_config(parse(*BASE, "--bridge-token", "t", "--bridge-protocol", "1"))
    assert forced.bridge_protocol == 1
    with pytest.raises(SystemExit):
        parse(*BASE, "--bridge-protocol", "3")


def test_the_gateway_form_parses_beside_the_protocol_form() -> None:
    args = parse("gateway", "--listen", "127.0.0.1:0", "--latency-ms", "5", "--error-rate", "0.1")
    assert args.func.__name__ == "run_gateway"
    assert (args.latency_ms, args.error_rate) == (5.0, 0.1)
    assert parse(*BASE).func.__name__ == "run"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tenant", "a", "--channel-secret", "s"], "--target is required"),
        (["--target", "https://127.0.0.1:1"], "no tenant"),
        (
            [
                *BASE,
                "--tenant",
                "b",
                "--channel-secret",
                "s2",
                "--bridge-token",
                "t",
                "--bridge-token",
                "",
            ],
            "empty bridge token",
        ),
        (
            [*BASE, "--tenant", "b", "--channel-secret", "s2", "--bridge-token", "t"],
            "--bridge-token",
        ),
        ([*BASE, "--duration", "0"], "--duration"),
        ([*BASE, "--drain", "-1"], "--drain"),
        ([*BASE, "--churn", "0"], "--churn"),
        ([*BASE, "--bridges", "0"], "--bridges"),
        ([*BASE, "--ca", "/nonexistent/ca.pem"], "CA file"),
        ([*BASE, "--new-connection-ratio", "2"], "share"),
    ],
)
def test_bad_options_are_refused_with_a_reason(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(parse(*argv))


def test_a_gateway_needs_bridges_and_must_not_be_line() -> None:
    with pytest.raises(ConfigError, match="--bridge-token"):
        build_config(parse(*BASE, "--gateway", "http://127.0.0.1:8090"))
    with pytest.raises(ForbiddenTarget):
        build_config(parse(*BASE, "--bridge-token", "t", "--gateway", "https://api.line.me"))
    config = build_config(parse(*BASE, "--bridge-token", "t", "--gateway", "http://127.0.0.1:1/"))
    assert config.gateway == "http://127.0.0.1:1"


def test_a_zero_rate_is_refused() -> None:
    with pytest.raises(PacingError):
        build_config(parse(*BASE, "--rate", "0"))


def test_tenant_options_and_a_tenants_file_do_not_mix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either"):
        build_config(parse(*BASE, "--tenants", str(tmp_path / "t.json")))


def test_a_tenants_file_needs_bridge_tokens_for_all_or_none(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(
        '[{"tenant": "a", "channel_secret": "s", "bridge_token": "t"},'
        ' {"tenant": "b", "channel_secret": "s"}]'
    )
    args = parse("--target", "https://127.0.0.1:1", "--tenants", str(path))
    with pytest.raises(ConfigError, match="every tenant or for none"):
        build_config(args)


def test_workers_join_one_master_on_the_same_free_port(tmp_path: Path) -> None:
    args = parse(*BASE, "--workers", "2", "--report", str(tmp_path))
    main, *workers = locust_commands(build_config(args), args, free_port=lambda: 45557)
    assert len(workers) == 2
    port = main[main.index("--master-bind-port") + 1]
    assert port == "45557"
    assert main[main.index("--expect-workers") + 1] == "2"
    assert "--headless" in main
    for worker in workers:
        assert worker[worker.index("--master-port") + 1] == port
        assert "--html" not in worker


def test_web_ui_replaces_headless_and_join_runs_only_a_worker(tmp_path: Path) -> None:
    args = parse(*BASE, "--web", "127.0.0.1:8089", "--report", str(tmp_path))
    (main,) = locust_commands(build_config(args), args)
    assert "--headless" not in main
    assert main[main.index("--web-port") + 1] == "8089"
    args = parse(*BASE, "--join", "10.0.0.5:5557")
    (worker,) = locust_commands(build_config(args), args)
    assert worker[worker.index("--master-host") + 1] == "10.0.0.5"
    assert "--worker" in worker


def test_one_target_as_before_is_one_node_serving_every_tenant() -> None:
    config = build_config(parse(*BASE, "--tenant", "b", "--channel-secret", "s2"))
    assert config.targets == config.bridge_targets == ("https://127.0.0.1:8443",)
    assert [t.target for t in config.tenants] == ["https://127.0.0.1:8443"] * 2
    assert not config.shared_store


def test_several_targets_each_get_their_tenants_in_turn_and_every_ca_is_kept(
    tmp_path: Path,
) -> None:
    ca_a, ca_b = tmp_path / "a.pem", tmp_path / "b.pem"
    ca_a.write_text("a")
    ca_b.write_text("b")
    args = parse(
        *BASE, "--tenant", "b", "--channel-secret", "s2",
        "--target", "https://127.0.0.1:9443/", "--ca", str(ca_a), "--ca", str(ca_b),
    )  # fmt: skip
    config = build_config(args)
    assert config.targets == ("https://127.0.0.1:8443", "https://127.0.0.1:9443")
    assert [t.target for t in config.tenants] == list(config.targets)
    assert config.ca_files == (str(ca_a.resolve()), str(ca_b.resolve()))
    (main,) = locust_commands(config, args)
    assert main[main.index("--host") + 1] == "https://127.0.0.1:8443"


def test_a_shared_store_may_list_one_relay_twice_and_send_bridges_elsewhere() -> None:
    twice = [*BASE, "--target", "https://127.0.0.1:8443"]
    with pytest.raises(ConfigError, match="--shared-store"):
        build_config(parse(*twice))
    config = build_config(parse(*twice, "--shared-store"))
    assert config.shared_store
    assert config.tenants[0].target is None
    config = build_config(
        parse(*BASE, "--shared-store", "--bridge-target", "https://127.0.0.1:9443")
    )
    assert config.bridge_targets == ("https://127.0.0.1:9443",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bridge-target", "https://127.0.0.1:9443"], "--bridge-target needs --shared-store"),
        (["--target", "https://api.line.me"], "LINE"),
        (["--shared-store", "--bridge-target", "ftp://x"], "http"),
        (["--tenant", "a", "--channel-secret", "s"], "given twice"),
        (["--generators", "0"], "--generators"),
        (["--workers", "-1"], "--workers"),
        (["--join", "127.0.0.1:5557", "--workers", "0"], "--workers"),
        (["--join", "127.0.0.1:5557", "--generators", "0"], "--generators"),
        (["--ca", "/nonexistent/second.pem"], "CA file"),
    ],
)
def test_bad_node_and_process_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        build_config(parse(*BASE, *argv))


def test_a_tenants_file_pins_tenants_to_nodes(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(
        '[{"tenant": "a", "channel_secret": "s", "target": "https://127.0.0.1:9443"},'
        ' {"tenant": "b", "channel_secret": "s"}]'
    )
    args = parse(
        "--target", "https://127.0.0.1:8443", "--target", "https://127.0.0.1:9443",
        "--tenants", str(path),
    )  # fmt: skip
    assert [t.target for t in build_config(args).tenants] == [
        "https://127.0.0.1:9443",
        "https://127.0.0.1:9443",
    ]


@pytest.mark.parametrize(
    ("argv", "workers"),
    [
        ([], 0),
        (["--generators", "1"], 0),
        (["--generators", "3"], 3),
        (["--workers", "0"], 0),
        (["--workers", "1"], 1),
        (["--master-bind", "127.0.0.1:5557", "--expect-workers", "2"], 0),
        (["--master-bind", "127.0.0.1:5557", "--generators", "1"], 1),
        (["--join", "127.0.0.1:5557"], 1),
        (["--join", "127.0.0.1:5557", "--generators", "2"], 2),
    ],
)
def test_generators_count_the_processes_that_send(argv: list[str], workers: int) -> None:
    assert local_workers(parse(*BASE, *argv)) == workers


def test_generators_start_a_master_and_that_many_workers(tmp_path: Path) -> None:
    args = parse(*BASE, "--generators", "2", "--report", str(tmp_path))
    main, *workers = locust_commands(build_config(args), args, free_port=lambda: 45558)
    assert "--master" in main
    assert main[main.index("--expect-workers") + 1] == "2"
    assert len(workers) == 2
    args = parse(*BASE, "--join", "10.0.0.5:5557", "--generators", "3")
    assert len(locust_commands(build_config(args), args)) == 3


def test_generators_and_the_former_workers_option_do_not_mix() -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*BASE, "--generators", "2", "--workers", "2")
    assert exited.value.code == 2
