"""The worker in-process, on a real SQLite inbox, against the fake LINE and chat servers.

These pin the decisions that keep an answer from being sent twice or not at all.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.chat import ChatClient, ChatSettings
from bridge.config import BridgeConfig, parse
from bridge.inbox import Body, Inbox, Incoming
from bridge.line_api import LineApi, LineSettings
from bridge.status import BridgeStatus
from bridge.worker import Worker
from tests.bridge.fakes import Failure, FakeChat, FakeLine

pytestmark = pytest.mark.integration


@pytest.fixture
def line() -> Iterator[FakeLine]:
    with FakeLine() as fake:
        yield fake


@pytest.fixture
def chat() -> Iterator[FakeChat]:
    with FakeChat() as fake:
        yield fake


class Rig:
    def __init__(self, inbox: Inbox, worker: Worker, status: BridgeStatus) -> None:
        self.inbox = inbox
        self.worker = worker
        self.status = status

    def queue(self, text: str, reply_token: str, user: str = "U1", digest: str = "d1") -> None:
        event = {
            "type": "message",
            "mode": "active",
            "timestamp": 1,
            "webhookEventId": f"id-{digest}",
            "deliveryContext": {"isRedelivery": False},
            "replyToken": reply_token,
            "source": {"type": "user", "userId": user},
            "message": {"id": "1", "type": "text", "text": text, "quoteToken": "q"},
        }
        item = Incoming(0, f"id:{digest}", user, json.dumps(event))
        self.inbox.take([Body(digest, [item])], 3600)

    async def run_until_idle(self) -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(self.worker.run(stopping))
        for _ in range(400):
            await asyncio.sleep(0.025)
            if self.inbox.depth() == 0:
                break
        stopping.set()
        await task
        await self.worker.drain(5)


@pytest.fixture
async def make_rig(
    tmp_path: Path, line: FakeLine, chat: FakeChat
) -> AsyncIterator[Callable[..., Rig]]:
    async with httpx.AsyncClient() as http:
        inboxes: list[Inbox] = []

        def make(**overrides: Any) -> Rig:
            config: BridgeConfig = parse(
                {
                    "relay_token": "t",
                    "channel_secret": "s",
                    "channel_access_token": "acc",
                    "relay_url": "wss://127.0.0.1/bridge",
                    "openclaw_url": chat.url,
                    "line_api_base": line.url,
                    **overrides,
                }
            )
            inbox = Inbox(tmp_path / f"inbox{len(inboxes)}.sqlite3")
            inboxes.append(inbox)

            async def db(fn: Callable[..., Any], *args: Any) -> Any:
                return functools.partial(fn, *args)()

            async def no_wait(seconds: float) -> None:
                await asyncio.sleep(0)

            line_api = LineApi(
                http,
                lambda: LineSettings(config.line_api_base, "acc", 5.0, 3),
                sleep=no_wait,
            )
            chat_client = ChatClient(
                http, lambda: ChatSettings(config.openclaw_url, "", "m", "", 5.0)
            )
            status = BridgeStatus()
            return Rig(
                inbox, Worker(inbox, db, line_api, chat_client, lambda: config, status), status
            )

        yield make
        for inbox in inboxes:
            inbox.close()


async def test_long_answer_is_replied_five_messages_and_pushed_the_rest(
    make_rig: Callable[..., Rig], line: FakeLine, chat: FakeChat
) -> None:
    chat.answer = lambda text: "y" * (5000 * 6 + 10)
    rig = make_rig()
    rig.queue("long please", "rt-long")
    await rig.run_until_idle()
    [reply] = line.requests(FakeLine.REPLY)
    [push] = line.requests(FakeLine.PUSH)
    assert len(reply.body["messages"]) == 5
    assert [len(m["text"]) for m in push.body["messages"]] == [5000, 10]
    assert push.body["to"] == "U1"


async def test_reply_refused_after_an_uncertain_try_is_not_pushed(
    make_rig: Callable[..., Rig], line: FakeLine
) -> None:
    # LINE answers 500 (it may have delivered), then the token is "used": no push.
    line.fail(FakeLine.REPLY, Failure(500, {"message": "oops"}))
    line.fail(FakeLine.REPLY, Failure(400, {"message": "Invalid reply token"}))
    rig = make_rig()
    rig.queue("hi", "rt-uncertain")
    await rig.run_until_idle()
    assert len(line.requests(FakeLine.REPLY)) == 2
    assert line.requests(FakeLine.PUSH) == []
    assert rig.status.counters["outcome_undelivered"] == 1


async def test_resumed_job_whose_reply_may_have_arrived_is_not_pushed(
    make_rig: Callable[..., Rig], line: FakeLine, chat: FakeChat
) -> None:
    rig = make_rig()
    rig.queue("hi", "rt-resumed")
    job = rig.inbox.claim(set())
    assert job is not None
    rig.inbox.save_answer(job.id, "stored answer")
    rig.inbox.mark_reply_attempted(job.id)
    line.expired_reply_tokens.add("rt-resumed")  # the reply did reach LINE before the crash
    rig.inbox.recover()
    await rig.run_until_idle()
    assert chat.requests() == []  # the stored answer is used, the model is not asked again
    assert line.requests(FakeLine.PUSH) == []


async def test_resumed_job_whose_reply_never_left_is_replied_with_the_stored_answer(
    make_rig: Callable[..., Rig], line: FakeLine, chat: FakeChat
) -> None:
    rig = make_rig()
    rig.queue("hi", "rt-fresh")
    job = rig.inbox.claim(set())
    assert job is not None
    rig.inbox.save_answer(job.id, "stored answer")
    rig.inbox.mark_reply_attempted(job.id)
    rig.inbox.recover()
    await rig.run_until_idle()
    [reply] = line.delivered()
    assert reply.body["messages"] == [{"type": "text", "text": "stored answer"}]
    assert chat.requests() == []


async def test_push_fallback_off_leaves_an_expired_token_unanswered(
    make_rig: Callable[..., Rig], line: FakeLine
) -> None:
    line.expired_reply_tokens.add("rt-old")
    rig = make_rig(reply_fallback_push=False)
    rig.queue("hi", "rt-old")
    await rig.run_until_idle()
    assert line.requests(FakeLine.PUSH) == []
    assert rig.status.last_error == "reply token refused"


async def test_loading_animation_failure_does_not_hold_the_answer_back(
    make_rig: Callable[..., Rig], line: FakeLine
) -> None:
    line.fail(FakeLine.LOADING, Failure(403, {"message": "not allowed"}))
    rig = make_rig()
    rig.queue("hi", "rt-load")
    await rig.run_until_idle()
    assert len(line.delivered()) == 1


async def test_events_of_one_chat_are_answered_in_order(
    make_rig: Callable[..., Rig], line: FakeLine, chat: FakeChat
) -> None:
    chat.delay = 0.05
    rig = make_rig(concurrency=8)
    for n in range(5):
        rig.queue(f"m{n}", f"rt-{n}", digest=f"d{n}")
    await rig.run_until_idle()
    assert [r.body["replyToken"] for r in line.delivered()] == [f"rt-{n}" for n in range(5)]
