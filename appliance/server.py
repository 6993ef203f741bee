"""Running the relay: listeners, lifecycle, signals and housekeeping.

Serving is kept apart from the apps (as Hypercorn and Quart do): this module
builds the parts from a :class:`RelayConfig`, binds both listeners before
anything is announced ready, and serves the public app over TLS (through
:class:`appliance.listener.PublicListener`, which admits connections before
Hypercorn serves them) and the admin app over plain HTTP (Hypercorn's own
``serve``) on one event loop, in one process.

Under ``linerelay serve --workers N`` each of the N processes is a
:class:`Server` given its :class:`Seat`: the listeners and the pid file are
the supervisor's (appliance/workers.py).

Signals: SIGTERM/SIGINT shut down gracefully; SIGHUP reloads the certificate
chain and key into the live TLS context (new handshakes get the new chain,
open connections are kept) and re-reads the config file. The chain is judged
by the certificate rules before it serves, at start and on every reload
(appliance/certcheck.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from appliance import certcheck, error_reports, logs, protocol, systemd, tuning
from appliance import config as config_module
from appliance.app import create_admin_app
from appliance.bridges import BridgeEndpoint
from appliance.config import RESTART_KEYS, RelayConfig
from appliance.console.auth import listener_is_loopback
from appliance.console.board import BoardError, create_board
from appliance.console.overview import local_bridges
from appliance.errors import ConfigError, StoreError, TenantError
from appliance.hub import CLOSE_SHUTDOWN, CLOSE_TENANT_REMOVED, CLOSE_TOKEN_ROTATED, Hub
from appliance.ingress import Ingress, Relay
from appliance.listener import ListenerLimits, PublicListener
from appliance.metrics import Metrics
from appliance.proxies import TrustedProxies
from appliance.state import StateDir
from appliance.store import create_store, store_limits
from appliance.tenant_backend import open_directory
from appliance.tenants import TenantDirectory, hold_pid_file
from tls import policy
from tls.pki import EmbeddedPKI

log = logging.getLogger("appliance.server")


#: File descriptors kept back from max_connections (a quarter of the open-files
#: limit if that is less): the store, logs, the admin listener and its clients.
RESERVED_FDS = 256


@dataclass(frozen=True)
class Seat:
    """One of ``--workers``' processes: its number and the listeners the supervisor opened."""

    index: int
    public: socket.socket
    admin: socket.socket


