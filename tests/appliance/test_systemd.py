"""appliance/systemd.py: socket activation's variables, sd_notify datagrams, the watchdog."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.systemd import Notifier, listen_fds, watchdog_interval

PID = 4242


def test_named_sockets_start_at_fd_3() -> None:
    env = {"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:admin"}
    assert listen_fds(env, PID) == {"public": 3, "admin": 4}


def test_sockets_meant_for_another_process_are_not_taken() -> None:
    env = {"LISTEN_PID": str(PID + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:admin"}
    assert listen_fds(env, PID) == {}


def test_our_own_pid_is_the_default() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "public"}
    assert listen_fds(env) == {"public": 3}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LISTEN_FDS": "2"},
        {"LISTEN_PID": str(PID)},
        {"LISTEN_PID": "x", "LISTEN_FDS": "1"},
        {"LISTEN_PID": str(PID), "LISTEN_FDS": "two"},
        {"LISTEN_PID": str(PID), "LISTEN_FDS": "0"},
        {"LISTEN_PID": str(PID), "LISTEN_FDS": "-3"},
    ],
)
def test_no_or_bad_variables_mean_no_inherited_sockets(env: dict[str, str]) -> None:
    assert listen_fds(env, PID) == {}


def test_unnamed_sockets_are_unknown_and_the_first_of_a_name_wins() -> None:
    assert listen_fds({"LISTEN_PID": str(PID), "LISTEN_FDS": "2"}, PID) == {"unknown": 3}
    env = {"LISTEN_PID": str(PID), "LISTEN_FDS": "3", "LISTEN_FDNAMES": "public::public"}
    assert listen_fds(env, PID) == {"public": 3, "unknown": 4}


def test_watchdog_interval_in_seconds_for_us_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}, PID) == 20.0
    env = {"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(PID)}
    assert watchdog_interval(env, PID) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, PID) is None
    assert watchdog_interval({}, PID) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, PID) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, PID) is None


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_each_state_is_one_datagram(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving")
    assert received(sock) == ["READY=1", "STATUS=serving"]
    assert notifier.reloading()
    reloading = received(sock)
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].split("=")[1]) > 0
    assert notifier.stopping()
    assert received(sock) == ["STOPPING=1"]
    assert notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert notifier.status("two\nlines")
    assert received(sock) == ["STATUS=two lines"]


def test_abstract_namespace_sockets_are_reached() -> None:
    name = f"linerelay-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert received(sock) == ["READY=1"]


def test_without_a_manager_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    # A manager that went away: reported, never raised.
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready()
