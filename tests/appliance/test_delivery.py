from __future__ import annotations

from appliance.delivery import SENT_MEMORY, Action, Fetch, Send, StoreAck, TenantDelivery
from appliance.store import Delivery


def wire(seq: int) -> str:
    """The delivery id the tests give row ``seq`` (opaque to the state machine)."""
    return f"d-{seq:024x}"


def rows(*seqs: int, attempts: int = 0, size: int = 14) -> list[Delivery]:
    body = b'{"events":[1]}'.ljust(size, b" ")
    return [Delivery(s, wire(s), "t", body, "sig", 1000 + s, attempts) for s in seqs]


def sends(actions: list[Action] | None) -> list[tuple[object, str, int]]:
    assert actions is not None
    return [(a.connection, a.frame.id, a.frame.attempt) for a in actions if isinstance(a, Send)]


def fetches(actions: list[Action]) -> list[Fetch]:
    return [a for a in actions if isinstance(a, Fetch)]


def caught_up(state: TenantDelivery, actions: list[Action]) -> list[Action]:
    """Answer the fetch in ``actions`` with an empty page, as a store with nothing more does."""
    (fetch,) = fetches(actions)
    return state.loaded([], fetch, 0.0)


def connected(window: int = 3, backoff: float = 1.0, window_bytes: int = 1 << 20) -> TenantDelivery:
    """A tenant with bridge "a" connected and an empty store behind it."""
    state = TenantDelivery("t", window, backoff, window_bytes)
    caught_up(state, state.connect("a", 0.0))
    return state


def test_connecting_fetches_the_backlog_from_the_store() -> None:
    state = TenantDelivery("t", 64, window_bytes=1000)
    actions = state.connect("a", 0.0)
    assert fetches(actions) == [Fetch(after=0, limit=128, generation=1, max_bytes=1000)]
    assert sends(actions) == []


def test_backlog_is_sent_in_order_up_to_the_window() -> None:
    state = TenantDelivery("t", 2)
    (fetch,) = fetches(state.connect("a", 0.0))
    actions = state.loaded(rows(1, 2, 3), fetch, 0.0)
    assert sends(actions) == [("a", wire(1), 1), ("a", wire(2), 1)]
    assert state.in_flight == 2


def test_an_ack_opens_the_window_for_the_next_webhook() -> None:
    state = TenantDelivery("t", 2)
    (fetch,) = fetches(state.connect("a", 0.0))
    state.loaded(rows(1, 2, 3), fetch, 0.0)
    actions = state.ack("a", wire(1), 0.0)
    assert actions is not None
    assert actions[0] == StoreAck(1)
    assert sends(actions) == [("a", wire(3), 1)]


def test_committed_webhooks_go_straight_to_a_caught_up_bridge() -> None:
    state = connected()
    assert sends(state.committed(rows(7)[0], 0.0)) == [("a", wire(7), 1)]


def test_committed_webhooks_wait_in_the_store_with_no_bridge() -> None:
    state = TenantDelivery("t", 3)
    assert state.committed(rows(1)[0], 0.0) == []


def test_a_page_at_its_byte_limit_is_not_the_end_of_the_queue() -> None:
    state = TenantDelivery("t", 4, window_bytes=100)
    (fetch,) = fetches(state.connect("a", 0.0))
    # Short in rows but at its byte limit: the store may hold more, so it is read again.
    actions = state.loaded(rows(1, size=100), fetch, 0.0)
    (again,) = fetches(actions)
    assert again == Fetch(after=1, limit=8, generation=1, max_bytes=100)
    # Meanwhile a commit is not taken from memory: it would overtake rows still in the store.
    assert sends(state.committed(rows(5)[0], 0.0)) == []
    state.ack("a", wire(1), 0.0)
    assert sends(state.loaded(rows(2, 5), again, 0.0)) == [("a", wire(2), 1), ("a", wire(5), 1)]


def test_a_short_page_under_its_byte_limit_is_the_end_of_the_queue() -> None:
    state = TenantDelivery("t", 4)
    (fetch,) = fetches(state.connect("a", 0.0))
    assert fetches(state.loaded(rows(1), fetch, 0.0)) == []
    assert sends(state.committed(rows(2)[0], 0.0)) == [("a", wire(2), 1)]


