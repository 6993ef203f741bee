"""The relay's configuration: one typed object, from TOML and the environment.

Precedence, lowest first: the defaults below, the TOML file given with
``--config``, ``LINERELAY_<KEY>`` environment variables, command-line flags.
Every key is a field of :class:`RelayConfig` with its documentation in the
field's metadata; docs/config.md lists them all (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

ENV_PREFIX = "LINERELAY_"
TLS_POLICIES = ("modern", "intermediate")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _doc(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class RelayConfig:
    """Every setting of ``linerelay serve``; see docs/config.md."""

    state_dir: Path = _doc(Path("var"), "Tenants, the store and the dev PKI live here.")
    listen: str = _doc("127.0.0.1:8443", "Public HTTPS listener (webhooks, bridges), HOST:PORT.")
    admin_listen: str = _doc(
        "127.0.0.1:9443",
        "Admin listener, plain HTTP: /healthz, /readyz, /metrics. Keep it private.",
    )
    tls_cert_file: str = _doc(
        "", "PEM chain: leaf first, then intermediates. Empty: the embedded dev PKI."
    )
    tls_key_file: str = _doc("", "PEM private key of the leaf. Empty: the embedded dev PKI.")
    tls_policy: str = _doc(
        "modern", "'modern': TLS 1.3 only. 'intermediate': also TLS 1.2, ECDHE+AEAD only."
    )
    max_body_bytes: int = _doc(1024 * 1024, "Largest webhook body accepted; larger gets 413.")
    body_timeout: float = _doc(10.0, "Seconds allowed to receive a whole webhook body; then 408.")
    ack_deadline_ms: int = _doc(
        800, "If the store has not committed by then, answer 503 + Retry-After instead of 200."
    )
    budget_ms: int = _doc(1000, "LINE's answer budget; answers slower than this are counted.")
    queue_cap: int = _doc(10_000, "Unacked webhooks per tenant; beyond it new ones get 503.")
    max_unacked_age: float = _doc(
        86_400.0, "Seconds an unacked webhook is kept; older ones are expired, counted and logged."
    )
    dedupe_window: float = _doc(
        300.0, "Seconds in which an identical body+signature (a retry) is answered 200, not queued."
    )
    commit_max_batch: int = _doc(
        512, "Most writes grouped into one SQLite transaction (one fsync)."
    )
    bridge_window: int = _doc(64, "Webhooks in flight unacked on one bridge connection.")
    nack_backoff: float = _doc(
        1.0, "Seconds before a nacked webhook is sent again; doubles per attempt, at most 60."
    )
    ping_interval: float = _doc(20.0, "Seconds between WebSocket pings to each bridge.")
    bridge_idle_timeout: float = _doc(
        60.0, "A connection silent this long (no pong, no frame) is dropped as dead."
    )
    tenant_poll_interval: float = _doc(
        1.0, "Seconds between checks for tenants added, removed or rotated by the CLI."
    )
    log_level: str = _doc("info", "debug, info, warning or error.")
    hypercorn_access_log: bool = _doc(
        False,
        "Also write Hypercorn's access log (one more line per request, bridge tokens "
        "in URLs redacted); the relay's own line per webhook is always written.",
    )

    def __post_init__(self) -> None:
        _check(self.tls_policy in TLS_POLICIES, "tls_policy", f"must be one of {TLS_POLICIES}")
        _check(self.log_level in LOG_LEVELS, "log_level", f"must be one of {LOG_LEVELS}")
        _check(
            bool(self.tls_cert_file) == bool(self.tls_key_file),
            "tls_cert_file",
            "tls_cert_file and tls_key_file go together",
        )
        for name in ("listen", "admin_listen"):
            parse_address(getattr(self, name), name)
        for name in ("max_body_bytes", "ack_deadline_ms", "budget_ms", "queue_cap"):
            _check(getattr(self, name) > 0, name, "must be positive")
        for name in ("commit_max_batch", "bridge_window"):
            _check(getattr(self, name) > 0, name, "must be positive")
        for name in (
            "body_timeout",
            "max_unacked_age",
            "dedupe_window",
            "nack_backoff",
            "ping_interval",
            "bridge_idle_timeout",
            "tenant_poll_interval",
        ):
            _check(getattr(self, name) > 0, name, "must be positive")
        _check(
            self.bridge_idle_timeout > self.ping_interval,
            "bridge_idle_timeout",
            "must be longer than ping_interval",
        )

    @property
    def uses_dev_pki(self) -> bool:
        """True when no certificate is configured and the embedded dev PKI serves."""
        return not self.tls_cert_file

    def replace(self, **changes: Any) -> RelayConfig:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)


def documented_keys() -> dict[str, str]:
    """Each config key and its documentation, in declaration order."""
    return {f.name: f.metadata["doc"] for f in dataclasses.fields(RelayConfig)}


def parse_address(value: str, key: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a tuple; raises :class:`ConfigError`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def load(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RelayConfig:
    """Build the config from ``path`` (TOML), ``env`` and ``overrides``; validates everything."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                values.update(tomllib.load(fh))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    fields = {f.name: f for f in dataclasses.fields(RelayConfig)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r}")
    for name, env_value in (env or {}).items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower()
            if key in fields:
                values[key] = env_value
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    typed = {key: _coerce(key, fields[key].type, value) for key, value in values.items()}
    try:
        return RelayConfig(**typed)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """Convert a TOML or environment value to the field's type, or say why not."""
    try:
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
                if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                    return value.lower() in ("true", "1")
                raise TypeError
            case "int":
                if isinstance(value, bool):
                    raise TypeError
                return int(value)
            case "float":
                if isinstance(value, bool):
                    raise TypeError
                return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {value!r} is not a valid {kind}") from exc
    raise ConfigError(f"{key}: unsupported type {kind}")  # pragma: no cover


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")
