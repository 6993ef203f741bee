"""Tallies count answers and deliveries and merge exactly across processes."""

from __future__ import annotations

import json

from loadtest.tally import (
    ACCEPTED,
    BAD_FRAME,
    CHURN,
    CONNECT,
    DELIVERED,
    FAILED,
    POSTED,
    REDELIVERED,
    Buckets,
    Histogram,
    Tally,
)


def test_histogram_percentiles_are_nearest_rank_in_whole_milliseconds() -> None:
    h = Histogram()
    for ms in range(1, 101):
        h.add(ms - 0.5)
    assert h.total == 100
    assert h.percentile(50) == 50
    assert h.percentile(99) == 99
    assert h.percentile(100) == 100
    assert Histogram().percentile(99) is None


def test_count_over_counts_only_samples_beyond_the_limit() -> None:
    h = Histogram()
    for ms in (999.0, 1000.0, 1000.2, 1200.0):
        h.add(ms)
    assert h.count_over(1000) == 2


def test_negative_latencies_from_clock_skew_count_as_zero() -> None:
    h = Histogram()
    h.add(-3)
    assert h.percentile(50) == 0


def test_answers_accept_markers_only_on_200() -> None:
    t = Tally()
    t.answered(200, 10, "A")
    t.answered(503, 20, "B")
    t.failed("ConnectionRefusedError", 1)
    assert t.accepted == 1
    assert t.waiting == {"A"}
    assert (t.requests, t.errors) == (3, 2)
    assert t.statuses == {"200": 1, "503": 1, "ConnectionRefusedError": 1}


def test_a_delivery_before_its_answer_still_matches() -> None:
    t = Tally()
    t.delivered_one("A", 3)
    assert t.unmatched == {"A"}
    t.answered(200, 10, "A")
    assert (t.accepted, t.matched, t.pending) == (1, 1, 0)
    assert not t.unmatched


def test_a_marker_delivered_twice_counts_once_and_foreign_bodies_are_bad() -> None:
    t = Tally()
    t.answered(200, 10, "A")
    t.delivered_one("A", 30)
    t.delivered_one("A", 5000)
    t.delivered_one(None, None)
    assert t.matched == 1
    assert t.deliveries == 3
    assert t.bad_deliveries == 1
    assert t.pending == 0


def test_matched_markers_are_not_kept_in_memory() -> None:
    t = Tally()
    for i in range(1000):
        t.answered(200, 1, f"m{i}")
        t.delivered_one(f"m{i}", 1)
    assert t.matched == 1000
    assert not t.waiting
    assert not t.unmatched


def test_deltas_merged_on_a_master_equal_one_tally_of_everything() -> None:
    sender, receiver, master = Tally(), Tally(), Tally()
    sender.answered(200, 10, "A")
    sender.answered(200, 12, "B")
    sender.answered(200, 12, "C")
    receiver.delivered_one("A", 40)
    master.merge(Tally.from_wire(json.loads(json.dumps(receiver.take().to_wire()))))
    master.merge(Tally.from_wire(json.loads(json.dumps(sender.take().to_wire()))))
    receiver.delivered_one("B", 50)
    master.merge(Tally.from_wire(receiver.take().to_wire()))
    assert (master.accepted, master.matched) == (3, 2)
    assert master.waiting == {"C"}
    assert master.requests == 3
    assert master.e2e.total == 2
    assert sender.requests == 0
    assert not sender.waiting


def test_webhooks_and_deliveries_are_counted_per_second_in_separate_series() -> None:
    t = Tally()
    t.answered(200, 10, "A", sent_at=1000.2)
    t.answered(200, 10, "B", sent_at=1000.9)
    t.answered(503, 10, "C", sent_at=1001.5)
    t.failed("ConnectError", 3, sent_at=1001.7)
    t.delivered_one("A", 40, at=1001.1)
    t.delivered_one("B", 40, redelivery=True, at=1002.0)
    assert t.timeline.get(POSTED, 1000) == 2
    assert t.timeline.get(POSTED, 1001) == 2
    assert t.timeline.get(FAILED, 1001) == 2
    assert t.timeline.get(DELIVERED, 1001) == 1
    assert t.timeline.get(REDELIVERED, 1002) == 1
    assert t.timeline.total(DELIVERED) + t.timeline.total(REDELIVERED) == t.deliveries
    assert t.timeline.keys() == [1000, 1001, 1002]


