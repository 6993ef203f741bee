"""The board where relay processes post their bridges (appliance/console/board.py).

The wire form and the merge as pure functions; :class:`RedisBoard` against a
real redis-server (tests/support/redis.py), two boards on it standing for two
processes of one relay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from appliance.config import RelayConfig
from appliance.console.board import (
    BoardError,
    BridgeFacts,
    LocalBoard,
    RedisBoard,
    create_board,
    decode,
    encode,
    merged,
)
from appliance.console.overview import AckRates, view_of
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (a fixture)
from tests.support.relay import free_port

ROUND = 0.2


def facts(served_by: str = "a", connected_at: float = 100.0, **changes: object) -> BridgeFacts:
    base = BridgeFacts(
        served_by=served_by,
        taken_at=200.0,
        connected_at=connected_at,
        protocol=2,
        peer="192.0.2.7",
        in_flight=3,
        window=512,
        last_ack_at=199.5,
        acks=40,
        redeliveries=1,
        standby=0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- the wire form and the merge ---------------------------------------------------


def test_a_post_reads_back_as_it_was_posted() -> None:
    bridges = {"shop-1": facts(), "shop-2": facts(last_ack_at=None)}
    assert decode(encode(bridges)) == bridges


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"shop-1": "connected"}),
        json.dumps({"shop-1": {"served_by": "a"}}),
        json.dumps({"shop-1": {**dataclasses.asdict(facts()), "acks": "40"}}),
        json.dumps({"shop-1": {**dataclasses.asdict(facts()), "acks": True}}),
        json.dumps({"shop-1": {**dataclasses.asdict(facts()), "connected_at": None}}),
        json.dumps({"shop-1": {**dataclasses.asdict(facts()), "extra": 1}}),
    ],
)
def test_a_malformed_post_is_a_board_error(text: str) -> None:
    with pytest.raises(BoardError):
        decode(text)


def test_where_two_processes_post_a_tenant_the_newer_connection_wins() -> None:
    old, new = facts("a", connected_at=100.0), facts("b", connected_at=150.0)
    assert merged([{"t": new}, {"t": old}]) == {"t": new}
    assert merged([{"t": old}, {"t": new}, {"u": old}]) == {"t": new, "u": old}


def test_a_posted_bridge_is_drawn_with_its_ages_and_ack_rate() -> None:
    rates = AckRates()
    first = view_of("t", facts(taken_at=200.0, acks=40), rates, now=201.0)
    assert (first.served_by, first.last_ack_age, first.acks_per_second) == ("a", 1.5, None)
    later = view_of("t", facts(taken_at=202.0, acks=60), rates, now=202.5)
    # 20 acks between two posts taken 2 s apart, whenever they were read.
    assert later.acks_per_second == pytest.approx(10.0)


def test_the_sqlite_store_gets_a_board_of_its_own_process() -> None:
    board = create_board(RelayConfig(), worker=None)
    assert isinstance(board, LocalBoard)
    assert not board.shared


# -- in Redis ------------------------------------------------------------------------


@pytest.fixture
async def boards(
    redis_server: RedisServer,  # noqa: F811 (the session's, tests/support/redis.py)
) -> AsyncIterator[tuple[RedisBoard, RedisBoard]]:
    # A key prefix of the test's own on the session's Redis: it sees no other test's board.
    prefix = f"test-{secrets.token_hex(4)}:"
    here = RedisBoard(redis_server.url, "here", ROUND, prefix)
    there = RedisBoard(redis_server.url, "there", ROUND, prefix)
    yield here, there
    await here.close()
    await there.close()


async def test_nobody_posts_until_a_console_reads(boards: tuple[RedisBoard, RedisBoard]) -> None:
    here, there = boards
    assert not await there.watched()
    await here.read()
    assert await there.watched()


async def test_a_read_gets_every_other_processs_post_but_its_own(
    boards: tuple[RedisBoard, RedisBoard],
) -> None:
    here, there = boards
    await here.post({"mine": facts("here")})
    await there.post({"theirs": facts("there")})
    assert await here.read() == {"theirs": facts("there")}
    assert await there.read() == {"mine": facts("here")}


async def test_the_first_read_after_a_quiet_spell_waits_a_round_for_the_posts(
    boards: tuple[RedisBoard, RedisBoard],
) -> None:
    here, there = boards

    async def process_posting_each_round() -> None:
        while True:
            if await there.watched():
                await there.post({"theirs": facts("there")})
            await asyncio.sleep(ROUND)

    poster = asyncio.create_task(process_posting_each_round())
    try:
        started = time.monotonic()
        assert await here.read() == {"theirs": facts("there")}
        assert time.monotonic() - started >= ROUND
        started = time.monotonic()
        await here.read()
        assert time.monotonic() - started < ROUND  # watched already: no wait
    finally:
        poster.cancel()


async def test_a_process_that_stops_posting_drops_off_the_board(
    boards: tuple[RedisBoard, RedisBoard],
) -> None:
    here, there = boards
    await here.read()  # watched from now on
    await there.post({"theirs": facts("there")})
    assert await here.read() == {"theirs": facts("there")}
    await asyncio.sleep(there.lifetime + 0.1)
    assert await here.read() == {}


async def test_an_unreachable_redis_is_a_board_error() -> None:
    board = RedisBoard(f"redis://127.0.0.1:{free_port()}/0", "here", ROUND, "linerelay:")
    try:
        with pytest.raises(BoardError):
            await board.read()
        with pytest.raises(BoardError):
            await board.post({})
    finally:
        await board.close()
