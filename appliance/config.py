"""The relay's configuration: one typed object, from TOML and the environment.

Precedence, lowest first: the defaults below, the TOML file given with
``--config``, ``LINERELAY_<KEY>`` environment variables, command-line flags.
Every key is a field of :class:`RelayConfig` with its documentation in the
field's metadata; docs/config.md lists them all (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError
from appliance.proxies import TrustedProxies
from tls import hostnames

ENV_PREFIX = "LINERELAY_"
#: ``listen = "unix:/run/linerelay/public.sock"``: a Unix socket, for a proxy on the machine.
UNIX_PREFIX = "unix:"
TLS_POLICIES = ("modern", "intermediate")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: ``tls_read_buffer``'s default: a signed webhook or a bridge frame of a few
#: hundred bytes in one read, for ~2 KB per idle TLS connection; a 1 MiB body
#: costs ~3 ms more CPU than with asyncio's 256 KiB (README, "Performance").
TLS_READ_BUFFER = 2 * 1024
#: Its bounds, besides 0 (asyncio's own): 1 KiB already costs a 1 MiB body
#: 10-25 % more CPU than 2 KiB, for 1 KB less per idle bridge; the top is
#: asyncio's own size.
TLS_READ_BUFFER_RANGE = (1024, 256 * 1024)
#: Keys a reload (SIGHUP) cannot change: a reload that changes one says so and
#: keeps the running value. Every other key applies on reload, to live
#: connections and tenants too.
RESTART_KEYS = (
    "state_dir",
    "listen",
    "admin_listen",
    "tls_policy",
    "public_tls",
    "hypercorn_access_log",
    "tls_read_buffer",
)


def _doc(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class RelayConfig:
    """Every setting of ``linerelay serve``; see docs/config.md."""

    state_dir: Path = _doc(Path("var"), "Tenants, the store and the dev PKI live here.")
    listen: str = _doc(
        "127.0.0.1:8443",
        "Public listener (webhooks, bridges): HOST:PORT, or unix:/PATH behind a local proxy.",
    )
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
    server_name: str = _doc(
        "",
        "The public host name LINE posts to (the webhook URL's host, no port). The "
        "certificate must name it: checked with the other certificate rules at start and "
        "on every reload (docs/conformance.md, 'Certificate rules'). Empty: the name is "
        "not checked.",
    )
    tls_allow_refused_chain: bool = _doc(
        False,
        "Serve a certificate the certificate rules find LINE would refuse (expired, "
        "intermediates missing, a name server_name is not in, ...) instead of refusing to "
        "start (exit status 2) or, on reload, keeping the certificate that serves; each "
        "finding is then logged at error level. For emergencies and tests only.",
    )
    public_tls: bool = _doc(
        True,
        "Terminate TLS on the public listener. false: plain HTTP for a reverse proxy that "
        "terminates TLS in front (docs/reverse-proxy.md); then listen must be a loopback "
        "address or a unix: socket.",
    )
    trusted_proxies: tuple[str, ...] = _doc(
        (),
        "Addresses or networks (and 'unix' for Unix-socket peers) of reverse proxies whose "
        "X-Forwarded-For is believed and which the per-address limits do not apply to. "
        "In the environment: comma-separated.",
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
    bridge_window: int = _doc(64, "Webhooks in flight unacked on one protocol 1 bridge connection.")
    bridge_window_v2: int = _doc(
        256,
        "Webhooks in flight unacked on one protocol 2 bridge connection (batches fill it "
        "faster, so it is larger).",
    )
    bridge_window_bytes: int = _doc(
        4 * 1024 * 1024,
        "Bytes of webhook bodies in flight unacked on one bridge connection: large "
        "webhooks make the window fewer than bridge_window (one is always allowed).",
    )
    nack_backoff: float = _doc(
        1.0, "Seconds before a nacked webhook is sent again; doubles per attempt, at most 60."
    )
    ping_interval: float = _doc(20.0, "Seconds between WebSocket pings to each bridge.")
    bridge_idle_timeout: float = _doc(
        60.0, "A connection silent this long (no pong, no frame) is dropped as dead."
    )
    send_timeout: float = _doc(
        10.0,
        "Seconds a peer has to take an answer or a bridge frame; one that does not (an "
        "HTTP/2 client holding its flow-control window at zero, a bridge that stopped "
        "reading) is disconnected.",
    )
    max_connections: int = _doc(
        50_000,
        "Public connections open at once; more are refused before TLS. Lowered at start "
        "to what the open-files limit leaves room for.",
    )
    max_connections_per_address: int = _doc(
        256, "Public connections open at once from one client address (IPv6: one /64)."
    )
    connection_rate_per_address: float = _doc(
        100.0,
        "New public connections a second from one client address, after a burst of ten "
        "seconds' worth (a TLS scanner's); more are refused before TLS.",
    )
    tls_handshake_timeout: float = _doc(10.0, "Seconds allowed for a TLS handshake.")
    tls_read_buffer: int = _doc(
        TLS_READ_BUFFER,
        "Bytes asyncio reads from a TLS connection at a time, and keeps allocated for it "
        "per connection, idle or not. 0: asyncio's own 256 KiB. A smaller buffer saves "
        "memory per idle bridge and costs large bodies more reads (README, 'Performance'). "
        "Set only on the CPython versions it was measured on (3.11 to 3.13); elsewhere "
        "asyncio's own is used and an info line says so.",
    )
    h2_max_streams: int = _doc(
        1000,
        "HTTP/2 streams on one connection before the relay asks the client to open a "
        "new one (GOAWAY); a client that goes on well past it is disconnected.",
    )
    h2_reset_burst: int = _doc(
        100,
        "Stream resets (RST_STREAM) an HTTP/2 client may send on one connection in a "
        "burst; past it and h2_reset_rate the connection is closed (rapid reset, "
        "CVE-2023-44487).",
    )
    h2_reset_rate: float = _doc(
        10.0, "Stream resets a second an HTTP/2 client may send on one connection after the burst."
    )
    bridge_auth_burst: int = _doc(
        10,
        "Failed bridge authentications from one client address before the address is "
        "answered 429 + Retry-After (IPv6: per /64).",
    )
    bridge_auth_interval: float = _doc(
        6.0,
        "Seconds after which one more bridge authentication from a locked-out address is allowed.",
    )
    bridge_connect_burst: int = _doc(
        10,
        "Bridge connections one tenant may open in a burst; past it and "
        "bridge_connect_interval they are answered 429 + Retry-After.",
    )
    bridge_connect_interval: float = _doc(
        2.0, "Seconds after which a tenant past its burst may open one more bridge connection."
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
        if not self.listen.startswith(UNIX_PREFIX):
            host, _ = parse_address(self.listen, "listen")
            _check(
                self.public_tls or _is_loopback(host),
                "public_tls",
                "plain HTTP is served only on a loopback address or a unix: socket",
            )
        parse_address(self.admin_listen, "admin_listen")
        _check(
            not self.server_name
            or hostnames.is_dns_name(self.server_name)
            or hostnames.is_ip_address(self.server_name),
            "server_name",
            f"{self.server_name!r} is not a host name or an IP address",
        )
        TrustedProxies(self.trusted_proxies)
        for name in (
            "max_body_bytes",
            "ack_deadline_ms",
            "budget_ms",
            "queue_cap",
            "commit_max_batch",
            "bridge_window",
            "bridge_window_v2",
            "bridge_window_bytes",
            "max_connections",
            "max_connections_per_address",
            "h2_max_streams",
            "h2_reset_burst",
            "bridge_auth_burst",
            "bridge_connect_burst",
        ):
            _check(getattr(self, name) > 0, name, "must be positive")
        for name in (
            "send_timeout",
            "connection_rate_per_address",
            "tls_handshake_timeout",
            "h2_reset_rate",
            "bridge_auth_interval",
            "bridge_connect_interval",
            "body_timeout",
            "max_unacked_age",
            "dedupe_window",
            "nack_backoff",
            "ping_interval",
            "bridge_idle_timeout",
            "tenant_poll_interval",
        ):
            _check(getattr(self, name) > 0, name, "must be positive")
        low, high = TLS_READ_BUFFER_RANGE
        _check(
            self.tls_read_buffer == 0 or low <= self.tls_read_buffer <= high,
            "tls_read_buffer",
            f"must be 0 (asyncio's own) or from {low} to {high} bytes",
        )
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


_DOCS_INTRO = """\
# Relay configuration