def test_requests_are_counted_by_target_and_deliveries_by_bridge_target() -> None:
    t = Tally()
    t.answered(200, 1, "A", target=0)
    t.answered(200, 1, "B", target=1)
    t.answered(500, 1, "C", target=1)
    t.delivered_one("A", 5, target=1)
    assert (t.by_target.get(POSTED, 0), t.by_target.get(POSTED, 1)) == (1, 2)
    assert (t.by_target.get(ACCEPTED, 0), t.by_target.get(ACCEPTED, 1)) == (1, 1)
    assert t.by_target.get(DELIVERED, 1) == 1


def test_series_and_target_counts_survive_deltas_merged_on_the_master() -> None:
    worker_1, worker_2, master = Tally(), Tally(), Tally()
    worker_1.answered(200, 1, "A", target=1, sent_at=50.5)
    worker_2.delivered_one("A", 9, target=0, at=51.0)
    worker_2.answered(200, 1, "B", target=0, sent_at=50.1)
    for worker in (worker_1, worker_2):
        master.merge(Tally.from_wire(json.loads(json.dumps(worker.take().to_wire()))))
    assert master.timeline.get(POSTED, 50) == 2
    assert master.timeline.get(DELIVERED, 51) == 1
    assert master.by_target.get(POSTED, 1) == master.by_target.get(POSTED, 0) == 1
    assert not worker_1.timeline.keys()
    assert not worker_1.by_target.keys()


def test_buckets_add_up_and_round_trip_through_json() -> None:
    b = Buckets()
    b.add("x", 3)
    b.add("x", 3, 4)
    b.add("y", 1)
    assert b.get("x", 3) == 5
    assert b.get("z", 3) == 0
    assert b.total("x") == 5
    again = Buckets.from_wire(json.loads(json.dumps(b.to_wire())))
    assert again == b


def bot_side(t: Tally) -> None:
    """A worker's bridges at work: deliveries, connections and gateway calls."""
    t.answered(200, 5, "A")
    t.delivered_one("A", 30)
    t.delivered_one("A", 900, redelivery=True)
    t.bridge_event(CONNECT)
    t.bridge_event(CONNECT)
    t.bridge_event(CHURN)
    t.bridge_event(BAD_FRAME)
    t.connection_failed("InvalidStatus 429")
    t.gateway_call("reply", 20, ok=True)
    t.gateway_call("reply", 45, ok=False)
    t.gateway_call("loading", 7, ok=True)


def test_the_bridges_side_is_counted_by_kind_reason_and_call_name() -> None:
    t = Tally()
    bot_side(t)
    assert (t.deliveries, t.redeliveries) == (2, 1)
    assert t.bridge_events == {CONNECT: 2, CHURN: 1, BAD_FRAME: 1}
    assert t.connection_failures == {"InvalidStatus 429": 1}
    assert {name: h.total for name, h in t.gateway.items()} == {"reply": 2, "loading": 1}
    assert t.gateway["reply"].percentile(100) == 45
    assert t.gateway_failures == {"reply": 1}


def test_the_bridges_side_survives_the_wire_and_adds_up_on_the_master() -> None:
    worker_1, worker_2, master = Tally(), Tally(), Tally()
    bot_side(worker_1)
    bot_side(worker_2)
    worker_2.connection_failed("ConnectionClosedError")
    worker_2.gateway_call("push", 3, ok=True)
    for worker in (worker_1, worker_2):
        master.merge(Tally.from_wire(json.loads(json.dumps(worker.take().to_wire()))))
    assert (master.deliveries, master.redeliveries) == (4, 2)
    assert master.bridge_events == {CONNECT: 4, CHURN: 2, BAD_FRAME: 2}
    assert master.connection_failures == {"InvalidStatus 429": 2, "ConnectionClosedError": 1}
    assert {name: h.total for name, h in master.gateway.items()} == {
        "reply": 4,
        "loading": 2,
        "push": 1,
    }
    assert master.gateway["reply"].counts == {20: 2, 45: 2}
    assert master.gateway_failures == {"reply": 2}


def test_take_leaves_nothing_of_the_bridges_side_behind() -> None:
    t = Tally()
    bot_side(t)
    delta = t.take()
    assert delta.counted
    assert delta.bridge_events[CONNECT] == 2
    assert t == Tally()
    assert not t.counted
    t.bridge_event(CONNECT)
    assert t.counted, "a worker whose bridges only connected still sends its delta"
    assert delta.bridge_events[CONNECT] == 2, "the delta taken is not counted into again"


def test_a_tally_round_trips_through_its_wire_form_whole() -> None:
    t = Tally()
    bot_side(t)
    t.answered(503, 12, "B", target=1, sent_at=10.0)
    assert Tally.from_wire(json.loads(json.dumps(t.to_wire()))) == t
