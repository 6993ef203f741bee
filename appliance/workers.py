"""``linerelay serve --workers N``: N relay processes on one machine, and their supervisor.

One relay process serves on one core. With ``workers`` above 1 the command's
process becomes a supervisor that serves nothing itself:

- **Once, for all**: the state dir, the pid file (so ``linerelay tenant``
  signals the supervisor), the certificate check (exit status 2 for a chain
  LINE would refuse; the dev PKI is written here, not raced by N processes)
  and the two listening sockets, bound here or taken from systemd.
- **N workers**, forked: each a whole relay (:class:`appliance.server.Server`)
  with its own event loop, serving the same two sockets. One accept queue
  per port, taken from by whichever worker is free: a worker that dies
  leaves the connections waiting in it to the others. (``SO_REUSEPORT``
  gives each process a queue of its own, lost with the process, and cannot
  share a Unix socket or the one systemd passed.)
- **Signals**: SIGTERM or SIGINT stops every worker gracefully (SIGKILL
  after ``STOP_TIMEOUT``), then the supervisor; SIGHUP re-reads the config
  (for workers started later) and is passed on, each worker reloading its
  config and certificate (one still starting, once it is ready); SIGUSR1
  (tenants changed) is passed on.
- **Restarts**: a worker that exits unasked is started again at once; one
  that keeps failing within ``STABLE_SECONDS`` of its start waits 1, 2, 4 ...
  30 seconds between starts. One
  that fails before every worker was first ready fails the start: the
  others are stopped and the supervisor exits 1 (2 if the worker said 2).
- **Health**: workers report to the supervisor as a service reports to
  systemd (sd_notify datagrams, here to a socket of the supervisor's, the
  sender known by its credentials): ``READY=1``, ``WATCHDOG=1``. One not
  ready within ``START_TIMEOUT``, or silent past its watchdog (a hung event
  loop), is killed and restarted. The supervisor tells systemd ``READY=1``
  once every worker is ready and pings systemd's watchdog itself.
- **Metrics**: ``PROMETHEUS_MULTIPROC_DIR`` is ``STATE/metrics``, emptied at
  start (appliance/metrics.py); a dead worker's gauges are dropped.

The policy is :class:`Supervisor`, pure logic fed events and the time;
:func:`run` is its I/O: fork, signals, the notify socket.

More than one worker needs the shared store (``store = "redis"``), which the
config checks: the SQLite store's group commit and the hub's per-tenant
order live in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import secrets
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import logs, systemd
from appliance.config import RelayConfig
from appliance.console.sessions import ConsoleDB
from appliance.errors import ConfigError, TenantError
from appliance.state import StateDir
from appliance.tenants import hold_pid_file
from tls import policy

if TYPE_CHECKING:
    from appliance import server

log = logging.getLogger(__name__)

#: Seconds a worker has from its start to ``READY=1``.
START_TIMEOUT = 60.0
#: Seconds the workers have to stop after SIGTERM before SIGKILL (systemd's
#: TimeoutStopSec for the relay is 20).
STOP_TIMEOUT = 15.0
#: A worker that exits within this long of its start counts as failing again.
STABLE_SECONDS = 30.0
#: The longest wait before restarting a worker that keeps failing.
MAX_BACKOFF = 30.0
#: The workers' watchdog when systemd set none for the supervisor.
WATCHDOG_SECONDS = 20.0
#: The folder of the state dir the workers' metrics files live in.
METRICS_DIR = "metrics"
#: prometheus-client's variable naming it (appliance/metrics.py reads it too; that
#: module cannot be imported here before the variable is set).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: What the supervisor handles; the rest keep their default actions.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
#: Variables the supervisor's own service manager set, not meant for the workers.
_MANAGER_VARIABLES = ("WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_PR_SET_PDEATHSIG = 1


# -- the policy ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Start worker ``index`` (1-based)."""

    index: int


