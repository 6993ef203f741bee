"""Properties of the config loader, :func:`appliance.config.load` (docs/config.md).

TOML documents are written by the tests' own small writer (below), so they
can hold any TOML value: strings with any character, integers of any length,
inf and nan, dates and times, arrays, inline tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from appliance import config
from appliance.config import LOG_LEVELS, TLS_POLICIES, RelayConfig
from appliance.errors import ConfigError
from tests.support.properties import examples

FIELDS = {f.name: f for f in dataclasses.fields(RelayConfig)}
KINDS = {name: f.type for name, f in FIELDS.items()}
DEFAULTS = RelayConfig()
PYTHON_TYPES = {
    "Path": Path,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "tuple[str, ...]": tuple,
}
#: Valid trusted_proxies entries.
PROXIES = st.sampled_from(["127.0.0.1", "10.0.0.0/8", "::1", "unix", "192.0.2.0/24"])

# -- a TOML writer ----------------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string; every character that needs it written as \\UXXXXXXXX."""
    out = []
    for char in text:
        if char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\U{ord(char):08X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Digits):
        return value.text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise AssertionError(f"no TOML for {value!r}")


def toml_document(values: dict[str, Any]) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in values.items())


@dataclasses.dataclass(frozen=True)
class Digits:
    """An integer literal written digit by digit: longer than Python will print."""

    text: str


NO_SURROGATES = st.characters(exclude_categories=("Cs",))
TEXT = st.text(NO_SURROGATES, max_size=30)
#: Digits of any script (int() reads some of them, str.isdigit() more).
DIGITS = st.text(st.characters(categories=("Nd", "No")) | st.sampled_from("0123456789"), max_size=6)
#: Strings an operator (or a typo) puts where a number, a flag or an address goes.
ODD_STRINGS = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "1e400", "1.5", "0", "-1", "1_000", " 7 ", "", "yes"]),
    st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{1,3})?", fullmatch=True),
    st.builds(lambda host, port: f"{host}:{port}", st.sampled_from(["h", "[::1]", ":"]), DIGITS),
    st.integers(4000, 6000).map(lambda n: "h:" + "9" * n),
    st.integers(4000, 6000).map(lambda n: "9" * n),
)
TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(1, 6000).map(lambda n: Digits("9" * n)),
    st.floats(),
    st.sampled_from([math.inf, -math.inf, math.nan, 1.5, 1e300, 5e-324]),
    TEXT,
    ODD_STRINGS,
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.dates(),
    st.times(),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=6,
)
KEYS = st.one_of(st.sampled_from(sorted(FIELDS)), st.sampled_from(sorted(FIELDS)), TEXT)