<!-- Generated by `linerelay config --docs` from appliance/config.py; edit there. -->

`linerelay serve [--config FILE]` reads one TOML file of top-level keys. Every
key may also be set in the environment as `LINERELAY_<KEY>` (upper case), which
beats the file; `--state-dir`, `--listen` and `--admin-listen` beat both. With no
file at all the relay runs on the embedded default: the values below.

Unknown keys, values of the wrong type and out-of-range values are refused at
start with a message naming the key (exit status 2). `SIGHUP` re-reads the file;
a broken edit keeps the running config and logs why. Keys marked *restart* in
the table need a restart to change (a reload that changes them says so and keeps
the old values); every other key applies on reload, to open connections and
tenants too.

| key | type | default | reload | meaning |
|---|---|---|---|---|
"""

_DOCS_EXAMPLE = """
## Example: a production relay

```toml
listen = "0.0.0.0:443"
admin_listen = "127.0.0.1:9443"
tls_cert_file = "/etc/letsencrypt/live/relay.example.com/fullchain.pem"
tls_key_file = "/etc/letsencrypt/live/relay.example.com/privkey.pem"
server_name = "relay.example.com"  # the certificate must name it (checked at start and reload)
tls_policy = "modern"          # "intermediate" to also accept TLS 1.2 (ECDHE + AEAD only)
state_dir = "/var/lib/linerelay"
queue_cap = 50000
max_unacked_age = 259200       # three days
```