def test_a_bridge_that_falls_behind_reads_from_the_store_again() -> None:
    state = connected(window=1)
    state.committed(rows(1)[0], 0.0)  # sent
    state.committed(rows(2)[0], 0.0)  # ready (memory holds 2 * window)
    state.committed(rows(3)[0], 0.0)  # ready
    behind = state.committed(rows(4)[0], 0.0)  # over the memory bound: left in the store
    assert sends(behind) == []
    state.ack("a", wire(1), 0.0)
    # The last ready webhook goes out; the store is read before the bridge runs dry.
    actions = state.ack("a", wire(2), 0.0)
    assert actions is not None
    assert sends(actions) == [("a", wire(3), 1)]
    (fetch,) = fetches(actions)
    assert fetch == Fetch(after=3, limit=2, generation=1, max_bytes=1 << 20)
    state.loaded(rows(4), fetch, 0.0)
    assert sends(state.ack("a", wire(3), 0.0)) == [("a", wire(4), 1)]


def test_a_take_over_after_everything_was_acked_does_not_fetch_forever() -> None:
    # Found by the delivery property test: the newest committed row was acked before
    # the take-over, so no page could reach it, and every empty page asked again
    # (in the hub, store reads back to back until the tenant's next webhook).
    state = connected()
    state.committed(rows(1)[0], 0.0)
    state.ack("a", wire(1), 0.0)
    (fetch,) = fetches(state.connect("b", 1.0))
    assert state.loaded([], fetch, 1.0) == []


def test_a_row_expired_before_it_was_loaded_does_not_make_fetches_spin() -> None:
    state = connected(window=1)
    for seq in (1, 2, 3, 4):  # 1 sent, 2 and 3 ready, 4 left in the store
        state.committed(rows(seq)[0], 0.0)
    state.expired([4], 0.0)  # the store expires it before any Fetch reads it
    state.ack("a", wire(1), 0.0)
    (fetch,) = fetches(state.ack("a", wire(2), 0.0) or [])
    assert state.loaded([], fetch, 0.0) == []


def test_a_commit_seen_during_a_fetch_is_fetched_again_not_lost() -> None:
    state = TenantDelivery("t", 8)
    (fetch,) = fetches(state.connect("a", 0.0))
    state.committed(rows(5)[0], 0.0)  # committed after the fetch read the store
    actions = state.loaded(rows(1, 2), fetch, 0.0)
    assert fetches(actions) == [Fetch(after=2, limit=16, generation=1, max_bytes=4 << 20)]


def test_large_webhooks_shrink_the_window_to_its_bytes_but_one_always_goes() -> None:
    state = connected(window=10, window_bytes=250)
    actions: list[Action] = []
    for row in rows(1, 2, 3, 4, size=100):
        actions += state.committed(row, 0.0)
    assert [sent for _, sent, _ in sends(actions)] == [wire(1), wire(2)]
    assert state.in_flight == 2  # 200 bytes: a third would take 300 past 250, so it waits
    huge = connected(window=10, window_bytes=10)
    assert sends(huge.committed(rows(1, size=100)[0], 0.0)) == [("a", wire(1), 1)]
    assert sends(huge.committed(rows(2, size=100)[0], 0.0)) == []


def test_bytes_in_flight_never_pass_window_bytes_unless_one_goes_alone() -> None:
    # Found by the delivery property test: 41 bytes in flight, then a 150-byte
    # webhook was sent (191 > window_bytes 120), because only the bytes already
    # in flight were compared with the limit.
    state = connected(window=4, window_bytes=120)
    first = state.committed(rows(1, size=40)[0], 0.0)
    assert sends(first) == [("a", wire(1), 1)]
    assert sends(state.committed(rows(2, size=150)[0], 0.0)) == []  # would be 190 bytes
    assert sends(state.ack("a", wire(1), 0.0)) == [("a", wire(2), 1)]  # alone: it goes


def test_memory_waiting_to_be_sent_is_bounded_in_bytes() -> None:
    state = connected(window=1, window_bytes=250)
    state.committed(rows(1, size=100)[0], 0.0)  # in flight
    state.committed(rows(2, size=100)[0], 0.0)  # ready
    state.committed(rows(3, size=100)[0], 0.0)  # ready: 200 bytes
    state.committed(rows(4, size=100)[0], 0.0)  # 300 would pass 250: left in the store
    actions: list[Action] = []
    for seq in (1, 2):
        got = state.ack("a", wire(seq), 0.0)
        assert got is not None
        actions += got
    assert fetches(actions) == [Fetch(after=3, limit=2, generation=1, max_bytes=250)]


def test_unacked_webhooks_are_redelivered_with_attempt_raised_after_reconnect() -> None:
    state = connected()
    state.committed(rows(1)[0], 0.0)
    state.disconnect("a", 1.0)
    (fetch,) = fetches(state.connect("b", 2.0))
    # The store counted the first attempt (mark_sent), so the row comes back with attempts=1.
    actions = state.loaded(rows(1, attempts=1), fetch, 2.0)
    assert sends(actions) == [("b", wire(1), 2)]


