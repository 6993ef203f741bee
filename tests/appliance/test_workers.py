"""The supervisor's policy, :class:`appliance.workers.Supervisor`, fed events and times:
starts, readiness, restarts with backoff, hung workers, reloads and the stop."""

from __future__ import annotations

import signal

import pytest

from appliance.workers import (
    MAX_BACKOFF,
    STABLE_SECONDS,
    Announce,
    Exit,
    Kill,
    Start,
    Supervisor,
    parse_notification,
)

READY = {"READY": "1", "STATUS": "serving"}
PING = {"WATCHDOG": "1"}


def serving(count: int = 2, **kwargs: float) -> Supervisor:
    """A supervisor whose ``count`` workers (pids 101, 102, ...) started at 0 and are ready."""
    supervisor = Supervisor(count, **kwargs)
    assert supervisor.start() == [Start(index) for index in range(1, count + 1)]
    for index in range(1, count + 1):
        supervisor.started(index, 100 + index, 0.0)
    for index in range(1, count):
        assert supervisor.notified(100 + index, READY, 1.0) == []
    assert supervisor.notified(100 + count, READY, 1.0) == [Announce("ready")]
    return supervisor


def test_the_relay_is_ready_once_every_worker_is() -> None:
    supervisor = serving(3)
    assert supervisor.serving
    # A worker saying it again announces nothing more.
    assert supervisor.notified(101, READY, 2.0) == []


def test_messages_from_strangers_are_ignored() -> None:
    supervisor = Supervisor(1)
    supervisor.start()
    supervisor.started(1, 101, 0.0)
    assert supervisor.notified(999, READY, 1.0) == []
    assert supervisor.exited(999, 0, 1.0) == []
    assert not supervisor.serving


def test_a_worker_failing_before_the_relay_was_ready_fails_the_start() -> None:
    supervisor = Supervisor(2)
    supervisor.start()
    supervisor.started(1, 101, 0.0)
    supervisor.started(2, 102, 0.0)
    assert supervisor.notified(101, READY, 1.0) == []
    assert supervisor.exited(102, 1, 1.5) == [Announce("stopping"), Kill(101, signal.SIGTERM)]
    assert supervisor.deadline() is not None
    assert supervisor.exited(101, 0, 2.0) == [Exit(1)]


def test_a_worker_that_said_bad_input_makes_the_supervisor_say_it_too() -> None:
    supervisor = Supervisor(1)
    supervisor.start()
    supervisor.started(1, 101, 0.0)
    assert supervisor.exited(101, 2, 0.5) == [Announce("stopping"), Exit(2)]


@pytest.mark.parametrize("ran", [2.0, STABLE_SECONDS + 1])
def test_a_crash_restarts_the_worker_at_once(ran: float) -> None:
    supervisor = serving(watchdog=1000.0)
    assert supervisor.exited(101, -9, ran) == [Start(1)]
    supervisor.started(1, 201, ran)
    # The replacement's readiness is no news: the relay never stopped serving.
    assert supervisor.notified(201, READY, ran + 1) == []


