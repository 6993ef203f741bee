"""The running bridge: wires the link, the inbox, the worker, config reload and status.

One asyncio loop; the SQLite inbox runs on one dedicated thread so commits
never block the loop. SIGTERM (or SIGINT) stops the link at once (anything
not yet acknowledged is redelivered by the relay), lets answers in flight
finish for ``shutdown_grace`` seconds, then exits; cut answers resume at the
next start.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from appliance.protocol import Webhook
from bridge.backoff import Backoff
from bridge.chat import ChatClient, ChatSettings
from bridge.config import CONNECTION_KEYS, BridgeConfig, BridgeConfigError, ConfigFile
from bridge.inbox import Body, Inbox, InboxError
from bridge.intake import Prepared, Refused, prepare
from bridge.line_api import LineApi, LineSettings
from bridge.link import Link
from bridge.status import BridgeStatus, write_status
from bridge.wire import IntakeResult
from bridge.worker import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between looks at the config file.
POLL_INTERVAL = 1.0
#: Seconds between looks at the status; a change is written at the next tick.
STATUS_TICK = 0.2
#: Seconds after which the status file is rewritten even when nothing changed.
STATUS_HEARTBEAT = 2.0
#: Seconds between sweeps of expired dedupe entries.
PRUNE_INTERVAL = 600.0
INBOX_FILE = "inbox.sqlite3"
LOCK_FILE = "bridge.lock"


class StateDirBusy(Exception):
    """Another bridge process holds this state dir."""


def lock_state_dir(state_dir: Path) -> IO[bytes]:
    """Create ``state_dir`` (owner-only) and hold its lock for the life of the process."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle = (state_dir / LOCK_FILE).open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise StateDirBusy(f"another bridge is running with state dir {state_dir}") from exc
    return handle


