"""Typed settings: the machinery the relay's config and the bridge's config share.

A config is a frozen dataclass deriving from :class:`Settings`, each field made
with :func:`setting`: its default, its documentation (docs/config.md and
docs/bridge-config.md are generated from it) and the :class:`Rule` s its value
must follow. :meth:`Settings.build` takes the keys as read (a TOML file and the
environment for the relay, one JSON object for the bridge), refuses unknown and
missing keys, converts each value to its field's type and builds the object;
``__post_init__`` checks every rule, so ``dataclasses.replace`` checks them too.
Every refusal is the config's own error class (:attr:`Settings.error`), with a
message that starts with the key.

Field types are read as written: the config modules use postponed annotations,
so a field's ``type`` is the string ``"int"``, ``"Path"``, ...
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self


@dataclass(frozen=True)
class Rule:
    """A condition a field's value must meet, and what the refusal says when it does not."""

    holds: Callable[[Any], bool]
    why: str


POSITIVE = Rule(lambda value: value > 0, "must be positive")
NOT_NEGATIVE = Rule(lambda value: value >= 0, "must not be negative")
#: The key must be in the file and not empty.
REQUIRED = Rule(bool, "is required")


def one_of(choices: Collection[str]) -> Rule:
    """The value is one of ``choices``."""
    return Rule(lambda value: value in choices, f"must be one of {tuple(choices)}")


def between(low: int, high: int) -> Rule:
    """``low`` <= the value <= ``high``."""
    return Rule(lambda value: low <= value <= high, f"must be {low}-{high}")


def at_least(low: int) -> Rule:
    """The value is ``low`` or more."""
    return Rule(lambda value: value >= low, f"must be at least {low}")


def setting(default: Any, doc: str, *rules: Rule) -> Any:
    """A config field: its default, its documentation and the rules its value follows."""
    return field(default=default, metadata={"doc": doc, "rules": rules})


@dataclass(frozen=True)
class Settings:
    """Base of a config: builds it from the keys as read, and checks every field's rules.

    A subclass that checks several keys together does so in its own
    ``__post_init__``, after calling this one.
    """

    #: What every refusal raises.
    error: ClassVar[type[ValueError]] = ValueError
    #: Keys whose values are credentials: a refusal never repeats them.
    secret_keys: ClassVar[frozenset[str]] = frozenset()
    #: False: every value must already have its field's type, as JSON gives it (an
    #: integer will do for a float). True: strings are parsed as an environment
    #: variable spells them ("true", "10", "a,b"), and a float without a
    #: fraction is an integer (TOML's 1e4).
    lenient: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            for rule in f.metadata["rules"]:
                self.require(rule.holds(getattr(self, f.name)), f.name, rule.why)

    @classmethod
    def require(cls, ok: bool, key: str, why: str) -> None:
        """Refuse the config, naming ``key`` and ``why``, unless ``ok``."""
        if not ok:
            raise cls.error(f"{key}: {why}")

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> Self:
        """The config of ``values`` (key -> value as read); every other key keeps its default."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise cls.error(f"unknown config key {key!r}")
        missing = [key for key in cls.required_keys() if key not in values]
        if missing:
            raise cls.error(f"missing required key(s): {', '.join(missing)}")
        return cls(
            **{key: cls._coerce(key, fields[key].type, value) for key, value in values.items()}
        )

    @classmethod
    def _coerce(cls, key: str, kind: Any, value: Any) -> Any:
        """``value`` as a value of ``kind``, or a refusal naming ``key``."""
        try:
            return _convert(kind, value, cls.lenient)
        except (TypeError, ValueError, OverflowError) as exc:
            shown = "(hidden)" if key in cls.secret_keys else _preview(value)
            raise cls.error(f"{key}: {shown} is not a valid {kind}") from exc

    @classmethod
    def required_keys(cls) -> list[str]:
        """The keys without which there is no config, in declaration order."""
        return [f.name for f in dataclasses.fields(cls) if REQUIRED in f.metadata["rules"]]

    @classmethod
    def documented_keys(cls) -> dict[str, str]:
        """Each key and its documentation, in declaration order."""
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}

    def changed_keys(self, other: Self) -> list[str]:
        """Names of the keys whose values differ between ``self`` and ``other``."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    @classmethod
    def docs_table(
        cls, reload: Callable[[str], str], defaults: Mapping[str, str] | None = None
    ) -> str:
        """The keys as a Markdown table: key, type, default, reload (``reload(key)``), meaning.

        ``defaults``: text appended to a key's default (another place it can be set).
        """
        rows = ["| key | type | default | reload | meaning |\n", "|---|---|---|---|---|\n"]
        required = cls.required_keys()
        for f in dataclasses.fields(cls):
            default = "required" if f.name in required else _spelled(f.default)
            default += (defaults or {}).get(f.name, "")
            kind = _DOC_TYPES.get(str(f.type), f.type)
            rows.append(
                f"| `{f.name}` | {kind} | {default} | {reload(f.name)} | {f.metadata['doc']} |\n"
            )
        return "".join(rows)


def _convert(kind: Any, value: Any, lenient: bool) -> Any:
    """``value`` as a ``kind``; raises TypeError or ValueError when it is not one."""
    # bool is an int subclass; true is not a number.
    number = not isinstance(value, bool) and (
        isinstance(value, int | float) or (lenient and isinstance(value, str))
    )
    match kind:
        case "Path":
            if not isinstance(value, str | Path):
                raise TypeError
            return Path(value)
        case "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        case "bool":
            if isinstance(value, bool):
                return value
            if lenient and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise TypeError
        case "int":
            # 1e4 is 10000, but 1.5 is not an integer (nor is inf).
            if not number or (isinstance(value, float) and not (lenient and value.is_integer())):
                raise TypeError
            return int(value)
        case "float":
            if not number:
                raise TypeError
            seconds = float(value)
            if not math.isfinite(seconds):  # "inf" and 1e400 read as float("inf")
                raise ValueError
            return seconds
        case "tuple[str, ...]":
            if lenient and isinstance(value, str):
                return tuple(item.strip() for item in value.split(",") if item.strip())
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return tuple(value)
    raise AssertionError(f"no conversion to {kind}")  # pragma: no cover


def _preview(value: Any) -> str:
    """``value`` as a refusal shows it: a long one is cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: Field types as a reader of the file knows them.
_DOC_TYPES = {"tuple[str, ...]": "list of str"}


def _spelled(value: Any) -> str:
    """A default as the file would spell it (TOML and JSON alike), byte sizes spelled out."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        size = f"{value // 1024**2} MiB" if value % 1024**2 == 0 else f"{value // 1024} KiB"
        return f"`{value}` ({size})"
    return f"`{value}`"
