"""The bridge's JSON config: validation, defaults, reload, and the docs kept in step."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bridge.config import (
    BridgeConfig,
    BridgeConfigError,
    ConfigFile,
    parse,
    render_docs,
    resolve_state_dir,
    token_in_url,
)

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "relay_token": "tok-abc",
    "channel_secret": "s3cret",
    "channel_access_token": "access-xyz",
    "relay_url": "wss://relay.example/bridge",
    "openclaw_url": "http://127.0.0.1:18789/v1/chat/completions",
}


def write(path: Path, values: dict[str, object]) -> None:
    path.write_text(json.dumps(values), encoding="utf-8")


def test_minimal_original_config_gets_documented_defaults() -> None:
    config = parse(BASE)
    assert config.line_api_base == "https://api.line.me"
    assert config.backoff_min == 5.0
    assert config.backoff_max == 60.0
    assert config.ping_interval == 20.0
    assert config.ping_timeout == 10.0
    assert config.reply_fallback_push is True
    assert config.bridge_token == "tok-abc"


def test_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(BridgeConfigError, match="unknown config key 'relay_tokn'"):
        parse({**BASE, "relay_tokn": "x"})


@pytest.mark.parametrize(
    "key", ["channel_secret", "channel_access_token", "relay_url", "openclaw_url"]
)
def test_missing_required_key_is_named(key: str) -> None:
    values = {k: v for k, v in BASE.items() if k != key}
    with pytest.raises(BridgeConfigError, match=key):
        parse(values)


def test_token_may_ride_in_the_url_instead_of_relay_token() -> None:
    values = {k: v for k, v in BASE.items() if k != "relay_token"}
    values["relay_url"] = "wss://relay.example/bridge/tok-in-url"
    config = parse(values)
    assert config.bridge_token == "tok-in-url"


def test_no_token_anywhere_is_an_error() -> None:
    values = {k: v for k, v in BASE.items() if k != "relay_token"}
    with pytest.raises(BridgeConfigError, match="relay_token"):
        parse(values)


def test_conflicting_tokens_are_refused() -> None:
    with pytest.raises(BridgeConfigError, match="differs"):
        parse({**BASE, "relay_url": "wss://relay.example/bridge/other"})


def test_token_in_url_only_for_bridge_paths() -> None:
    assert token_in_url("wss://h/bridge/abc") == "abc"
    assert token_in_url("wss://h/bridge") == ""
    assert token_in_url("wss://h/bridge/") == ""
    assert token_in_url("wss://h/other/abc") == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"relay_url": "https://relay.example/bridge"}, "relay_url"),
        ({"openclaw_url": "ftp://x/y"}, "openclaw_url"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"loading_seconds": 7}, "loading_seconds"),
        ({"backoff_min": 10, "backoff_max": 5}, "backoff_max"),
        ({"log_level": "loud"}, "log_level"),
        ({"reply_fallback_push": "yes"}, "reply_fallback_push"),
        ({"chat_timeout": json.loads("Infinity")}, "chat_timeout"),
    ],
)
def test_bad_values_are_refused_with_the_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(BridgeConfigError, match=message):
        parse({**BASE, **change})


def test_a_wrong_typed_secret_is_not_echoed() -> None:
    with pytest.raises(BridgeConfigError) as info:
        parse({**BASE, "channel_secret": 123456789})
    assert "123456789" not in str(info.value)


def test_a_previous_channel_secret_is_optional_and_never_echoed() -> None:
    assert parse(BASE).previous_channel_secret == ""
    assert parse({**BASE, "previous_channel_secret": "old"}).previous_channel_secret == "old"
    with pytest.raises(BridgeConfigError, match="previous_channel_secret") as info:
        parse({**BASE, "previous_channel_secret": 987654321})
    assert "987654321" not in str(info.value)


def test_ints_are_accepted_for_seconds() -> None:
    assert parse({**BASE, "backoff_min": 1, "backoff_max": 2}).backoff_max == 2.0


def test_not_an_object_is_refused() -> None:
    with pytest.raises(BridgeConfigError, match="one JSON object"):
        parse([BASE])


def test_broken_edit_keeps_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "bridge.json"
    write(path, BASE)
    watched = ConfigFile(path)
    path.write_text("{ not json", encoding="utf-8")
    with pytest.raises(BridgeConfigError, match="not valid JSON"):
        watched.poll()
    assert watched.current.channel_access_token == "access-xyz"
    # The same broken content is reported once, not every poll.
    assert watched.poll() is None


def test_unknown_key_edit_keeps_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "bridge.json"
    write(path, BASE)
    watched = ConfigFile(path)
    write(path, {**BASE, "channel_access_token": "new", "colour": "blue"})
    with pytest.raises(BridgeConfigError, match="'colour'"):
        watched.poll()
    assert watched.current.channel_access_token == "access-xyz"


def test_in_place_edit_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "bridge.json"
    write(path, BASE)
    watched = ConfigFile(path)
    assert watched.poll() is None
    write(path, {**BASE, "channel_access_token": "rotated-token-value"})
    # Same size edits within one mtime tick must still be seen.
    os.utime(path, ns=(0, 1))
    new = watched.poll()
    assert new is not None
    assert new.channel_access_token == "rotated-token-value"
    assert new.changed_keys(parse(BASE)) == ["channel_access_token"]


def test_state_dir_is_the_flag_then_the_key_then_the_linerelay_default(tmp_path: Path) -> None:
    path = tmp_path / "unit7.json"
    default = str(tmp_path / "var")
    assert resolve_state_dir(parse(BASE), path, None, default) == (tmp_path / "var").resolve()
    keyed = parse({**BASE, "state_dir": "q"})
    assert resolve_state_dir(keyed, path, None, default) == tmp_path.resolve() / "q"
    assert (
        resolve_state_dir(keyed, path, str(tmp_path / "x"), default) == (tmp_path / "x").resolve()
    )


def test_docs_bridge_config_md_is_what_linerelay_config_docs_bridge_generates() -> None:
    # Regenerate with: linerelay config --docs --bridge > docs/bridge-config.md
    text = (ROOT / "docs" / "bridge-config.md").read_text(encoding="utf-8")
    assert text == render_docs()
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE))
    assert listed == set(BridgeConfig.documented_keys())
