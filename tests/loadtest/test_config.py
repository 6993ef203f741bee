"""Tenants from options or a file, and the config handed to Locust's processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.config import (
    ENV_VAR,
    ConfigError,
    RunConfig,
    Tenant,
    tenants_from_file,
    tenants_from_options,
)


def test_repeated_options_pair_in_order() -> None:
    tenants = tenants_from_options(["a", "b"], ["sa", "sb"], ["ta", "tb"])
    assert tenants == (Tenant("a", "sa", "ta"), Tenant("b", "sb", "tb"))
    assert tenants_from_options(["a"], ["sa"], []) == (Tenant("a", "sa", None),)


@pytest.mark.parametrize(
    ("ids", "secrets", "tokens", "message"),
    [
        (["a", "b"], ["sa"], [], "--channel-secret"),
        (["a", "b"], ["sa", "sb"], ["ta"], "--bridge-token"),
        (["Bad_Id"], ["s"], [], "tenant id"),
        (["a"], [""], [], "empty channel secret"),
    ],
)
def test_unpaired_or_invalid_options_are_refused(
    ids: list[str], secrets: list[str], tokens: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tenants_from_options(ids, secrets, tokens)


def test_tenants_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps([{"tenant": "a", "channel_secret": "s", "bridge_token": "t"}]))
    assert tenants_from_file(path) == (Tenant("a", "s", "t"),)


def test_a_tenants_file_can_name_the_node_each_tenant_lives_on(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(
        json.dumps(
            [
                {"tenant": "a", "channel_secret": "s", "target": "https://node-a:8443"},
                {"tenant": "b", "channel_secret": "s"},
            ]
        )
    )
    assert [t.target for t in tenants_from_file(path)] == ["https://node-a:8443", None]


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"tenant": "a"}',
        '[{"tenant": "a", "channel_secret": "s", "x": 1}]',
        '[{"tenant": "a", "channel_secret": 5}]',
        '[{"tenant": "a", "channel_secret": "s", "target": 5}]',
    ],
)
def test_bad_tenants_files_are_refused_with_the_file_named(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="tenants"):
        tenants_from_file(path)


def test_config_round_trips_through_the_environment() -> None:
    config = RunConfig(
        targets=("https://127.0.0.1:1", "https://127.0.0.1:2"),
        tenants=(Tenant("a", "s", "t", "https://127.0.0.1:2"),),
        bridge_targets=("https://127.0.0.1:3",),
        shared_store=True,
        ca_files=("/ca/a.pem", "/ca/b.pem"),
        rate=7,
    )
    again = RunConfig.from_env({ENV_VAR: config.to_env()})
    assert again == config
    assert again.with_bridges


def test_a_missing_environment_says_how_to_start_the_run() -> None:
    with pytest.raises(ConfigError, match="linerelay loadtest"):
        RunConfig.from_env({})