def test_the_newest_connection_is_active_and_the_older_stands_by() -> None:
    state = connected()
    actions = state.connect("b", 1.0)
    assert state.active == "b"
    (fetch,) = fetches(actions)
    assert sends(state.loaded(rows(1), fetch, 1.0)) == [("b", wire(1), 1)]


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
    assert state.loaded(rows(1), old, 0.0) == []


def test_a_nacked_webhook_waits_for_its_backoff() -> None:
    state = connected(backoff=1.0)
    state.committed(rows(1)[0], 0.0)
    assert sends(state.nack("a", wire(1), 10.0)) == []
    assert state.next_due() == 11.0
    assert sends(state.tick(10.5)) == []
    assert sends(state.tick(11.0)) == [("a", wire(1), 2)]


def test_backoff_doubles_with_each_attempt_up_to_the_cap() -> None:
    state = connected(backoff=1.0)
    state.committed(rows(1, attempts=9)[0], 0.0)  # this send is attempt 10
    state.nack("a", wire(1), 0.0)
    assert state.next_due() == 60.0


def test_acks_and_nacks_for_unknown_ids_are_ignored() -> None:
    state = connected()
    assert state.ack("a", wire(99), 0.0) is None
    assert state.nack("a", wire(99), 0.0) is None


def test_an_ack_for_a_webhook_not_yet_sent_is_ignored() -> None:
    state = connected(window=1)
    state.committed(rows(1)[0], 0.0)  # sent
    state.committed(rows(2)[0], 0.0)  # waiting for the window
    # A bridge acking ahead of delivery must not make webhook 2 vanish.
    assert state.ack("a", wire(2), 0.0) is None
    actions = state.ack("a", wire(1), 0.0)
    assert sends(actions) == [("a", wire(2), 1)]


def test_an_ack_counts_only_on_the_connection_the_webhook_was_sent_on() -> None:
    state = connected()
    caught_up(state, state.connect("b", 0.0))  # "a" stands by; "b" is active
    state.committed(rows(1)[0], 0.0)  # sent on "b" only
    assert state.ack("a", wire(1), 0.0) is None
    assert state.ack("b", wire(1), 0.0) is not None


def test_an_ack_from_a_superseded_connection_still_counts() -> None:
    state = connected()
    state.committed(rows(1)[0], 0.0)  # sent on "a"
    (fetch,) = fetches(state.connect("b", 1.0))
    state.loaded(rows(1, attempts=1), fetch, 1.0)  # sent again on "b"
    actions = state.ack("a", wire(1), 1.0)  # the bridge behind "a" has it
    assert actions is not None
    assert actions[0] == StoreAck(1)
    assert state.in_flight == 0


def test_ids_remembered_per_connection_are_bounded() -> None:
    state = connected(window=1)
    for seq in range(1, SENT_MEMORY + 3):
        state.committed(rows(seq)[0], 0.0)
        state.nack("a", wire(seq), 0.0)  # back to the retry heap, still remembered
        state.expired([seq], 0.0)
    assert state.ack("a", wire(1), 0.0) is None  # forgotten: the oldest went first


def test_an_id_in_flight_is_never_forgotten() -> None:
    # Found by the delivery property test: webhook 1 stays in flight while the
    # bridge nacks every webhook in the other slot; each nack sends one more id,
    # and once the remembered ids passed SENT_MEMORY windows the oldest, 1, was
    # forgotten although still in flight. Its ack was then ignored and it held a
    # place in the window until the bridge reconnected.
    state = connected(window=2, backoff=100.0)
    state.committed(rows(1)[0], 0.0)
    (other,) = sends(state.committed(rows(2)[0], 0.0))
    for seq in range(3, 2 * SENT_MEMORY + 4):
        state.committed(rows(seq)[0], 0.0)  # the store has the next webhook ...
        actions = state.nack("a", other[1], 0.0)  # ... and it takes the nacked one's slot
        assert actions is not None
        for fetch in fetches(actions):
            actions = state.loaded(rows(seq), fetch, 0.0)
        (other,) = sends(actions)
        assert other[1] == wire(seq)
    actions = state.ack("a", wire(1), 0.0)
    assert actions is not None
    assert actions[0] == StoreAck(1)


def test_an_ack_for_a_webhook_waiting_to_be_retried_removes_it() -> None:
    state = connected()
    state.committed(rows(1)[0], 0.0)
    state.nack("a", wire(1), 0.0)
    actions = state.ack("a", wire(1), 0.0)
    assert actions is not None
    assert actions[0] == StoreAck(1)
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
