from __future__ import annotations

from appliance.delivery import Fetch, Send, StoreAck, TenantDelivery
from appliance.store import Delivery


def rows(*seqs: int, attempts: int = 0) -> list[Delivery]:
    return [Delivery(s, "t", b'{"events":[1]}', "sig", 1000 + s, attempts) for s in seqs]


def sends(actions: list[object]) -> list[tuple[object, str, int]]:
    return [(a.connection, a.frame.id, a.frame.attempt) for a in actions if isinstance(a, Send)]


def fetches(actions: list[object]) -> list[Fetch]:
    return [a for a in actions if isinstance(a, Fetch)]


def connected(window: int = 3, backoff: float = 1.0) -> TenantDelivery:
    """A tenant with bridge "a" connected and an empty store behind it."""
    state = TenantDelivery("t", window, backoff)
    (fetch,) = fetches(state.connect("a", 0.0))
    state.loaded([], fetch.limit, fetch.generation, 0.0)
    return state


def test_connecting_fetches_the_backlog_from_the_store() -> None:
    state = TenantDelivery("t", 64)
    actions = state.connect("a", 0.0)
    assert fetches(actions) == [Fetch(after=0, limit=128, generation=1)]
    assert sends(actions) == []


def test_backlog_is_sent_in_order_up_to_the_window() -> None:
    state = TenantDelivery("t", 2)
    (fetch,) = fetches(state.connect("a", 0.0))
    actions = state.loaded(rows(1, 2, 3), fetch.limit, fetch.generation, 0.0)
    assert sends(actions) == [("a", "d-000000000001", 1), ("a", "d-000000000002", 1)]
    assert state.in_flight == 2


def test_an_ack_opens_the_window_for_the_next_webhook() -> None:
    state = TenantDelivery("t", 2)
    (fetch,) = fetches(state.connect("a", 0.0))
    state.loaded(rows(1, 2, 3), 10, fetch.generation, 0.0)
    actions = state.ack(1, 0.0)
    assert actions[0] == StoreAck(1)
    assert sends(actions) == [("a", "d-000000000003", 1)]


def test_committed_webhooks_go_straight_to_a_caught_up_bridge() -> None:
    state = connected()
    assert sends(state.committed(rows(7)[0], 0.0)) == [("a", "d-000000000007", 1)]


def test_committed_webhooks_wait_in_the_store_with_no_bridge() -> None:
    state = TenantDelivery("t", 3)
    assert state.committed(rows(1)[0], 0.0) == []


def test_a_bridge_that_falls_behind_reads_from_the_store_again() -> None:
    state = connected(window=1)
    state.committed(rows(1)[0], 0.0)  # sent
    state.committed(rows(2)[0], 0.0)  # ready (memory holds 2 * window)
    state.committed(rows(3)[0], 0.0)  # ready
    behind = state.committed(rows(4)[0], 0.0)  # over the memory bound: left in the store
    assert sends(behind) == []
    state.ack(1, 0.0)
    # The last ready webhook goes out; the store is read before the bridge runs dry.
    actions = state.ack(2, 0.0)
    assert sends(actions) == [("a", "d-000000000003", 1)]
    assert fetches(actions) == [Fetch(after=3, limit=2, generation=1)]
    state.loaded(rows(4), 2, 1, 0.0)
    assert sends(state.ack(3, 0.0)) == [("a", "d-000000000004", 1)]


def test_a_commit_seen_during_a_fetch_is_fetched_again_not_lost() -> None:
    state = TenantDelivery("t", 8)
    (fetch,) = fetches(state.connect("a", 0.0))
    state.committed(rows(5)[0], 0.0)  # committed after the fetch read the store
    actions = state.loaded(rows(1, 2), fetch.limit, fetch.generation, 0.0)
    assert fetches(actions) == [Fetch(after=2, limit=16, generation=1)]


def test_unacked_webhooks_are_redelivered_with_attempt_raised_after_reconnect() -> None:
    state = connected()
    state.committed(rows(1)[0], 0.0)
    state.disconnect("a", 1.0)
    (fetch,) = fetches(state.connect("b", 2.0))
    # The store counted the first attempt (mark_sent), so the row comes back with attempts=1.
    actions = state.loaded(rows(1, attempts=1), fetch.limit, fetch.generation, 2.0)
    assert sends(actions) == [("b", "d-000000000001", 2)]


def test_the_newest_connection_is_active_and_the_older_stands_by() -> None:
    state = connected()
    actions = state.connect("b", 1.0)
    assert state.active == "b"
    (fetch,) = fetches(actions)
    assert sends(state.loaded(rows(1), fetch.limit, fetch.generation, 1.0)) == [
        ("b", "d-000000000001", 1)
    ]


def test_the_standby_takes_over_when_the_active_connection_goes() -> None:
    state = connected()
    state.connect("b", 1.0)
    actions = state.disconnect("b", 2.0)
    assert state.active == "a"
    assert len(fetches(actions)) == 1


def test_a_standby_leaving_changes_nothing() -> None:
    state = connected()
    state.connect("b", 1.0)
    assert state.disconnect("a", 2.0) == []
    assert state.active == "b"


def test_a_fetch_answered_after_a_reset_is_ignored() -> None:
    state = TenantDelivery("t", 4)
    (old,) = fetches(state.connect("a", 0.0))
    state.connect("b", 0.0)
    assert state.loaded(rows(1), old.limit, old.generation, 0.0) == []


def test_a_nacked_webhook_waits_for_its_backoff() -> None:
    state = connected(backoff=1.0)
    state.committed(rows(1)[0], 0.0)
    assert sends(state.nack(1, 10.0)) == []
    assert state.next_due() == 11.0
    assert sends(state.tick(10.5)) == []
    assert sends(state.tick(11.0)) == [("a", "d-000000000001", 2)]


def test_backoff_doubles_with_each_attempt_up_to_the_cap() -> None:
    state = connected(backoff=1.0)
    state.committed(rows(1, attempts=9)[0], 0.0)  # this send is attempt 10
    state.nack(1, 0.0)
    assert state.next_due() == 60.0


def test_acks_and_nacks_for_unknown_ids_are_ignored() -> None:
    state = connected()
    assert state.ack(99, 0.0) == []
    assert state.nack(99, 0.0) == []


def test_an_ack_for_a_webhook_waiting_to_be_retried_removes_it() -> None:
    state = connected()
    state.committed(rows(1)[0], 0.0)
    state.nack(1, 0.0)
    assert state.ack(1, 0.0)[0] == StoreAck(1)
    assert state.next_due() is None


def test_expired_webhooks_are_no_longer_delivered() -> None:
    state = connected(window=1)
    state.committed(rows(1)[0], 0.0)
    state.committed(rows(2)[0], 0.0)
    state.expired([1, 2], 0.0)
    assert state.in_flight == 0
    assert sends(state.tick(0.0)) == []


def test_no_connection_means_no_actions() -> None:
    state = TenantDelivery("t", 3)
    state.connect("a", 0.0)
    assert state.disconnect("a", 0.0) == []
    assert state.active is None