Use the **full chain** (`fullchain.pem`: leaf, then intermediates), not `cert.pem`:
LINE's platform rejects a server that does not send its intermediates.
"""


def render_docs() -> str:
    """docs/config.md, from the fields of :class:`RelayConfig` (``linerelay config --docs``)."""
    rows = []
    for f in dataclasses.fields(RelayConfig):
        reload = "restart" if f.name in RESTART_KEYS else "yes"
        default = _toml_value(f.default)
        if f.name == "state_dir":
            default += " (or `--state-dir`, `$LINERELAY_STATE_DIR`)"
        kind = _DOC_TYPES.get(str(f.type), f.type)
        rows.append(f"| `{f.name}` | {kind} | {default} | {reload} | {f.metadata['doc']} |\n")
    return _DOCS_INTRO + "".join(rows) + _DOCS_EXAMPLE


#: Field types as a TOML user reads them.
_DOC_TYPES = {"tuple[str, ...]": "list of str"}


def _toml_value(value: Any) -> str:
    """A default as it would be written in the TOML file, with byte sizes spelled out."""
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


def parse_address(value: str, key: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a tuple; raises :class:`ConfigError`."""
    host, sep, port = value.rpartition(":")
    digits = port.isascii() and port.isdigit() and len(port) <= 5
    if not sep or not host or not digits or not 0 < int(port) < 65536:
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
        except (ValueError, RecursionError) as exc:
            # TOMLDecodeError is a ValueError; so is an integer over Python's digit
            # limit, and deep nesting exhausts tomllib's recursion.
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
                # 1e4 is 10000, but 1.5 is not an integer (nor is inf).
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise TypeError
                return int(value)
            case "float":
                if isinstance(value, bool):
                    raise TypeError
                seconds = float(value)
                if not math.isfinite(seconds):  # "inf" and "1e400" read as float("inf")
                    raise ValueError
                return seconds
            case "tuple[str, ...]":
                if isinstance(value, str):
                    return tuple(item.strip() for item in value.split(",") if item.strip())
                if not isinstance(value, list | tuple) or not all(
                    isinstance(item, str) for item in value
                ):
                    raise TypeError
                return tuple(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{key}: {value!r} is not a valid {kind}") from exc
    raise ConfigError(f"{key}: unsupported type {kind}")  # pragma: no cover


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")
