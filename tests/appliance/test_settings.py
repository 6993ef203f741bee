"""The settings machinery the relay's and the bridge's configs share (appliance/settings.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from appliance.settings import POSITIVE, REQUIRED, Settings, between, setting


class ExampleError(ValueError):
    pass


@dataclass(frozen=True)
class Strict(Settings):
    name: str = setting("", "A name.", REQUIRED)
    password: str = setting("", "A credential.")
    count: int = setting(1, "How many.", between(1, 9))
    seconds: float = setting(1.0, "How long.", POSITIVE)
    on: bool = setting(False, "A switch.")

    error = ExampleError
    secret_keys = frozenset({"password"})


@dataclass(frozen=True)
class Lenient(Strict):
    lenient = True


def test_an_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(ExampleError, match="unknown config key 'nmae'"):
        Strict.build({"name": "a", "nmae": "b"})


def test_missing_required_keys_are_named_together() -> None:
    with pytest.raises(ExampleError, match="missing required key"):
        Strict.build({"count": 2})


def test_a_rule_broken_is_refused_with_the_key_and_why() -> None:
    with pytest.raises(ExampleError, match="count: must be 1-9"):
        Strict.build({"name": "a", "count": 10})
    with pytest.raises(ExampleError, match="name: is required"):
        Strict.build({"name": ""})


def test_rules_hold_for_replace_too() -> None:
    config = Strict.build({"name": "a"})
    with pytest.raises(ExampleError, match="seconds"):
        dataclasses.replace(config, seconds=0.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [("count", "3"), ("count", 3.0), ("count", True), ("seconds", "2"), ("on", "true")],
)
def test_strict_settings_take_only_their_json_types(key: str, value: Any) -> None:
    with pytest.raises(ExampleError, match=f"^{key}: .* is not a valid"):
        Strict.build({"name": "a", key: value})


@pytest.mark.parametrize(
    ("key", "value", "read"),
    [("count", "3", 3), ("count", 3.0, 3), ("seconds", "2", 2.0), ("on", "true", True)],
)
def test_lenient_settings_parse_strings_and_whole_floats(key: str, value: Any, read: Any) -> None:
    assert getattr(Lenient.build({"name": "a", key: value}), key) == read


@pytest.mark.parametrize("config", [Strict, Lenient])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10**400])
def test_seconds_must_be_a_finite_number(config: type[Strict], value: Any) -> None:
    with pytest.raises(ExampleError, match="seconds"):
        config.build({"name": "a", "seconds": value})


def test_an_integer_will_do_for_seconds() -> None:
    assert Strict.build({"name": "a", "seconds": 3}).seconds == 3.0


def test_a_refused_credential_is_not_repeated() -> None:
    with pytest.raises(ExampleError) as refused:
        Strict.build({"name": "a", "password": 123456789})
    assert "123456789" not in str(refused.value)
    assert "password" in str(refused.value)


def test_a_long_refused_value_is_cut_short() -> None:
    with pytest.raises(ExampleError) as refused:
        Strict.build({"name": "a", "count": "9" * 5000})
    assert len(str(refused.value)) < 100


def test_the_docs_table_lists_every_key_with_its_default() -> None:
    table = Strict.docs_table(lambda key: "yes", {"count": " (or --count)"})
    assert "| `name` | str | required | yes | A name. |" in table
    assert "| `count` | int | `1` (or --count) | yes | How many. |" in table
    assert table.count("\n") == 2 + len(Strict.documented_keys())


def test_changed_keys_names_what_differs() -> None:
    before = Strict.build({"name": "a"})
    assert dataclasses.replace(before, count=2, on=True).changed_keys(before) == ["count", "on"]