class Server:
    """One relay process: builds the parts, serves, and tears down."""

    def __init__(
        self, config: RelayConfig, config_path: Path | None = None, seat: Seat | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.seat = seat
        self.state = StateDir(config.state_dir)
        self._shutdown = asyncio.Event()
        self._ready = False
        self._background: set[asyncio.Task[None]] = set()
        self._notifier = systemd.Notifier(os.environ)

    def _tls_files(self, config: RelayConfig) -> tuple[Path, Path]:
        if config.uses_dev_pki:
            pki = EmbeddedPKI(self.state.pki)
            if pki.ensure():
                log.info("dev PKI written", extra={"root": str(pki.root)})
            return pki.chain, pki.key
        return Path(config.tls_cert_file), Path(config.tls_key_file)

    def _checked_tls_files(self, config: RelayConfig) -> tuple[Path, Path, certcheck.Verdict]:
        """:meth:`_tls_files`, judged by the certificate rules (appliance/certcheck.py);
        raises :class:`policy.CertificateError` for a chain LINE would refuse."""
        cert, key = self._tls_files(config)
        dev_root = EmbeddedPKI(self.state.pki).root if config.uses_dev_pki else None
        verdict = certcheck.judge(cert, key, config.server_name, dev_root)
        certcheck.enforce(verdict, config.tls_allow_refused_chain)
        return cert, key, verdict

    def check_certificate(self) -> None:
        """Judge the certificate as a start does (writing the dev PKI if it is missing),
        without serving; raises :class:`policy.CertificateError` for one LINE would refuse."""
        if self.config.public_tls:
            self._checked_tls_files(self.config)

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        # Whatever the caller's umask: the state is private (appliance/state.py).
        os.umask(0o077)
        # First, so that what goes wrong from here on is reported (when configured).
        error_reports.start(self.config.sentry_dsn, self._secrets)
        config = self.config = _fit_connections(self.config, _raise_open_files_limit())
        # Before any TLS connection: asyncio sizes each one's buffer as it starts.
        tls_read_buffer = tuning.apply(config.tls_read_buffer)
        self.state.create()
        # First of all: one relay per state dir, and the tenant CLI can find it
        # (a worker's supervisor holds it for all its workers).
        pid_fd = hold_pid_file(self.state) if self.seat is None else None
        self.ssl_context: ssl.SSLContext | None = None
        served: certcheck.Verdict | None = None
        if config.public_tls:
            cert, key, served = self._checked_tls_files(config)
            self.ssl_context = policy.server_context(config.tls_policy, cert, key)
        inherited = systemd.listen_fds(os.environ) if self.seat is None else {}
        if self.seat is None:
            public_sock, admin_sock = open_listeners(config, inherited)
        else:
            public_sock, admin_sock = self.seat.public, self.seat.admin

        self.relay = relay = await self._open_relay(config)
        store, tenants = relay.store, relay.tenants
        if served is not None:
            relay.metrics.served_certificate(served.not_after)

        admin_loopback = listener_is_loopback(admin_sock)
        public_config, admin_config = _hypercorn_configs(config, admin_sock)
        await self._open_public(config, public_sock, public_config)
        loop = asyncio.get_running_loop()
        self._install_handlers(loop)

        housekeeping = loop.create_task(self._housekeeping())
        watchdog = loop.create_task(self._watchdog(systemd.watchdog_interval(os.environ)))
        self._ready = True
        log.info(
            "relay serving",
            extra={
                "listen": config.listen,
                "admin_listen": config.admin_listen,
                "tls_policy": config.tls_policy,
                "state_dir": str(self.state.path),
                "max_connections": config.max_connections,
                "tls_read_buffer": tls_read_buffer,
                "pid": os.getpid(),
                "socket_activated": sorted(inherited),
            },
        )
        self._notifier.ready("serving")
        # What start-up made lives as long as the process: keep it out of every
        # collection, so the periodic ones only walk what serving creates.
        gc.collect()
        gc.freeze()
        try:
            await asyncio.gather(
                self._serve_public(public_config.graceful_timeout),
                hypercorn_serve(
                    create_admin_app(relay, self._is_ready, admin_loopback),
                    admin_config,
                    shutdown_trigger=self._shutdown.wait,
                ),
            )
        finally:
            self._ready = False
            housekeeping.cancel()
            watchdog.cancel()
            relay.access_log.flush()
            if pid_fd is not None:
                os.close(pid_fd)
            try:
                await store.close()
            except (StoreError, OSError) as exc:
                log.error("store did not close cleanly", extra={"why": str(exc)})
            tenants.close()
            await relay.board.close()
            log.info("relay stopped")

    def _secrets(self) -> list[bytes]:
        """Every channel secret the relay holds (current and previous), for error reports
        to redact."""
        relay: Relay | None = getattr(self, "relay", None)
        if relay is None:
            return []  # an error before the relay was opened: no tenant is loaded yet
        tenants = list(relay.tenants.by_id.values())
        return [t.secret for t in tenants] + [
            t.previous_secret for t in tenants if t.previous_secret is not None
        ]

    def _is_ready(self) -> bool:
        """Serving, and the store usable (``/readyz``: a balancer sends nothing here otherwise)."""
        return self._ready and self.relay.store.health() is None

    async def _open_public(
        self, config: RelayConfig, sock: socket.socket, hypercorn: HypercornConfig
    ) -> None:
        """The bridge endpoint and the public listener, serving :class:`Ingress`."""
        relay = self.relay
        self.public_config = hypercorn
        self.bridges = BridgeEndpoint(
            config, relay.tenants, relay.hub, relay.metrics, relay.proxies
        )
        await self.bridges.start()
        self.listener = PublicListener(
            [sock],
            Ingress(relay, self.bridges),
            hypercorn,
            self.ssl_context,
            _listener_limits(config),
            relay.metrics,
            relay.proxies,
            self.bridges,
            _balancers(config),
        )

    def _install_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(logs.loop_exception_handler)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._shutdown.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        # `linerelay tenant ...` signals a change so it applies to the next request.
        loop.add_signal_handler(signal.SIGUSR1, self._on_tenants_changed)

    async def _open_relay(self, config: RelayConfig) -> Relay:
        """Metrics, the store (opened), tenants and the hub: what the hot paths share."""
        metrics = Metrics()
        store = create_store(config, self.state, on_batch=metrics.observe_batch)
        await store.open()
        tenants = _tenant_directory(config, self.state)
        hub = Hub(
            store,
            metrics,
            config.bridge_window,
            config.nack_backoff,
            config.bridge_window_bytes,
            window_v2=config.bridge_window_v2,
        )
        metrics.track_tenants(tenants, store, hub)
        metrics.track_store(store)
        board = create_board(config, None if self.seat is None else self.seat.index)
        return Relay(config, tenants, store, hub, metrics, board)

    async def _serve_public(self, grace: float) -> None:
        """The public listener until shutdown, then the bridges' goodbyes."""
        await self.listener.serve(self._until_shutdown)
        await self.bridges.stop(grace)

    async def _until_shutdown(self) -> None:
        await self._shutdown.wait()
        self._ready = False
        self._notifier.stopping("stopping")
        for connection in list(self.relay.hub.connections):
            connection.terminate(CLOSE_SHUTDOWN)

    # -- SIGHUP --------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config and the certificate chain; on any error keep what serves."""
        self._notifier.reloading("reloading")
        config = reloaded(self.config, self.config_path)
        if self.ssl_context is not None:
            config = self._reload_chain(self.ssl_context, config)
        self._apply(config)
        self._notifier.ready("serving")

    def _reload_chain(self, context: ssl.SSLContext, config: RelayConfig) -> RelayConfig:
        """Load ``config``'s chain into the live context; on failure keep the old one."""
        try:
            cert, key, served = self._checked_tls_files(config)
            policy.load_chain(context, cert, key)
        except (policy.CertificateError, OSError, ValueError) as exc:
            self.relay.metrics.tls_reload["failed"].inc()
            log.error("reload: certificate kept", extra={"why": str(exc)})
            config = config.replace(
                tls_cert_file=self.config.tls_cert_file, tls_key_file=self.config.tls_key_file
            )
        else:
            self.relay.metrics.tls_reload["ok"].inc()
            self.relay.metrics.served_certificate(served.not_after)
            log.info("reload: certificate loaded", extra={"chain": str(cert)})
        return config

    def _apply(self, config: RelayConfig) -> None:
        config = _fit_connections(config, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.config = config
        relay = self.relay
        relay.configure(config)
        self.bridges.configure(config, relay.proxies)
        relay.store.configure(store_limits(config))
        self.listener.configure(_listener_limits(config), relay.proxies, _balancers(config))
        _apply_hypercorn_limits(self.public_config, config)
        logging.getLogger().setLevel(config.log_level.upper())
        relay.access_log.enabled = config.log_level in ("debug", "info")

    # -- housekeeping --------------------------------------------------------

    async def _watchdog(self, interval: float | None) -> None:
        """Tell systemd the event loop turns, at half its watchdog interval.

        Sent from the loop itself, so a loop that hangs stops the pings and
        systemd restarts the relay.
        """
        if interval is None:
            return
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval / 2)

    async def _housekeeping(self) -> None:
        """Notice tenant changes; expire and prune old rows."""
        relay = self.relay
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.config.tenant_poll_interval)
            try:
                relay.tenants.refresh()
                if relay.metrics.shared:
                    connected = {(c.tenant, c.protocol) for c in relay.hub.connections}
                    relay.metrics.publish_bridges(relay.tenants.by_id.keys(), connected)
                await self._post_bridges()
                await self._tenant_changes()
                now = time.monotonic()
                if now - last_sweep >= min(30.0, self.config.max_unacked_age / 4):
                    last_sweep = now
                    await self._sweep()

            except Exception:
                # Housekeeping must outlive a bad moment (disk full, locked file).
                log.exception("housekeeping failed")

    async def _post_bridges(self) -> None:
        """Post this process's bridges to the board while a console watches it, so that
        any process of the relay draws them (appliance/console/board.py)."""
        board = self.relay.board
        try:
            if await board.watched():
                await board.post(local_bridges(self.relay, board.name, time.time()))
        except BoardError as exc:
            # A Redis outage is the store's to report (once); a console says what it missed.
            log.debug("bridges not posted", extra={"why": str(exc)})

    def _on_tenants_changed(self) -> None:
        self.relay.tenants.refresh()
        task = asyncio.get_running_loop().create_task(self._tenant_changes())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _tenant_changes(self) -> None:
        """Close the bridges of removed tenants, and those on a token no longer
        valid (rotated, or its grace ended); purge removed tenants' rows.

        The caller has refreshed the tenant directory.
        """
        relay = self.relay
        removed, rotated = relay.tenants.take_changes()
        for tenant, recreated_at in removed.items():
            for connection in relay.hub.close_tenant(tenant, "removed"):
                connection.terminate(CLOSE_TENANT_REMOVED)
            # `tenant remove --force` purged the store; this catches webhooks
            # accepted in between, and never touches a new tenant's under the same id.
            discarded = await relay.store.purge(tenant, recreated_at)
            log.warning("tenant removed", extra={"tenant": tenant, "discarded": discarded})
        for tenant in rotated:
            closed = 0
            for connection in relay.hub.of_tenant(tenant):
                if not relay.tenants.accepts(tenant, connection.token_hash):
                    connection.terminate(CLOSE_TOKEN_ROTATED)
                    closed += 1
            log.info(
                "tenant tokens changed",
                extra={
                    "tenant": tenant,
                    "bridges_closed": closed,
                    # When bridges still on the old token will be closed; 0: no grace runs.
                    "grace_until_ms": relay.tenants.token_grace_until(tenant),
                },
            )

    async def _sweep(self) -> None:
        relay, config = self.relay, self.config
        now_ms = int(time.time() * 1000)
        expired = await relay.store.expire(now_ms - int(config.max_unacked_age * 1000))
        by_tenant: dict[str, list[int]] = {}
        for row in expired:
            relay.metrics.expired.inc()
            by_tenant.setdefault(row.tenant, []).append(row.seq)
            log.warning(
                "webhook expired unacked",
                extra={
                    "tenant": row.tenant,
                    "delivery": row.id,
                    "age_s": round((now_ms - row.received_at) / 1000),
                },
            )
        for tenant, seqs in by_tenant.items():
            relay.hub.expired(tenant, seqs)
        # Delivered ones are kept retain_delivered after their ack, expired ones
        # retain_expired after they expired, for an operator to find and replay:
        # one acked late, or expired only at a start after a long stop, is kept as
        # long as any other. Both are at least dedupe_window (config) and start
        # after receipt, so a row is never pruned while it still recognises LINE's
        # retries after a restart. Expired rows from before expiry times were
        # recorded count from receipt plus max_unacked_age, as they always did.
        expired_before = now_ms - int(config.retain_expired * 1000)
        await relay.store.prune(
            delivered_before=now_ms - int(config.retain_delivered * 1000),
            expired_before=expired_before,
            expired_received_before=expired_before - int(config.max_unacked_age * 1000),
        )


