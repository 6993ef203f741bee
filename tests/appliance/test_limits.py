from __future__ import annotations

import pytest

from appliance.limits import ConnectionCounter, KeyedBuckets, TokenBucket, address_key, retry_after


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket.full(burst=3, interval=2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(0.0) == pytest.approx(2.0)
    assert not bucket.take(1.9)
    assert bucket.take(2.0)
    assert not bucket.take(2.0)


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket.full(burst=2, interval=1.0, now=0.0)
    assert bucket.take(0.0)
    assert bucket.take(1000.0)
    assert bucket.take(1000.0)
    assert not bucket.take(1000.0)


def test_a_bucket_says_when_it_is_full_again() -> None:
    bucket = TokenBucket.full(burst=3, interval=2.0, now=10.0)
    assert bucket.full_at(10.0) == 10.0
    bucket.take(10.0)
    bucket.take(10.0)
    assert bucket.full_at(10.0) == pytest.approx(14.0)
    assert bucket.full_at(11.0) == pytest.approx(14.0)  # refilling does not move it
    assert bucket.full_at(20.0) == 20.0


def test_keyed_buckets_limit_each_key_alone() -> None:
    buckets = KeyedBuckets(burst=2, interval=10.0)
    assert buckets.take("a", 0.0)
    assert buckets.take("a", 0.0)
    assert not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)
    assert buckets.blocked_for("a", 0.0) == pytest.approx(10.0)
    assert buckets.blocked_for("b", 0.0) == 0.0


def test_keyed_buckets_forget_the_least_recently_used_key_past_their_size() -> None:
    buckets = KeyedBuckets(burst=1, interval=100.0, max_keys=2)
    buckets.take("a", 0.0)
    buckets.take("b", 0.0)
    buckets.take("c", 0.0)  # "a" is forgotten: an attacker cycling keys only forgives
    assert len(buckets) == 2
    assert buckets.blocked_for("a", 0.0) == 0.0
    assert buckets.blocked_for("c", 0.0) > 0


def test_keyed_buckets_drop_keys_that_refilled() -> None:
    buckets = KeyedBuckets(burst=1, interval=1.0)
    buckets.take("a", 0.0)
    assert buckets.blocked_for("a", 5.0) == 0.0
    assert len(buckets) == 0


def test_reconfigured_buckets_apply_to_existing_keys() -> None:
    buckets = KeyedBuckets(burst=10, interval=1.0)
    buckets.take("a", 0.0)
    buckets.configure(burst=1, interval=60.0)
    assert buckets.take("a", 0.0)  # nine tokens left, capped to the new burst of one
    assert not buckets.take("a", 0.0)
    assert buckets.blocked_for("a", 0.0) == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (59.5, 60)]
)
def test_retry_after_is_whole_seconds_and_at_least_one(seconds: float, header: int) -> None:
    assert retry_after(seconds) == header


def test_connections_are_capped_per_address_and_in_all() -> None:
    counter = ConnectionCounter(total=3, per_address=2)
    assert counter.admit("a") is None
    assert counter.admit("a") is None
    assert counter.admit("a") == "per_address"
    assert counter.admit("b") is None
    assert counter.admit("c") == "total"
    counter.release("a")
    assert counter.admit("c") is None
    assert counter.open == 3
    assert counter.from_address("a") == 1


def test_a_balancers_connection_moves_to_its_client_within_the_clients_cap() -> None:
    counter = ConnectionCounter(total=10, per_address=2)
    for _ in range(3):
        assert counter.admit("balancer", per_address=False) is None
    assert counter.move("balancer", "client") is None
    assert counter.move("balancer", "client") is None
    assert counter.move("balancer", "client") == "per_address"
    # Refused: still the balancer's, given back under its key.
    assert (counter.from_address("balancer"), counter.from_address("client")) == (1, 2)
    assert counter.open == 3
    assert counter.move("balancer", "proxy", per_address=False) is None
    counter.release("proxy")
    counter.release("client")
    assert (counter.open, counter.from_address("client")) == (1, 1)


def test_releasing_more_than_was_admitted_never_goes_negative() -> None:
    counter = ConnectionCounter(total=1, per_address=1)
    counter.release("a")
    assert counter.open == 0
    assert counter.admit("a") is None


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("unix", "unix"),
    ],
)
def test_ipv6_clients_are_limited_per_64(host: str, key: str) -> None:
    assert address_key(host) == key
