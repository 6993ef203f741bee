"""The group commit's bookkeeping, without a database (appliance/store/batcher.py)."""

from __future__ import annotations

from appliance.store.batcher import Batcher


def test_the_first_operation_asks_for_a_flush_and_later_ones_do_not() -> None:
    batcher: Batcher[int] = Batcher(max_batch=10)
    assert batcher.submit(1) is True
    assert batcher.submit(2) is False
    assert batcher.take() == [1, 2]


def test_operations_arriving_during_a_write_wait_and_form_the_next_batch() -> None:
    batcher: Batcher[int] = Batcher(max_batch=10)
    batcher.submit(1)
    assert batcher.take() == [1]
    assert batcher.submit(2) is False  # the write is under way: no flush of its own
    assert batcher.submit(3) is False
    assert batcher.take() == []  # a stray flush during the write takes nothing
    assert batcher.done() is True  # the write ended with work waiting: flush again
    assert batcher.take() == [2, 3]
    assert batcher.done() is False
    assert batcher.idle


def test_a_batch_never_exceeds_max_batch_and_the_rest_follows_in_order() -> None:
    batcher: Batcher[int] = Batcher(max_batch=3)
    for op in range(7):
        batcher.submit(op)
    batches = []
    while batch := batcher.take():
        batches.append(batch)
        batcher.done()
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_batch_put_back_goes_first_into_the_next_flush() -> None:
    batcher: Batcher[str] = Batcher(max_batch=10)
    batcher.submit("a")
    batch = batcher.take()
    batcher.submit("b")
    batcher.put_back(batch)
    assert batcher.scheduled  # the caller schedules the retry: no second flush is asked for
    assert batcher.submit("c") is False
    assert batcher.take() == ["a", "b", "c"]


def test_a_new_max_batch_applies_to_the_next_batch() -> None:
    batcher: Batcher[int] = Batcher(max_batch=2)
    for op in range(4):
        batcher.submit(op)
    batcher.max_batch = 4
    assert batcher.take() == [0, 1, 2, 3]


def test_idle_only_when_nothing_waits_and_nothing_is_written() -> None:
    batcher: Batcher[int] = Batcher(max_batch=2)
    assert batcher.idle
    batcher.submit(1)
    assert not batcher.idle
    batcher.take()
    assert not batcher.idle
    batcher.done()
    assert batcher.idle