def reloaded(config: RelayConfig, path: Path | None) -> RelayConfig:
    """``config`` with the file at ``path`` read again (SIGHUP), keeping the keys only a
    restart changes; on a broken file, ``config`` itself. Logs what it kept and why."""
    if path is None:
        return config
    try:
        fresh = config_module.load(
            path,
            os.environ,
            {
                "state_dir": config.state_dir,
                "listen": config.listen,
                "admin_listen": config.admin_listen,
                "workers": config.workers,
            },
        )
    except ConfigError as exc:
        log.error("reload: config kept", extra={"why": str(exc)})
        return config
    changed = [k for k in RESTART_KEYS if getattr(fresh, k) != getattr(config, k)]
    if changed:
        log.warning("reload: these keys need a restart", extra={"keys": changed})
        fresh = fresh.replace(**{k: getattr(config, k) for k in changed})
    return fresh


def _tenant_directory(config: RelayConfig, state: StateDir) -> TenantDirectory:
    """The tenants where the configured store keeps them: STATE/tenants.db, or Redis."""
    try:
        return open_directory(config, state)
    except TenantError as exc:
        raise StoreError(str(exc)) from exc


def _hypercorn_configs(
    config: RelayConfig, admin_sock: socket.socket
) -> tuple[HypercornConfig, HypercornConfig]:
    """Hypercorn's configs for the public listener's connections and the admin listener.

    The public listener's sockets and TLS are the relay's own (appliance/listener.py).
    """
    public = HypercornConfig()
    public.websocket_max_message_size = protocol.MAX_BRIDGE_FRAME_BYTES
    public.keep_alive_timeout = 30
    _apply_hypercorn_limits(public, config)
    admin = HypercornConfig()
    # Hypercorn takes the bound socket over (and closes it at the end).
    admin.bind = [f"fd://{admin_sock.detach()}"]
    for hconfig in (public, admin):
        hconfig.include_server_header = False
        hconfig.graceful_timeout = 5
        hconfig.errorlog = logging.getLogger("hypercorn.error")
        hconfig.accesslog = None
    if config.hypercorn_access_log:
        # Through the JSON formatter, which redacts /bridge/{token} paths.
        public.accesslog = logging.getLogger("hypercorn.access")
    return public, admin


