"""LINE's Messaging API client: splitting, retry policy, and real HTTP against a fake LINE."""

from __future__ import annotations

import asyncio
import email.utils

import httpx
import pytest

from bridge.line_api import (
    LineApi,
    LineApiError,
    LineSettings,
    ReplyTokenRejected,
    batches,
    retry_delay,
    split_text,
    text_messages,
    units,
)
from tests.bridge.fakes import Failure, FakeLine


def test_short_text_is_one_message() -> None:
    assert split_text("hello") == ["hello"]
    assert split_text("") == [""]


def test_long_text_is_split_to_5000_units_without_losing_a_character() -> None:
    text = ("word " * 3000).strip()
    pieces = split_text(text)
    assert len(pieces) == 3
    assert all(units(p) <= 5000 for p in pieces)
    assert "".join(pieces) == text
    # Cut at a space when one is near, never mid-word.
    assert all(p.endswith(" ") for p in pieces[:-1])


def test_emoji_count_twice_and_are_never_cut_in_half() -> None:
    text = "\U0001f600" * 2600  # 5200 UTF-16 units
    pieces = split_text(text)
    assert [units(p) for p in pieces] == [5000, 200]
    assert "".join(pieces) == text


def test_messages_go_five_to_a_request() -> None:
    messages = text_messages("x" * 5000 * 7)
    assert len(messages) == 7
    assert [len(b) for b in batches(messages)] == [5, 2]


def test_retry_policy() -> None:
    assert retry_delay(400, None, 1) is None
    assert retry_delay(401, None, 1) is None
    assert retry_delay(404, None, 1) is None
    assert retry_delay(500, None, 1) == 0.5
    assert retry_delay(503, None, 3) == 2.0
    assert retry_delay(None, None, 2) == 1.0
    assert retry_delay(429, "7", 1) == 7.0
    assert retry_delay(429, "100000", 1) == 60.0
    when = email.utils.formatdate(1_000_010, usegmt=True)
    assert retry_delay(429, when, 1, now=1_000_000) == pytest.approx(10.0)
    assert retry_delay(429, "soon", 1) == 0.5


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def line() -> FakeLine:
    with FakeLine() as fake:
        yield fake


def client(fake: FakeLine, sleep: Recorder, attempts: int = 5) -> tuple[httpx.AsyncClient, LineApi]:
    http = httpx.AsyncClient()
    settings = LineSettings(fake.url, "access-token-1", 5.0, attempts)
    return http, LineApi(http, lambda: settings, sleep=sleep)


pytestmark = pytest.mark.integration


async def test_reply_carries_token_and_messages(line: FakeLine) -> None:
    sleep = Recorder()
    http, api = client(line, sleep)
    async with http:
        await api.reply("rt-1", text_messages("hi"))
    [request] = line.requests(FakeLine.REPLY)
    assert request.headers["authorization"] == "Bearer access-token-1"
    assert request.body == {"replyToken": "rt-1", "messages": [{"type": "text", "text": "hi"}]}


async def test_429_is_retried_honouring_retry_after(line: FakeLine) -> None:
    line.fail(FakeLine.PUSH, Failure(429, {"message": "Too many"}, {"Retry-After": "3"}))
    sleep = Recorder()
    http, api = client(line, sleep)
    async with http:
        await api.push("U1", text_messages("hi"), "key-1")
    assert sleep.waits == [3.0]
    assert len(line.requests(FakeLine.PUSH)) == 2
    assert len(line.delivered()) == 1


async def test_5xx_is_retried_then_gives_up(line: FakeLine) -> None:
    line.fail(FakeLine.PUSH, Failure(500, {"message": "oops"}, times=10))
    sleep = Recorder()
    http, api = client(line, sleep, attempts=3)
    async with http:
        with pytest.raises(LineApiError) as info:
            await api.push("U1", text_messages("hi"), "key-2")
    assert info.value.status == 500
    assert len(line.requests(FakeLine.PUSH)) == 3
    assert sleep.waits == [0.5, 1.0]


async def test_other_4xx_is_not_retried(line: FakeLine) -> None:
    line.fail(FakeLine.PUSH, Failure(403, {"message": "forbidden"}))
    sleep = Recorder()
    http, api = client(line, sleep)
    async with http:
        with pytest.raises(LineApiError) as info:
            await api.push("U1", text_messages("hi"), "key-3")
    assert info.value.status == 403
    assert len(line.requests(FakeLine.PUSH)) == 1
    assert sleep.waits == []


async def test_expired_reply_token_is_its_own_error(line: FakeLine) -> None:
    line.expired_reply_tokens.add("old")
    http, api = client(line, Recorder())
    async with http:
        with pytest.raises(ReplyTokenRejected) as info:
            await api.reply("old", text_messages("hi"))
    assert not info.value.uncertain


async def test_reply_token_refused_after_a_5xx_is_uncertain(line: FakeLine) -> None:
    line.fail(FakeLine.REPLY, Failure(500, {"message": "oops"}))
    line.fail(FakeLine.REPLY, Failure(400, {"message": "Invalid reply token"}))
    http, api = client(line, Recorder())
    async with http:
        with pytest.raises(ReplyTokenRejected) as info:
            await api.reply("rt", text_messages("hi"))
    assert info.value.uncertain


async def test_push_retry_key_already_accepted_counts_as_sent(line: FakeLine) -> None:
    http, api = client(line, Recorder())
    async with http:
        await api.push("U1", text_messages("hi"), "same-key")
        await api.push("U1", text_messages("hi"), "same-key")
    assert len(line.delivered()) == 1
    assert line.requests(FakeLine.PUSH)[0].headers["x-line-retry-key"] == "same-key"


async def test_unreachable_line_is_retried_then_reported() -> None:
    sleep = Recorder()
    http = httpx.AsyncClient()
    settings = LineSettings("http://127.0.0.1:9", "t", 2.0, 2)
    api = LineApi(http, lambda: settings, sleep=sleep)
    async with http:
        with pytest.raises(LineApiError) as info:
            await api.start_loading("U1", 20)
    assert info.value.status is None
    assert not info.value.uncertain
    assert len(sleep.waits) == 1
