"""The worker: answers queued events with bounded concurrency.

Jobs come from the inbox (one per chat at a time, oldest first) and run
``concurrency`` at once. For a text message: the loading animation, the
chat model (its answer saved, so a restart does not ask twice), then the
Reply API with the event's reply token, falling back to push when the token
is refused (and the config allows it). Because a reply token is single-use,
a reply that may already have reached LINE (the process died mid-request, or
LINE answered 5xx) is never followed by a push: a lost answer is logged,
but nobody gets the same answer twice. Pushes carry ``X-Line-Retry-Key``,
so retrying one is safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.chat import ChatClient, ChatError
from bridge.config import BridgeConfig
from bridge.events import Answer, Skip, parse_event, plan
from bridge.inbox import Inbox, InboxError, Job
from bridge.line_api import LineApi, LineApiError, ReplyTokenRejected, batches, text_messages
from bridge.status import BridgeStatus

log = logging.getLogger(__name__)

#: Seconds between looks at the queue when nothing woke the worker.
IDLE_POLL = 1.0


class Worker:
    """Runs jobs from the inbox; ``db`` runs inbox calls on the database thread."""

    def __init__(
        self,
        inbox: Inbox,
        db: Callable[..., Awaitable[Any]],
        line: LineApi,
        chat: ChatClient,
        config: Callable[[], BridgeConfig],
        status: BridgeStatus,
    ) -> None:
        """``db(fn, *args)`` awaits ``fn(*args)`` run on the thread that owns the inbox."""
        self._inbox = inbox
        self._db = db
        self._line = line
        self._chat = chat
        self._config = config
        self._status = status
        self._wake = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], Job] = {}

    def wake(self) -> None:
        """New jobs were queued: look at once rather than at the next poll."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Start jobs until ``stopping`` is set; running ones are left to :meth:`drain`."""
        while not stopping.is_set():
            self._wake.clear()
            while len(self._tasks) < self._config().concurrency:
                busy = {job.chat for job in self._tasks.values()}
                try:
                    job: Job | None = await self._db(self._inbox.claim, busy)
                except InboxError as exc:
                    log.error("cannot read the queue", extra={"why": str(exc)})
                    self._status.error(f"queue: {exc}")
                    break
                if job is None:
                    break
                task = asyncio.create_task(self._run_job(job))
                self._tasks[task] = job
                task.add_done_callback(self._done)
            self._status.in_flight = len(self._tasks)
            waiters: set[asyncio.Future[Any]] = {
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(stopping.wait()),
            }
            await asyncio.wait(waiters, timeout=IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._status.in_flight = len(self._tasks)
        # A finished job may free its chat's next job.
        self._wake.set()

    async def drain(self, grace: float) -> int:
        """Let running jobs finish for up to ``grace`` s, then cut the rest; returns how many were cut."""
        jobs = dict(self._tasks)
        if not jobs:
            return 0
        _, pending = await asyncio.wait(set(jobs), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in pending:
            log.warning(
                "shutdown cut an answer short; it resumes at the next start",
                extra={"job": jobs[task].id},
            )
            await self._db(self._inbox.release, jobs[task].id)
        return len(pending)

    async def _run_job(self, job: Job) -> None:
        try:
            outcome = await self._answer(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            # One broken event must not stop the others; it is dropped, not retried forever.
            log.exception("answering an event failed", extra={"job": job.id})
            self._status.error("answering an event failed unexpectedly")
            outcome = "crashed"
        self._status.count(f"outcome_{outcome}")
        try:
            await self._db(self._inbox.finish, job.id)
        except InboxError as exc:
            # The job stays running in the file and is retried at the next start.
            log.error("cannot mark an event done", extra={"job": job.id, "why": str(exc)})
            self._status.error(f"queue: {exc}")

    async def _answer(self, job: Job) -> str:
        event = parse_event(job.index, json.loads(job.event))
        action = plan(event)
        fields = {
            "job": job.id,
            "event_type": event.type[:64],
            "event_id": event.event_id[:64],
            "redelivery": event.redelivery,
        }
        if isinstance(action, Skip):
            log.info("event skipped", extra={**fields, "reason": action.reason})
            return "skipped"
        config = self._config()
        answer = job.answer
        outcome = "answered"
        if answer is None:
            if action.loading_chat and config.loading_seconds:
                await self._loading(action, config.loading_seconds)
            try:
                answer = await self._chat.complete(action.text)
            except ChatError as exc:
                log.warning(
                    "chat API failed; sending the apology", extra={**fields, "reason": str(exc)}
                )
                self._status.error(f"chat API: {exc}")
                answer = config.apology_text
                outcome = "apology"
            if not answer:
                return "unanswered"
            await self._db(self._inbox.save_answer, job.id, answer)
        elif answer == config.apology_text:
            outcome = "apology"
        delivered = await self._deliver(job, action, answer, config, fields)
        log.info(
            "event answered" if delivered else "event not answered",
            extra={**fields, "outcome": outcome},
        )
        return outcome if delivered else "undelivered"

    async def _loading(self, action: Answer, seconds: int) -> None:
        try:
            await self._line.start_loading(action.loading_chat, seconds)
        except LineApiError as exc:
            # The animation is a courtesy; its failure must not hold the answer back.
            log.info("loading animation not shown", extra={"status": exc.status})

    async def _deliver(
        self, job: Job, action: Answer, answer: str, config: BridgeConfig, fields: dict[str, Any]
    ) -> bool:
        requests = list(batches(text_messages(answer)))
        first, rest = requests[0], requests[1:]
        pushed_first = False
        if action.reply_token:
            uncertain_before = job.reply_attempted
            await self._db(self._inbox.mark_reply_attempted, job.id)
            try:
                await self._line.reply(action.reply_token, first)
                self._status.count("replies")
            except ReplyTokenRejected as exc:
                if uncertain_before or exc.uncertain:
                    log.warning(
                        "reply token refused after a reply that may have arrived; not pushing",
                        extra=fields,
                    )
                    return False
                if not (config.reply_fallback_push and action.push_to):
                    log.warning("reply token refused; push fallback is off", extra=fields)
                    self._status.error("reply token refused")
                    return False
                log.info("reply token refused; answering by push", extra=fields)
                pushed_first = True
            except LineApiError as exc:
                self._status.error(f"reply failed: {exc}")
                return False
        elif config.reply_fallback_push and action.push_to:
            pushed_first = True
        else:
            return False
        to_push = ([first] if pushed_first else []) + rest
        if to_push and not (config.reply_fallback_push and action.push_to):
            log.warning("answer longer than one reply; the rest is not pushed", extra=fields)
            return True
        for number, messages in enumerate(to_push):
            key = str(uuid.uuid5(uuid.UUID(job.retry_key), str(number)))
            try:
                await self._line.push(action.push_to, messages, key)
            except LineApiError as exc:
                self._status.error(f"push failed: {exc}")
                return number > 0 or not pushed_first
            self._status.count("pushes")
        return True