def _apply_hypercorn_limits(public: HypercornConfig, config: RelayConfig) -> None:
    """The public Hypercorn settings a reload may change (read per connection or request)."""
    # Bridges over HTTP/2 (the rare ones Hypercorn serves, appliance/bridges.py) are
    # kept alive and found dead with these two settings and nothing else.
    public.websocket_ping_interval = config.ping_interval
    # A connection that sends nothing, not even a pong, for this long is dead.
    public.read_timeout = int(config.bridge_idle_timeout)
    # GOAWAY after this many HTTP/2 streams; the listener's guard cuts clients that go on.
    public.keep_alive_max_requests = config.h2_max_streams


def _listener_limits(config: RelayConfig) -> ListenerLimits:
    return ListenerLimits(
        max_connections=config.max_connections,
        max_connections_per_address=config.max_connections_per_address,
        connection_rate_per_address=config.connection_rate_per_address,
        tls_handshake_timeout=config.tls_handshake_timeout,
        h2_max_streams=config.h2_max_streams,
        h2_reset_burst=config.h2_reset_burst,
        h2_reset_rate=config.h2_reset_rate,
    )


def _balancers(config: RelayConfig) -> TrustedProxies:
    """The load balancers whose PROXY protocol headers are believed."""
    return TrustedProxies(config.proxy_protocol_from, "proxy_protocol_from")