class Bridge:
    """One bridge process's work."""

    def __init__(self, config_file: ConfigFile, state_dir: Path) -> None:
        """``state_dir`` must already be locked with :func:`lock_state_dir`."""
        self._file = config_file
        self._state_dir = state_dir
        self.status = BridgeStatus()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbox")
        self._inbox = Inbox(state_dir / INBOX_FILE)
        self._stopping = asyncio.Event()
        self._link: Link | None = None
        self._worker: Worker | None = None

    @property
    def config(self) -> BridgeConfig:
        """The last good config."""
        return self._file.current

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stopping.set()

    async def run(self) -> int:
        """Serve until stopped; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        recovered = await self._db(self._inbox.recover)
        log.info(
            "bridge starting",
            extra={
                "pid": os.getpid(),
                "state_dir": str(self._state_dir),
                "url": self.config.relay_url,
                "resumed_jobs": recovered,
            },
        )
        async with (
            httpx.AsyncClient() as line_http,
            httpx.AsyncClient() as chat_http,
        ):
            line = LineApi(line_http, self._line_settings)
            chat = ChatClient(chat_http, self._chat_settings)
            self._worker = Worker(
                self._inbox, self._db, line, chat, lambda: self.config, self.status
            )
            backoff = Backoff(self.config.backoff_min, self.config.backoff_max)
            self._link = Link(lambda: self.config, self._intake, self.status, backoff)
            tasks = [
                asyncio.create_task(self._link.run(self._stopping), name="link"),
                asyncio.create_task(self._worker.run(self._stopping), name="worker"),
                asyncio.create_task(self._watch_config(), name="config"),
                asyncio.create_task(self._write_status_loop(), name="status"),
            ]
            stop_wait = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait({stop_wait, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            broken = [task.get_name() for task in done if task is not stop_wait]
            if broken:
                # Every task runs until stopped; one that ended is a bug. Exit non-zero so the
                # service manager restarts the bridge, which resumes from the inbox.
                log.error("a bridge task ended unexpectedly; stopping", extra={"tasks": broken})
                self.status.error(f"internal failure in {', '.join(broken)}")
                self._stopping.set()
            await stop_wait
            self.status.connection = "stopping"
            log.info("bridge stopping", extra={"grace_seconds": self.config.shutdown_grace})
            await asyncio.wait(tasks[:2])
            cut = await self._worker.drain(self.config.shutdown_grace)
            for task in tasks[2:]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.status.connection = "stopped"
        await self._publish_status()
        await self._db(self._inbox.close)
        self._executor.shutdown()
        log.info("bridge stopped", extra={"cut_short": cut})
        return 1 if broken else 0

    def _line_settings(self) -> LineSettings:
        config = self.config
        return LineSettings(
            config.line_api_base,
            config.channel_access_token,
            config.line_timeout,
            config.line_max_attempts,
        )

    def _chat_settings(self) -> ChatSettings:
        config = self.config
        return ChatSettings(
            config.openclaw_url,
            config.gateway_token,
            config.model,
            config.system_prompt,
            config.chat_timeout,
        )

    async def _intake(self, frames: Sequence[Webhook]) -> list[IntakeResult]:
        """Verify ``frames`` and queue them in one commit; one result per frame, in order.

        Frames refused by :func:`prepare` are acked (redelivery could never make them
        pass) but not queued; the rest stand or fall together with their commit.
        """
        config = self.config
        results = [IntakeResult(True)] * len(frames)
        ready: list[tuple[int, Prepared]] = []
        for position, frame in enumerate(frames):
            prepared = prepare(frame, config.channel_secret, config.previous_channel_secret)
            if isinstance(prepared, Refused):
                self._refused(frame, prepared)
            else:
                ready.append((position, prepared))
        if not ready:
            return results
        bodies = [Body(prepared.digest, prepared.events, prepared.replay) for _, prepared in ready]
        try:
            taken = await self._db(self._inbox.take, bodies, config.dedupe_ttl)
        except InboxError as exc:
            self.status.error(f"queue: {exc}")
            log.error(
                "cannot queue webhooks; asking the relay to redeliver them",
                extra={"deliveries": [frames[i].id for i, _ in ready], "why": str(exc)},
            )
            for position, _ in ready:
                results[position] = IntakeResult(False, "bridge queue unavailable")
            return results
        for (position, prepared), took in zip(ready, taken, strict=True):
            frame = frames[position]
            self.status.count("webhooks")
            self.status.count("events_queued", took.queued)
            self.status.count("duplicate_events", took.duplicates)
            if took.known_body:
                self.status.count("known_bodies")
            if prepared.replay and not took.known_body:
                self.status.count("replays")
            if took.seen:
                log.info(
                    "replay of an already seen event: processing it again",
                    extra={**_fields(frame), "replay": True, "seen_events": took.seen},
                )
            log.info(
                "webhook queued",
                extra={
                    **_fields(frame),
                    "events": len(prepared.events),
                    "queued": took.queued,
                    "duplicates": took.duplicates,
                    "known_body": took.known_body,
                    "replay": prepared.replay,
                },
            )
        if any(took.queued for took in taken) and self._worker is not None:
            self._worker.wake()
        return results

    def _refused(self, frame: Webhook, refused: Refused) -> None:
        """Count and log a webhook acknowledged without being acted on."""
        if refused.security:
            self.status.count("signature_failures")
            self.status.error("a webhook failed signature verification")
            log.warning(
                "webhook signature mismatch: acknowledged, not acted on",
                extra={**_fields(frame), "security": True},
            )
        else:
            self.status.count("malformed_bodies")
            log.warning(
                "malformed webhook acknowledged and dropped",
                extra={**_fields(frame), "why": refused.reason},
            )

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            before = self.config
            try:
                after = self._file.poll()
            except BridgeConfigError as exc:
                self.status.error(f"config: {exc}")
                self.status.count("config_errors")
                log.error(
                    "config edit refused; keeping the last good config", extra={"why": str(exc)}
                )
                continue
            if after is None:
                continue
            changed = after.changed_keys(before)
            # Key names only: the values may be secrets.
            log.info("config reloaded", extra={"changed": changed})
            self.status.count("config_reloads")
            logging.getLogger().setLevel(after.log_level.upper())
            if "state_dir" in changed:
                log.warning("state_dir changes take effect at the next start")
            if self._link is not None and any(key in CONNECTION_KEYS for key in changed):
                self._link.reconnect()

    async def _write_status_loop(self) -> None:
        last_prune = last_write = float("-inf")
        written: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if now - last_prune >= PRUNE_INTERVAL:
                last_prune = now
                try:
                    await self._db(self._inbox.prune)
                except InboxError as exc:
                    log.warning("dedupe sweep failed", extra={"why": str(exc)})
            current = await self._refresh_status()
            # A change is published within a tick; an idle bridge still proves it is alive.
            if current != written or now - last_write >= STATUS_HEARTBEAT:
                self._write(current)
                written, last_write = current, now
            await asyncio.sleep(STATUS_TICK)

    async def _refresh_status(self) -> dict[str, Any]:
        try:
            self.status.queue_depth = await self._db(self._inbox.depth)
            self.status.failed_jobs = await self._db(self._inbox.failed)
        except (InboxError, sqlite3.Error) as exc:
            log.warning("queue depth unavailable", extra={"why": str(exc)})
        snapshot = self.status.snapshot(os.getpid())
        snapshot.pop("updated_at")
        return snapshot

    def _write(self, snapshot: dict[str, Any]) -> None:
        try:
            write_status(self._state_dir, {**snapshot, "updated_at": round(time.time(), 3)})
        except OSError as exc:
            log.warning("status not written", extra={"why": str(exc)})

    async def _publish_status(self) -> None:
        self._write(await self._refresh_status())


def _fields(frame: Webhook) -> dict[str, Any]:
    """What a log line says of a webhook: never its body nor its signature."""
    return {"delivery": frame.id, "tenant": frame.tenant, "attempt": frame.attempt}