def load(text: str | None, env: dict[str, str], overrides: dict[str, Any] | None = None) -> Any:
    """config.load with ``text`` as the TOML file (None: no file)."""
    if text is None:
        return config.load(None, env, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "relay.toml"
        path.write_text(text, encoding="utf-8")
        return config.load(path, env, overrides)


def attempt(
    text: str | None, env: dict[str, str], overrides: dict[str, Any] | None = None
) -> RelayConfig | ConfigError:
    """What load gives: the config, or the ConfigError it raised (anything else escapes)."""
    try:
        result: RelayConfig = load(text, env, overrides)
    except ConfigError as error:
        return error
    return result


def check_valid(result: RelayConfig) -> None:
    """Every field has its declared type, and the documented checks hold."""
    for name, kind in KINDS.items():
        value = getattr(result, name)
        assert type(value) is PYTHON_TYPES[kind] or (kind == "Path" and isinstance(value, Path))
    assert result.tls_policy in TLS_POLICIES
    assert result.log_level in LOG_LEVELS
    assert result.bridge_idle_timeout > result.ping_interval
    assert min(result.retain_delivered, result.retain_expired) >= result.dedupe_window
    low, high = config.TLS_READ_BUFFER_RANGE
    assert result.tls_read_buffer == 0 or low <= result.tls_read_buffer <= high
    assert result.redis_min_replicas >= 0  # 0: no replica is waited for
    for name, kind in KINDS.items():
        if kind in ("int", "float") and name not in ("tls_read_buffer", "redis_min_replicas"):
            assert getattr(result, name) > 0, name
        if kind == "float":
            assert math.isfinite(getattr(result, name)), f"{name} is not a number of seconds"


def names_a_key(error: ConfigError, keys: set[str]) -> bool:
    return any(key in str(error) or repr(key) in str(error) for key in keys)


# -- arbitrary input ------------------------------------------------------------


@examples(150)
@given(st.dictionaries(KEYS, TOML_VALUES, max_size=5))
def test_any_toml_document_gives_a_valid_config_or_a_config_error_naming_a_key(
    values: dict[str, Any],
) -> None:
    """Any TOML document of known and unknown keys with values of any TOML type loads to a
    valid RelayConfig or raises ConfigError naming one of its keys; nothing else."""
    result = attempt(toml_document(values), {})
    if isinstance(result, ConfigError):
        assert names_a_key(result, set(values)) or "TOML" in str(result), str(result)
    else:
        check_valid(result)


@examples(150)
@given(
    st.dictionaries(
        st.one_of(
            st.sampled_from(sorted(FIELDS)).map(lambda k: config.ENV_PREFIX + k.upper()),
            TEXT,
        ),
        st.one_of(TEXT, ODD_STRINGS, TOML_SCALARS.map(toml_value)),
        max_size=5,
    )
)
def test_any_environment_gives_a_valid_config_or_a_config_error_naming_a_key(
    env: dict[str, str],
) -> None:
    """Any environment (LINERELAY_* with any text, other variables) loads to a valid
    RelayConfig or raises ConfigError naming the key; other variables are ignored."""
    keys = {n[len(config.ENV_PREFIX) :].lower() for n in env if n.startswith(config.ENV_PREFIX)}
    result = attempt(None, env)
    if isinstance(result, ConfigError):
        assert names_a_key(result, keys), str(result)
    else:
        check_valid(result)


@examples(150)
@given(st.text(max_size=200))
def test_any_text_as_the_file_gives_a_config_or_a_config_error(text: str) -> None:
    """A config file of any text, TOML or not, loads or raises ConfigError; nothing else."""
    result = attempt(text, {})
    if not isinstance(result, ConfigError):
        check_valid(result)


@examples(40)
@given(st.integers(1, 3000), st.sampled_from(["[", "{a = "]))
def test_deeply_nested_toml_is_a_config_error(depth: int, opener: str) -> None:
    """Nesting however deep is a ConfigError (the TOML parser's recursion stays inside)."""
    closer = "]" if opener == "[" else "}"
    result = attempt(f"queue_cap = {opener * depth}1{closer * depth}\n", {})
    assert isinstance(result, ConfigError)


# -- valid values ------------------------------------------------------------------

POSITIVE_FLOATS = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False)
PORTS = st.integers(1, 65535)
ADDRESSES = st.builds(lambda host, port: f"{host}:{port}", TEXT.filter(bool), PORTS)


def valid_values(name: str) -> st.SearchStrategy[Any]:
    """Values ``name`` accepts, as Python values of its type."""
    kind = KINDS[name]
    if name == "tls_policy":
        return st.sampled_from(TLS_POLICIES)
    if name == "log_level":
        return st.sampled_from(LOG_LEVELS)
    if name == "admin_auth":
        return st.sampled_from(config.ADMIN_AUTH)
    if name in ("listen", "admin_listen"):
        return ADDRESSES
    if name == "server_name":
        return st.sampled_from(["", "relay.example.com", "localhost", "192.0.2.7", "::1"])
    if name == "bridge_window_v2":
        return st.integers(1, 512)
    if name == "workers":
        return st.integers(1, config.MAX_WORKERS)
    if name == "sentry_dsn":
        return st.sampled_from(["", "https://0123abcd@o1.ingest.sentry.io/4507", "http://k@h:9/1"])
    if name == "tls_read_buffer":  # 0 is asyncio's own size
        return st.one_of(st.just(0), st.integers(*config.TLS_READ_BUFFER_RANGE))
    if name == "store":
        return st.sampled_from(config.STORES)
    if name == "redis_url":
        return st.builds(lambda host, db: f"redis://{host}:6379/{db}", TEXT, st.integers(0, 15))
    if name == "redis_min_replicas":  # 0: no replica waited for
        return st.integers(0, 2**63 - 1)
    if name == "redis_lease_ttl":
        return st.floats(1, 300)
    if kind == "tuple[str, ...]":
        return st.lists(PROXIES, max_size=3).map(tuple)
    if kind == "Path":
        return TEXT.map(Path)
    if kind == "str":
        return TEXT
    if kind == "int":
        return st.integers(1, 2**63 - 1)
    if kind == "float":
        return POSITIVE_FLOATS
    assert kind == "bool"
    return st.booleans()