def _raise_open_files_limit() -> int:
    """Each bridge holds a socket: lift the soft limit to the hard one (often 1024 → 1M).

    Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open files limit raised", extra={"from": soft, "to": hard})
    return max(soft, hard) if hard != resource.RLIM_INFINITY else soft


def _fit_connections(config: RelayConfig, open_files: int) -> RelayConfig:
    """``config`` with ``max_connections`` lowered to what ``open_files`` leaves room for.

    Connections past the open-files limit would fail in ``accept()`` instead
    of being refused by the listener's cap.
    """
    room = max(1, open_files - min(RESERVED_FDS, open_files // 4))
    if config.max_connections <= room:
        return config
    log.info(
        "max_connections lowered to fit the open-files limit",
        extra={"configured": config.max_connections, "used": room, "open_files": open_files},
    )
    return config.replace(max_connections=room)


def open_listeners(
    config: RelayConfig, inherited: dict[str, int]
) -> tuple[socket.socket, socket.socket]:
    """The public and admin listening sockets: systemd's (``inherited``, by name) or bound
    here; raises :class:`ConfigError` if one cannot be bound."""
    public = _listen(config.listen, inherited.get("public"))
    try:
        admin = _listen(config.admin_listen, inherited.get("admin"))
    except ConfigError:
        public.close()
        raise
    return public, admin


def _listen(address: str, inherited: int | None = None) -> socket.socket:
    """A listening socket on ``HOST:PORT``; raises :class:`ConfigError` if it cannot bind.

    With ``inherited`` (a descriptor systemd passed, already bound and
    listening by its socket unit), that socket instead: ``address`` is then
    the socket unit's business.
    """
    if inherited is not None:
        return socket.socket(fileno=inherited)
    if address.startswith(config_module.UNIX_PREFIX):
        return _listen_unix(Path(address[len(config_module.UNIX_PREFIX) :]))
    host, port = config_module.parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {address}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _listen_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, for a reverse proxy on this machine.

    Mode 0660: the proxy's user must be in the relay's group (or systemd's
    socket unit sets the owner), since whoever connects here is believed about
    the client's address.
    """
    if path.is_socket():
        path.unlink()  # left by a relay that did not stop cleanly
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o660)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on unix:{path}: {exc.strerror}") from exc
    sock.listen(2048)
    return sock


def run(config: RelayConfig, config_path: Path | None = None) -> None:
    """Serve ``config`` until told to stop."""
    asyncio.run(Server(config, config_path).run())
