"""The relay's configuration: one typed object, from TOML and the environment.

Precedence, lowest first: the defaults below, the TOML file given with
``--config``, ``LINERELAY_<KEY>`` environment variables, command-line flags.
Every key is a field of :class:`RelayConfig` with its documentation and rules
(appliance/settings.py, shared with the bridge's config); docs/config.md is
generated from them (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.errors import ConfigError
from appliance.proxies import TrustedProxies
from appliance.settings import POSITIVE, Rule, Settings, at_least, between, one_of, setting
from tls import hostnames

ENV_PREFIX = "LINERELAY_"
#: ``listen = "unix:/run/linerelay/public.sock"``: a Unix socket, for a proxy on the machine.
UNIX_PREFIX = "unix:"
TLS_POLICIES = ("modern", "intermediate")
LOG_LEVELS = ("debug", "info", "warning", "error")
ADMIN_AUTH = ("auto", "token")
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
    "workers",
    "sentry_dsn",
    "store",
    "redis_url",
    "redis_lease_ttl",
)
#: The most processes ``workers`` may ask for (a typo's guard, not a tuning bound).
MAX_WORKERS = 256
#: ``store``: where webhooks, tenants, retry detection and bridge ownership live.
STORES = ("sqlite", "redis")


@dataclass(frozen=True)
class RelayConfig(Settings):
    """Every setting of ``linerelay serve``; see docs/config.md."""

    state_dir: Path = setting(Path("var"), "Tenants, the store and the dev PKI live here.")
    listen: str = setting(
        "127.0.0.1:8443",
        "Public listener (webhooks, bridges): HOST:PORT, or unix:/PATH behind a local proxy.",
    )
    admin_listen: str = setting(
        "127.0.0.1:9443",
        "Admin listener, plain HTTP: the operator console at /, /healthz, /readyz, "
        "/metrics. Keep it private: off loopback, every path but /healthz needs the admin "
        "token (admin_auth).",
    )
    admin_auth: str = setting(
        "auto",
        "'auto': every admin path but /healthz needs the admin token (`linerelay "
        "admin-token`, as a Bearer header or through the console's login) unless the "
        "admin listener is on a loopback address. 'token': needed on loopback too (a "
        "machine whose local users are not all operators).",
        one_of(ADMIN_AUTH),
    )
    tls_cert_file: str = setting(
        "", "PEM chain: leaf first, then intermediates. Empty: the embedded dev PKI."
    )
    tls_key_file: str = setting("", "PEM private key of the leaf. Empty: the embedded dev PKI.")
    tls_policy: str = setting(
        "modern",
        "'modern': TLS 1.3 only. 'intermediate': also TLS 1.2, ECDHE+AEAD only.",
        one_of(TLS_POLICIES),
    )
    server_name: str = setting(
        "",
        "The public host name LINE posts to (the webhook URL's host, no port). The "
        "certificate must name it: checked with the other certificate rules at start and "
        "on every reload (docs/conformance.md, 'Certificate rules'). Empty: the name is "
        "not checked.",
    )
    tls_allow_refused_chain: bool = setting(
        False,
        "Serve a certificate the certificate rules find LINE would refuse (expired, "
        "intermediates missing, a name server_name is not in, ...) instead of refusing to "
        "start (exit status 2) or, on reload, keeping the certificate that serves; each "
        "finding is then logged at error level. For emergencies and tests only.",
    )
    public_tls: bool = setting(
        True,
        "Terminate TLS on the public listener. false: plain HTTP for a reverse proxy that "
        "terminates TLS in front (docs/reverse-proxy.md); then listen must be a loopback "
        "address or a unix: socket.",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "Addresses or networks (and 'unix' for Unix-socket peers) of reverse proxies whose "
        "X-Forwarded-For is believed and which the per-address limits do not apply to. "
        "In the environment: comma-separated.",
    )
    proxy_protocol_from: tuple[str, ...] = setting(
        (),
        "Addresses or networks (and 'unix') of load balancers that open every connection "
        "with a PROXY protocol header, v2 or v1 (HAProxy's send-proxy-v2; "
        "docs/scale-out.md): the client address in it is believed, for the logs and the "
        "per-address limits, which apply to that client and not to the balancer. A "
        "connection from one of them without a valid header within 5 seconds is "
        "dropped. Nobody else's header is believed. In the environment: comma-separated.",
    )
    workers: int = setting(
        1,
        "Relay processes on this machine sharing the listeners, each with its own event "
        "loop (`linerelay serve --workers N`; docs/scale-out.md). More than 1 needs "
        'store = "redis".',
        between(1, MAX_WORKERS),
    )
    max_body_bytes: int = setting(
        1024 * 1024, "Largest webhook body accepted; larger gets 413.", POSITIVE
    )
    body_timeout: float = setting(
        10.0, "Seconds allowed to receive a whole webhook body; then 408.", POSITIVE
    )
    ack_deadline_ms: int = setting(
        800,
        "If the store has not committed by then, answer 503 + Retry-After instead of 200.",
        POSITIVE,
    )
    budget_ms: int = setting(
        1000, "LINE's answer budget; answers slower than this are counted.", POSITIVE
    )
    queue_cap: int = setting(
        10_000, "Unacked webhooks per tenant; beyond it new ones get 503.", POSITIVE
    )
    max_unacked_age: float = setting(
        86_400.0,
        "Seconds an unacked webhook is kept queued; older ones are expired (counted, logged, "
        "and kept retain_expired for an operator to replay).",
        POSITIVE,
    )
    dedupe_window: float = setting(
        300.0,
        "Seconds in which an identical body+signature (a retry) is answered 200, not queued.",
        POSITIVE,
    )
    retain_delivered: float = setting(
        86_400.0,
        "Seconds a delivered webhook is kept after a bridge acked it, to be listed, "
        "shown and replayed (`linerelay webhooks`); then its row and body are deleted. At "
        "least dedupe_window. Bodies are personal data: keep it short (docs/operations.md, "
        "'Retention').",
        POSITIVE,
    )
    retain_expired: float = setting(
        604_800.0,
        "Seconds an expired webhook (no bridge acked it within max_unacked_age) is kept "
        "after it expired, to be found and replayed; then its row and body are deleted. "
        "At least dedupe_window.",
        POSITIVE,
    )
    commit_max_batch: int = setting(
        512,
        "Most writes grouped into one SQLite transaction (one fsync), or one Redis "
        "pipeline (one round trip).",
        POSITIVE,
    )
    store: str = setting(
        "sqlite",
        "'sqlite': one process, STATE/store.db and STATE/tenants.db. 'redis': queues, "
        "tenants, retry detection and bridge ownership in Redis at redis_url, shared by "
        "every process and node configured with it (docs/redis.md).",
        one_of(STORES),
    )
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "With store = 'redis': redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS). "
        "Redis must run with appendonly yes and appendfsync always for a 200 to be "
        "durable (docs/redis.md).",
        Rule(
            lambda value: value.startswith(("redis://", "rediss://", "unix://")),
            "must be a redis://, rediss:// or unix:// URL",
        ),
    )
    redis_min_replicas: int = setting(
        0,
        "With store = 'redis': a 200 also waits until this many replicas have the "
        "webhook (WAIT); fewer within ack_deadline_ms is a 503, and the webhook, on the "
        "primary all the same, is still delivered (docs/redis.md, 'Replicas').",
        at_least(0),
    )
    redis_lease_ttl: float = setting(
        10.0,
        "With store = 'redis': seconds a relay process's hold on a tenant's bridges "
        "lasts unrenewed. A process that dies is replaced by a standby bridge connection "
        "on another process within about this long (a bridge that reconnects is served "
        "at once).",
        between(1, 300),
    )
    bridge_window: int = setting(
        64, "Webhooks in flight unacked on one protocol 1 bridge connection.", POSITIVE
    )
    bridge_window_v2: int = setting(
        256,
        "Webhooks in flight unacked on one protocol 2 bridge connection (batches fill it "
        "faster, so it is larger). At most 512, so that an ack naming the whole window "
        "fits in one bridge frame (16 KiB).",
        between(1, 512),
    )
    bridge_window_bytes: int = setting(
        4 * 1024 * 1024,
        "Bytes of webhook bodies in flight unacked on one bridge connection: large "
        "webhooks make the window fewer than bridge_window (one is always allowed).",
        POSITIVE,
    )
    nack_backoff: float = setting(
        1.0,
        "Seconds before a nacked webhook is sent again; doubles per attempt, at most 60.",
        POSITIVE,
    )
    ping_interval: float = setting(
        20.0, "Seconds between WebSocket pings to each bridge.", POSITIVE
    )
    bridge_idle_timeout: float = setting(
        60.0, "A connection silent this long (no pong, no frame) is dropped as dead.", POSITIVE
    )
    send_timeout: float = setting(
        10.0,
        "Seconds a peer has to take an answer or a bridge frame; one that does not (an "
        "HTTP/2 client holding its flow-control window at zero, a bridge that stopped "
        "reading) is disconnected.",
        POSITIVE,
    )
    max_connections: int = setting(
        50_000,
        "Public connections open at once; more are refused before TLS. Lowered at start "
        "to what the open-files limit leaves room for.",
        POSITIVE,
    )
    max_connections_per_address: int = setting(
        256, "Public connections open at once from one client address (IPv6: one /64).", POSITIVE
    )
    connection_rate_per_address: float = setting(
        100.0,
        "New public connections a second from one client address, after a burst of ten "
        "seconds' worth (a TLS scanner's); more are refused before TLS.",
        POSITIVE,
    )
    tls_handshake_timeout: float = setting(10.0, "Seconds allowed for a TLS handshake.", POSITIVE)
    tls_read_buffer: int = setting(
        TLS_READ_BUFFER,
        "Bytes asyncio reads from a TLS connection at a time, and keeps allocated for it "
        "per connection, idle or not. 0: asyncio's own 256 KiB. A smaller buffer saves "
        "memory per idle bridge and costs large bodies more reads (README, 'Performance'). "
        "Set only on the CPython versions it was measured on (3.11 to 3.13); elsewhere "
        "asyncio's own is used and an info line says so.",
        Rule(
            lambda value: (
                value == 0 or TLS_READ_BUFFER_RANGE[0] <= value <= TLS_READ_BUFFER_RANGE[1]
            ),
            f"must be 0 (asyncio's own) or from {TLS_READ_BUFFER_RANGE[0]} "
            f"to {TLS_READ_BUFFER_RANGE[1]} bytes",
        ),
    )
    h2_max_streams: int = setting(
        1000,
        "HTTP/2 streams on one connection before the relay asks the client to open a "
        "new one (GOAWAY); a client that goes on well past it is disconnected.",
        POSITIVE,
    )
    h2_reset_burst: int = setting(
        100,
        "Stream resets (RST_STREAM) an HTTP/2 client may send on one connection in a "
        "burst; past it and h2_reset_rate the connection is closed (rapid reset, "
        "CVE-2023-44487).",
        POSITIVE,
    )
    h2_reset_rate: float = setting(
        10.0,
        "Stream resets a second an HTTP/2 client may send on one connection after the burst.",
        POSITIVE,
    )
    bridge_auth_burst: int = setting(
        10,
        "Failed bridge authentications from one client address before the address is "
        "answered 429 + Retry-After (IPv6: per /64).",
        POSITIVE,
    )
    bridge_auth_interval: float = setting(
        6.0,
        "Seconds after which one more bridge authentication from a locked-out address is allowed.",
        POSITIVE,
    )
    bridge_connect_burst: int = setting(
        10,
        "Bridge connections one tenant may open in a burst; past it and "
        "bridge_connect_interval they are answered 429 + Retry-After.",
        POSITIVE,
    )
    bridge_connect_interval: float = setting(
        2.0,
        "Seconds after which a tenant past its burst may open one more bridge connection.",
        POSITIVE,
    )
    tenant_poll_interval: float = setting(
        1.0, "Seconds between checks for tenants added, removed or rotated by the CLI.", POSITIVE
    )
    log_level: str = setting("info", "debug, info, warning or error.", one_of(LOG_LEVELS))
    hypercorn_access_log: bool = setting(
        False,
        "Also write an access log in Hypercorn's shape (one more line per HTTP request "
        "on the public listener, HTTP/1.1 and HTTP/2, bridge tokens in URLs redacted); "
        "the relay's own line per webhook is always written.",
    )
    sentry_dsn: str = setting(
        "",
        "Send unexpected exceptions to Sentry: the project's DSN "
        "(https://KEY@HOST/PROJECT; needs the `sentry` extra: pip install 'linerelay[sentry]'). "
        "Reports carry no body, signature, secret or token (docs/operations.md, "
        "'Error reports'). Empty: off, and sentry-sdk is not even imported.",
        Rule(
            lambda value: not value or _is_dsn(value),
            "must be a Sentry DSN: https://KEY@HOST/PROJECT",
        ),
    )

    error = ConfigError
    lenient = True
    secret_keys = frozenset({"sentry_dsn"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(
            bool(self.tls_cert_file) == bool(self.tls_key_file),
            "tls_cert_file",
            "tls_cert_file and tls_key_file go together",
        )
        if not self.listen.startswith(UNIX_PREFIX):
            host, _ = parse_address(self.listen, "listen")
            self.require(
                self.public_tls or _is_loopback(host),
                "public_tls",
                "plain HTTP is served only on a loopback address or a unix: socket",
            )
        parse_address(self.admin_listen, "admin_listen")
        self.require(
            not self.server_name
            or hostnames.is_dns_name(self.server_name)
            or hostnames.is_ip_address(self.server_name),
            "server_name",
            f"{self.server_name!r} is not a host name or an IP address",
        )
        TrustedProxies(self.trusted_proxies)
        TrustedProxies(self.proxy_protocol_from, "proxy_protocol_from")
        self.require(
            self.workers == 1 or self.store == "redis",
            "workers",
            f'{self.workers} processes need the shared store (store = "redis"): the '
            "SQLite store's group commit and the hub's per-tenant order live in one "
            "process (docs/scale-out.md)",
        )
        for key in ("retain_delivered", "retain_expired"):
            # A pruned row takes its retry digest with it: a relay restarted later
            # would queue LINE's retry of that webhook again.
            self.require(
                getattr(self, key) >= self.dedupe_window,
                key,
                f"must be at least dedupe_window ({self.dedupe_window:g} s): a webhook's "
                "row is what recognises LINE's retries of it after a restart",
            )
        self.require(
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
    table = RelayConfig.docs_table(
        lambda key: "restart" if key in RESTART_KEYS else "yes",
        {"state_dir": " (or `--state-dir`, `$LINERELAY_STATE_DIR`)"},
    )
    return _DOCS_INTRO + table + _DOCS_EXAMPLE


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
    fields = {f.name for f in dataclasses.fields(RelayConfig)}
    for name, env_value in (env or {}).items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower()
            if key in fields:
                values[key] = env_value
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return RelayConfig.build(values)


def _is_dsn(value: str) -> bool:
    """Whether ``value`` has a Sentry DSN's shape: http(s), a public key, a host, a project."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    project = parts.path.rstrip("/").rpartition("/")[2]
    return (
        parts.scheme in ("http", "https")
        and bool(parts.username)
        and bool(parts.hostname)
        and project.isdigit()
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