SOURCES = ("file", "env", "override")


def as_env(value: object, data: st.DataObject) -> str:
    """How an operator would write ``value`` in a LINERELAY_* variable."""
    if isinstance(value, bool):
        spellings = ["true", "True", "TRUE", "1"] if value else ["false", "False", "0"]
        return data.draw(st.sampled_from(spellings))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def coherent(values: dict[str, Any]) -> bool:
    """The cross-key checks hold for ``values`` over the defaults."""
    merged = {**dataclasses.asdict(DEFAULTS), **values}
    host = merged["listen"].rpartition(":")[0].strip("[]")
    plain_ok = merged["public_tls"] or host in ("127.0.0.1", "::1", "localhost")
    return (
        merged["bridge_idle_timeout"] > merged["ping_interval"]
        and bool(merged["tls_cert_file"]) == bool(merged["tls_key_file"])
        and plain_ok
        and (merged["workers"] == 1 or merged["store"] == "redis")  # more: the shared store
        and merged["retain_delivered"] >= merged["dedupe_window"]
        and merged["retain_expired"] >= merged["dedupe_window"]
    )


def split(
    values: dict[str, Any], where: dict[str, str], data: st.DataObject
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``values`` put in the file, the environment or the overrides as ``where`` says."""
    file = {k: v for k, v in values.items() if where[k] == "file"}
    file = {k: (str(v) if isinstance(v, Path) else v) for k, v in file.items()}
    env = {
        config.ENV_PREFIX + k.upper(): as_env(v, data)
        for k, v in values.items()
        if where[k] == "env"
    }
    overrides = {k: v for k, v in values.items() if where[k] == "override"}
    return toml_document(file), env, overrides


@examples(200)
@given(st.sets(st.sampled_from(sorted(FIELDS)), max_size=8), st.data())
def test_every_valid_value_round_trips_from_any_source(
    names: set[str], data: st.DataObject
) -> None:
    """Any valid value of any key, given in the file, the environment or as an override,
    is the value loaded; every key not given keeps its default."""
    values = {name: data.draw(valid_values(name), label=name) for name in sorted(names)}
    assume(coherent(values))
    where = {name: data.draw(st.sampled_from(SOURCES), label=f"{name} from") for name in values}
    text, env, overrides = split(values, where, data)
    result = load(text, env, overrides)
    for name, default in dataclasses.asdict(DEFAULTS).items():
        assert getattr(result, name) == values.get(name, default), name


@examples(150)
@given(st.sampled_from(sorted(FIELDS)), st.data())
def test_overrides_beat_the_environment_which_beats_the_file(
    name: str, data: st.DataObject
) -> None:
    """A key given in several places takes the override's value, else the environment's,
    else the file's; an override of None counts as not given."""
    given_in = data.draw(st.sets(st.sampled_from(SOURCES), min_size=1))
    values = {source: data.draw(valid_values(name), label=source) for source in given_in}
    for value in values.values():
        assume(coherent({name: value}))
    text = ""
    if "file" in values:
        in_file = values["file"]
        text = toml_document({name: str(in_file) if isinstance(in_file, Path) else in_file})
    env = {config.ENV_PREFIX + name.upper(): as_env(values["env"], data)} if "env" in values else {}
    overrides = {name: values["override"]} if "override" in values else {name: None}
    winner = next(values[s] for s in ("override", "env", "file") if s in values)
    assert getattr(load(text, env, overrides), name) == winner
