"""The master ends a distributed run only once every worker has sent its last counts."""

from __future__ import annotations

from loadtest.closing import FinalCounts


def test_a_round_is_settled_when_every_worker_has_answered() -> None:
    counts = FinalCounts(timeout=10)
    assert not counts.is_open
    number = counts.open(["w1", "w2"], now=0)
    assert counts.is_open
    counts.answered("w1", number)
    assert not counts.settled(now=1)
    assert counts.missing() == {"w2"}
    counts.answered("w2", number)
    assert counts.settled(now=1)
    assert counts.missing() == set()


def test_answers_to_an_earlier_round_do_not_settle_the_new_one() -> None:
    counts = FinalCounts(timeout=10)
    first = counts.open(["w1"], now=0)
    counts.cancel()
    assert not counts.is_open
    second = counts.open(["w1"], now=5)
    assert second == first + 1
    counts.answered("w1", first)
    assert not counts.settled(now=6)
    counts.answered("w1", second)
    assert counts.settled(now=6)


def test_a_silent_worker_holds_the_round_only_until_the_timeout() -> None:
    counts = FinalCounts(timeout=10)
    counts.open(["w1", "gone"], now=100)
    counts.answered("w1", counts.round)
    assert not counts.settled(now=109.9)
    assert counts.settled(now=110)
    assert counts.missing() == {"gone"}


def test_no_round_open_is_never_settled() -> None:
    assert not FinalCounts().settled(now=1e9)