def test_a_worker_that_keeps_failing_is_restarted_ever_more_slowly() -> None:
    supervisor = serving(watchdog=1000.0)
    now = 5.0
    assert supervisor.exited(101, 1, now) == [Start(1)]  # the first failure: at once
    delays = []
    for pid in range(201, 210):
        supervisor.started(1, pid, now)
        now += 1.0  # dies a second after each start
        assert supervisor.exited(pid, 1, now) == []
        deadline = supervisor.deadline()
        assert deadline is not None
        delays.append(deadline - now)
        assert supervisor.tick(deadline - 0.01) == []
        assert supervisor.tick(deadline) == [Start(1)]
        now = deadline
    assert delays == [1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    # A stable run forgives: the next failure restarts at once again.
    supervisor.started(1, 301, now)
    assert supervisor.exited(301, 1, now + STABLE_SECONDS) == [Start(1)]


def test_a_silent_worker_is_killed_as_hung_and_restarted() -> None:
    supervisor = serving(watchdog=20.0)
    assert supervisor.notified(101, PING, 15.0) == []
    assert supervisor.tick(20.5) == []
    assert supervisor.tick(21.0) == [Kill(102, signal.SIGKILL)]  # silent since 1.0
    assert supervisor.tick(22.0) == []  # killed once
    assert supervisor.tick(35.0) == [Kill(101, signal.SIGKILL)]
    assert supervisor.exited(102, -9, 36.0) == [Start(2)]


def test_a_worker_not_ready_in_time_is_killed() -> None:
    supervisor = Supervisor(1, start_timeout=60.0)
    supervisor.start()
    supervisor.started(1, 101, 0.0)
    assert supervisor.deadline() == 60.0
    assert supervisor.tick(59.0) == []
    assert supervisor.tick(60.0) == [Kill(101, signal.SIGKILL)]
    assert supervisor.exited(101, -9, 60.1) == [Announce("stopping"), Exit(1)]


def test_a_reload_is_passed_on_and_done_when_every_worker_is_ready_again() -> None:
    supervisor = serving()
    assert supervisor.signalled(signal.SIGHUP, 5.0) == [
        Announce("reloading"),
        Kill(101, signal.SIGHUP),
        Kill(102, signal.SIGHUP),
    ]
    assert supervisor.notified(101, {"RELOADING": "1"}, 5.1) == []
    assert supervisor.notified(101, READY, 5.2) == []
    assert supervisor.notified(102, READY, 5.3) == [Announce("ready")]


def test_a_reload_during_a_workers_start_reaches_it_once_it_is_ready() -> None:
    supervisor = serving(watchdog=1000.0)
    supervisor.exited(101, -9, 40.0)
    supervisor.started(1, 201, 40.0)  # starting: it ignores SIGHUP until it serves
    assert supervisor.signalled(signal.SIGHUP, 40.1) == [
        Announce("reloading"),
        Kill(102, signal.SIGHUP),
    ]
    assert supervisor.notified(102, READY, 40.2) == []
    assert supervisor.notified(201, READY, 40.5) == [Kill(201, signal.SIGHUP)]
    assert supervisor.notified(201, READY, 40.6) == [Announce("ready")]


def test_tenant_changes_are_passed_on_to_every_live_worker() -> None:
    supervisor = serving(3)
    supervisor.exited(102, 1, 2.0)  # restarting after a backoff
    assert supervisor.signalled(signal.SIGUSR1, 2.5) == [
        Kill(101, signal.SIGUSR1),
        Kill(103, signal.SIGUSR1),
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_stops_every_worker_then_the_supervisor(signum: int) -> None:
    supervisor = serving()
    supervisor.exited(101, 1, 2.0)  # due for a restart the stop cancels
    assert supervisor.signalled(signum, 2.5) == [Announce("stopping"), Kill(102, signal.SIGTERM)]
    assert supervisor.signalled(signal.SIGTERM, 2.6) == []
    assert supervisor.signalled(signal.SIGHUP, 2.7) == []
    assert supervisor.tick(3.5) == []
    assert supervisor.exited(102, 0, 4.0) == [Exit(0)]


def test_workers_that_do_not_stop_in_time_are_killed() -> None:
    supervisor = serving(stop_timeout=15.0)
    supervisor.signalled(signal.SIGTERM, 10.0)
    assert supervisor.deadline() == 25.0
    assert supervisor.tick(25.0) == [Kill(101, signal.SIGKILL), Kill(102, signal.SIGKILL)]
    assert supervisor.deadline() is None
    assert supervisor.tick(30.0) == []
    assert supervisor.exited(101, -9, 30.0) == []
    assert supervisor.exited(102, -9, 30.0) == [Exit(0)]


def test_the_next_deadline_is_the_soonest_watchdog_or_restart() -> None:
    supervisor = serving(watchdog=20.0)
    assert supervisor.deadline() == 21.0  # both last heard of at 1.0
    supervisor.notified(101, PING, 10.0)
    supervisor.notified(102, PING, 12.0)
    assert supervisor.deadline() == 30.0
    assert supervisor.exited(101, 1, 13.0) == [Start(1)]
    supervisor.started(1, 201, 13.0)
    assert supervisor.deadline() == 32.0  # worker 2's watchdog; worker 1 starts until 73
    supervisor.exited(201, 1, 14.0)  # failing again soon: a backoff
    assert supervisor.deadline() == 15.0


def test_notifications_are_key_value_lines() -> None:
    assert parse_notification(b"READY=1\nSTATUS=a=b c\nnoise\n") == {
        "READY": "1",
        "STATUS": "a=b c",
    }
    assert parse_notification(b"\xff=\xfe") == {"\ufffd": "\ufffd"}