@dataclass(frozen=True, slots=True)
class Kill:
    """Send ``signum`` to the worker ``pid``."""

    pid: int
    signum: int


@dataclass(frozen=True, slots=True)
class Announce:
    """Tell the service manager the relay's state: ``ready``, ``reloading``, ``stopping``."""

    state: str


@dataclass(frozen=True, slots=True)
class Exit:
    """Every worker has ended: the supervisor exits with ``status``."""

    status: int


Action = Start | Kill | Announce | Exit


@dataclass(slots=True)
class _Worker:
    index: int
    pid: int | None = None
    started_at: float = 0.0
    #: Said READY=1 since it started.
    ready: bool = False
    #: A reload was passed on to it and it has not said READY=1 since.
    reloading: bool = False
    #: A reload came while it was starting (ignoring SIGHUP): pass it on once ready.
    reload_when_ready: bool = False
    pinged_at: float = 0.0
    #: SIGKILLed for hanging: its exit is on its way.
    killed: bool = False
    #: Exits in a row, each within STABLE_SECONDS of its start.
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """What to do about ``count`` workers, given what happened and when.

    Each method takes an event and the monotonic time and returns the
    actions it calls for; :meth:`deadline` says when :meth:`tick` next has
    something to do.
    """

    def __init__(
        self,
        count: int,
        watchdog: float = WATCHDOG_SECONDS,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.workers = [_Worker(index) for index in range(1, count + 1)]
        self.watchdog = watchdog
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        #: Every worker has been ready at once: the relay serves.
        self.serving = False
        #: When the stop began (None: not stopping).
        self.stopping_since: float | None = None
        #: What the supervisor exits with once the workers are gone.
        self.status = 0
        self._reloading = False
        self._forced = False

    def start(self) -> list[Action]:
        """Start every worker."""
        return [Start(worker.index) for worker in self.workers]

    def started(self, index: int, pid: int, now: float) -> None:
        """Worker ``index`` runs as ``pid``."""
        worker = self.workers[index - 1]
        worker.pid, worker.started_at, worker.pinged_at = pid, now, now
        worker.ready = worker.reloading = worker.reload_when_ready = worker.killed = False
        worker.restart_at = None

    def notified(self, pid: int, fields: Mapping[str, str], now: float) -> list[Action]:
        """Worker ``pid`` sent an sd_notify message (``fields``: ``READY`` -> ``1``, ...)."""
        worker = self._of(pid)
        if worker is None:
            return []
        if fields.get("WATCHDOG") == "1" or fields.get("READY") == "1":
            worker.pinged_at = now
        if fields.get("READY") != "1":
            return []
        if worker.reload_when_ready:
            # Started before the reload, from the config and files of then.
            worker.ready, worker.reload_when_ready = True, False
            return [Kill(pid, signal.SIGHUP)]
        worker.ready, worker.reloading = True, False
        if self.stopping_since is not None or not all(
            w.ready and not w.reloading for w in self.workers
        ):
            return []
        if not self.serving:
            self.serving = True
            log.info("workers serving", extra={"workers": len(self.workers)})
            return [Announce("ready")]
        if self._reloading:
            self._reloading = False
            return [Announce("ready")]
        return []

    def exited(self, pid: int, status: int, now: float) -> list[Action]:
        """Worker ``pid`` ended with ``status`` (an exit code, or minus the signal's number)."""
        worker = self._of(pid)
        if worker is None:
            return []
        worker.pid, worker.ready, worker.reloading = None, False, False
        worker.reload_when_ready = False
        fields = {"worker": worker.index, "pid": pid, "status": status}
        if self.stopping_since is not None:
            log.info("worker stopped", extra=fields)
            return self._done()
        if not self.serving:
            log.error("worker failed to start", extra=fields)
            self.status = 2 if status == 2 else 1
            return self._stop(now)
        ran = now - worker.started_at
        worker.failures = 0 if ran >= STABLE_SECONDS else worker.failures + 1
        # Once at once, whenever it happens; only a worker failing again soon waits.
        delay = 0.0 if worker.failures <= 1 else min(MAX_BACKOFF, 2.0 ** (worker.failures - 2))
        log.error("worker exited", extra={**fields, "ran_s": round(ran, 1), "restart_in_s": delay})
        worker.restart_at = now + delay
        return self.tick(now)

    def signalled(self, signum: int, now: float) -> list[Action]:
        """The supervisor got ``signum``."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.stopping_since is not None:
                return []
            log.info("workers stopping", extra={"signal": signal.Signals(signum).name})
            return self._stop(now)
        if self.stopping_since is not None:
            return []
        live = [w for w in self.workers if w.pid is not None]
        if signum == signal.SIGHUP:
            self._reloading = True
            for worker in live:
                worker.reloading = True
                worker.reload_when_ready = not worker.ready
            now_ready = [w.pid for w in live if w.ready and w.pid]
            return [Announce("reloading"), *(Kill(pid, signum) for pid in now_ready)]
        if signum == signal.SIGUSR1:
            return [Kill(w.pid, signum) for w in live if w.pid]
        return []

    def tick(self, now: float) -> list[Action]:
        """What is due at ``now``: restarts, and kills of hung or lingering workers."""
        actions: list[Action] = []
        if self.stopping_since is not None:
            if not self._forced and now - self.stopping_since >= self.stop_timeout:
                self._forced = True
                for worker in self.workers:
                    if worker.pid is not None:
                        log.error(
                            "worker did not stop in time: killed",
                            extra={"worker": worker.index, "pid": worker.pid},
                        )
                        actions.append(Kill(worker.pid, signal.SIGKILL))
            return actions
        for worker in self.workers:
            if worker.pid is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    worker.restart_at = None
                    actions.append(Start(worker.index))
                continue
            if worker.killed:
                continue
            if not worker.ready and now - worker.started_at >= self.start_timeout:
                why = f"not ready within {self.start_timeout:g} s"
            elif worker.ready and now - worker.pinged_at >= self.watchdog:
                why = f"silent for {self.watchdog:g} s (watchdog)"
            else:
                continue
            worker.killed = True
            log.error(
                "worker hung: killed", extra={"worker": worker.index, "pid": worker.pid, "why": why}
            )
            actions.append(Kill(worker.pid, signal.SIGKILL))
        return actions

    def deadline(self) -> float | None:
        """The monotonic time :meth:`tick` next has something to do (None: nothing pending)."""
        if self.stopping_since is not None:
            return None if self._forced else self.stopping_since + self.stop_timeout
        times = []
        for worker in self.workers:
            if worker.pid is None:
                if worker.restart_at is not None:
                    times.append(worker.restart_at)
            elif not worker.killed:
                times.append(
                    worker.pinged_at + self.watchdog
                    if worker.ready
                    else worker.started_at + self.start_timeout
                )
        return min(times, default=None)

    def _stop(self, now: float) -> list[Action]:
        self.stopping_since = now
        actions: list[Action] = [Announce("stopping")]
        for worker in self.workers:
            worker.restart_at = None
            if worker.pid is not None:
                actions.append(Kill(worker.pid, signal.SIGTERM))
        return actions + self._done()

    def _done(self) -> list[Action]:
        if any(worker.pid is not None for worker in self.workers):
            return []
        return [Exit(self.status)]

    def _of(self, pid: int) -> _Worker | None:
        return next((w for w in self.workers if w.pid == pid), None)


def parse_notification(data: bytes) -> dict[str, str]:
    """An sd_notify datagram's ``KEY=VALUE`` lines as a dict (lines without ``=`` skipped)."""
    fields = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


# -- its I/O -------------------------------------------------------------------------


def run(config: RelayConfig, config_path: Path | None) -> int:
    """Supervise ``config.workers`` relay processes until told to stop; the exit status.

    Raises :class:`ConfigError`, :class:`TenantError` (another relay holds the
    state dir) or :class:`policy.CertificateError` before any worker starts.
    """
    os.umask(0o077)
    state = StateDir(config.state_dir).create()
    pid_fd = hold_pid_file(state)
    try:
        shared = state.path / METRICS_DIR
        _empty_metrics_dir(shared)
        # prometheus-client picks its multiprocess mode when it is imported.
        os.environ[MULTIPROC_DIR_ENV] = str(shared)
        from appliance import server  # noqa: PLC0415

        server.Server(config, config_path).check_certificate()
        # Created here, once: the workers share this file, and the switch to
        # WAL (a property of the file) takes a lock that SQLite does not wait
        # for, so workers switching it at the same moment could fail.
        ConsoleDB(state.console).close()
        inherited = systemd.listen_fds(os.environ)
        public, admin = server.open_listeners(config, inherited)
        try:
            return _supervise(config, config_path, (public, admin), shared, sorted(inherited))
        finally:
            public.close()
            admin.close()
    finally:
        os.close(pid_fd)


def _supervise(
    config: RelayConfig,
    config_path: Path | None,
    sockets: tuple[socket.socket, socket.socket],
    shared: Path,
    socket_activated: list[str],
) -> int:
    from prometheus_client.multiprocess import mark_process_dead  # noqa: PLC0415

    from appliance import server  # noqa: PLC0415 (imported by run, after the metrics dir)

    notifier = systemd.Notifier(os.environ)
    own_watchdog = systemd.watchdog_interval(os.environ)
    supervisor = Supervisor(config.workers, own_watchdog or WATCHDOG_SECONDS)
    with _Inbox() as inbox, _Signals() as signals:
        log.info(
            "workers starting",
            extra={
                "workers": config.workers,
                "pid": os.getpid(),
                "listen": config.listen,
                "admin_listen": config.admin_listen,
                "socket_activated": socket_activated,
            },
        )
        # What the supervisor holds now, the workers share unchanged (fork's copy on write).
        gc.collect()
        gc.freeze()
        selector = selectors.DefaultSelector()
        selector.register(inbox.sock, selectors.EVENT_READ)
        selector.register(signals.read_fd, selectors.EVENT_READ)
        pinged = time.monotonic()
        actions = supervisor.start()
        while True:
            for action in actions:
                if isinstance(action, Start):
                    seat = server.Seat(action.index, *sockets)
                    pid = _fork(
                        seat, config, config_path, supervisor.watchdog, inbox, signals, selector
                    )
                    supervisor.started(action.index, pid, time.monotonic())
                    log.info("worker started", extra={"worker": action.index, "pid": pid})
                elif isinstance(action, Kill):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(action.pid, action.signum)
                elif isinstance(action, Announce):
                    _announce(notifier, action.state, config.workers)
                else:
                    log.info("workers stopped", extra={"status": action.status})
                    return action.status
            now = time.monotonic()
            deadline = supervisor.deadline()
            timeouts = [deadline - now] if deadline is not None else []
            if own_watchdog is not None:
                timeouts.append(pinged + own_watchdog / 2 - now)
            selector.select(max(0.0, min(timeouts)) if timeouts else None)
            now = time.monotonic()
            actions = []
            for signum in signals.read():
                if signum == signal.SIGHUP:
                    config = server.reloaded(config, config_path)
                actions += supervisor.signalled(signum, now)
            for pid, fields in inbox.read():
                actions += supervisor.notified(pid, fields, now)
            for pid, status in _reap():
                mark_process_dead(pid, str(shared))  # type: ignore[no-untyped-call]
                actions += supervisor.exited(pid, status, now)
            actions += supervisor.tick(now)
            if own_watchdog is not None and now - pinged >= own_watchdog / 2:
                notifier.watchdog()
                pinged = now


def _announce(notifier: systemd.Notifier, state: str, count: int) -> None:
    if state == "ready":
        notifier.ready(f"{count} workers serving")
    elif state == "reloading":
        notifier.reloading("reloading")
    else:
        notifier.stopping("stopping")


def _fork(
    seat: server.Seat,
    config: RelayConfig,
    config_path: Path | None,
    watchdog: float,
    inbox: _Inbox,
    signals: _Signals,
    selector: selectors.BaseSelector,
) -> int:
    """Start a worker; returns its pid (in the worker, never returns)."""
    supervisor = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        _die_with(supervisor)
        selector.close()
        inbox.sock.close()
        signals.close()
        status = _work(seat, config, config_path, watchdog, inbox.name)
    finally:
        logging.shutdown()
        sys.stderr.flush()
        os._exit(status)


def _work(
    seat: server.Seat,
    config: RelayConfig,
    config_path: Path | None,
    watchdog: float,
    inbox: str,
) -> int:
    """A worker's life: one relay on the supervisor's sockets; its exit status."""
    from appliance import server  # noqa: PLC0415 (already imported by the supervisor)

    # Its own process group: a terminal's Ctrl-C reaches the supervisor alone,
    # which stops the workers in order.
    os.setpgid(0, 0)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    # Until the relay handles them (a reload or a tenant change during the start
    # must not kill it; it reads both as it starts anyway).
    for signum in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    for name in _MANAGER_VARIABLES:
        os.environ.pop(name, None)
    os.environ["NOTIFY_SOCKET"] = "@" + inbox
    os.environ["WATCHDOG_USEC"] = str(int(watchdog * 1_000_000))
    logs.tag(worker=seat.index)
    try:
        asyncio.run(server.Server(config, config_path, seat).run())
    except (ConfigError, policy.CertificateError, TenantError) as exc:
        log.error("worker could not start", extra={"why": str(exc)})
        return 2
    except Exception:
        log.exception("worker failed")
        return 1
    return 0


def _die_with(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when its ``supervisor`` dies (even by
    SIGKILL): an orphan would hold the ports a restarted relay needs."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _reap() -> Iterator[tuple[int, int]]:
    """Every ended child: its pid and status (an exit code, or minus its signal)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)


def _empty_metrics_dir(path: Path) -> None:
    """``path``, made if need be, without the files of an earlier run's workers."""
    path.mkdir(mode=0o700, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()


class _Inbox:
    """The socket workers send their sd_notify messages to, with the sender's pid."""

    def __init__(self) -> None:
        # Abstract (no file to clean up), and unguessable: anyone may send to an
        # abstract name, so the sender's pid, from the kernel, decides who it is.
        self.name = f"linerelay-workers-{os.getpid()}-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.sock.bind("\0" + self.name)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def __enter__(self) -> _Inbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def read(self) -> list[tuple[int, dict[str, str]]]:
        """The messages waiting: sender pid and fields."""
        messages: list[tuple[int, dict[str, str]]] = []
        credentials = struct.calcsize("3i")
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(credentials))
            except BlockingIOError:
                return messages
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, _ = struct.unpack("3i", payload[:credentials])
                    if uid == os.getuid():
                        messages.append((pid, parse_notification(data)))


class _Signals:
    """The supervisor's signals, as numbers read from a pipe (``signal.set_wakeup_fd``)."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in SIGNALS:
            # A Python handler, so the signal is written to the pipe; the loop acts on it.
            signal.signal(signum, _noted)

    def __enter__(self) -> _Signals:
        return self

    def __exit__(self, *_: object) -> None:
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        self.close()

    def close(self) -> None:
        """Stop writing signals to the pipe, and close it."""
        signal.set_wakeup_fd(-1)
        for fd in (self.read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def read(self) -> list[int]:
        """The signals received since the last read, in order."""
        try:
            return list(os.read(self.read_fd, 512))
        except BlockingIOError:
            return []


def _noted(signum: int, frame: object) -> None:
    """The handler of the supervisor's signals: the wakeup pipe has already noted it."""
