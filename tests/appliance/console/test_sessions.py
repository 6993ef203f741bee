"""The admin token and console sessions in a real ``console.db`` (appliance/console/sessions.py)."""

from __future__ import annotations

import sqlite3
import stat
import time
from contextlib import closing
from pathlib import Path

import pytest

from appliance.console import sessions
from appliance.console.sessions import (
    ADMIN_TOKEN_PREFIX,
    MAX_SESSIONS,
    SESSION_SECONDS,
    ConsoleDB,
    new_admin_token,
)
from appliance.tenants import hash_token

NOW = 1_800_000_000_000
#: Wall-clock seconds, as the wrong-token counts keep them.
T = 1_800_000_000.0
BURST, INTERVAL = 3, 6.0


@pytest.fixture
def db(tmp_path: Path) -> ConsoleDB:
    return ConsoleDB(tmp_path / "console.db")


def test_the_file_is_private(tmp_path: Path) -> None:
    ConsoleDB(tmp_path / "console.db").close()
    assert stat.S_IMODE((tmp_path / "console.db").stat().st_mode) == 0o600


def test_a_created_file_opens_at_once_while_another_process_writes(tmp_path: Path) -> None:
    # What `serve --workers` relies on: the supervisor creates the file, and a
    # worker opening it while another worker writes needs no lock.
    ConsoleDB(tmp_path / "console.db").close()
    writer = sqlite3.connect(tmp_path / "console.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM sessions")
    try:
        started = time.monotonic()
        ConsoleDB(tmp_path / "console.db").close()
        assert time.monotonic() - started < 1
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_admin_tokens_are_long_random_and_recognisable() -> None:
    a, b = new_admin_token(), new_admin_token()
    assert a != b
    assert a.startswith(ADMIN_TOKEN_PREFIX)
    assert len(a) >= len(ADMIN_TOKEN_PREFIX) + 43  # 256 bits, base64


def test_only_the_admin_tokens_digest_is_stored(db: ConsoleDB, tmp_path: Path) -> None:
    token = new_admin_token()
    db.set_admin_token(token, NOW)
    db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("console.db*"))
    assert token.encode() not in raw
    assert ConsoleDB(tmp_path / "console.db").admin_digest() == hash_token(token)


def test_no_admin_token_until_one_is_set(db: ConsoleDB) -> None:
    assert db.admin_digest() is None


def test_another_process_setting_the_token_is_seen_at_the_next_read(tmp_path: Path) -> None:
    relay = ConsoleDB(tmp_path / "console.db")
    assert relay.admin_digest() is None
    cli = ConsoleDB(tmp_path / "console.db")
    cli.set_admin_token("first-token", NOW)
    assert relay.admin_digest() == hash_token("first-token")
    cli.set_admin_token("second-token", NOW + 1)
    assert relay.admin_digest() == hash_token("second-token")
    assert cli.clear_admin_token()
    assert relay.admin_digest() is None


def test_a_session_is_found_by_its_cookie_value_only(db: ConsoleDB) -> None:
    value, session = db.open_session(hash_token("t"), NOW)
    found = db.session(value, NOW + 1)
    assert found == session
    assert db.session(value + "x", NOW + 1) is None
    assert db.session("", NOW + 1) is None


def test_the_cookie_value_is_not_stored(db: ConsoleDB, tmp_path: Path) -> None:
    value, _ = db.open_session(None, NOW)
    db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("console.db*"))
    assert value.encode() not in raw


def test_sessions_expire(db: ConsoleDB) -> None:
    value, _ = db.open_session(None, NOW)
    assert db.session(value, NOW + SESSION_SECONDS * 1000 - 1) is not None
    assert db.session(value, NOW + SESSION_SECONDS * 1000) is None


def test_each_session_has_its_own_csrf_token(db: ConsoleDB) -> None:
    _, a = db.open_session(None, NOW)
    _, b = db.open_session(None, NOW)
    assert a.csrf != b.csrf
    assert len(a.csrf) >= 43


def test_a_session_knows_the_token_it_logged_in_with(db: ConsoleDB) -> None:
    _, session = db.open_session(hash_token("one"), NOW)
    assert session.logged_in_with(hash_token("one"))
    assert not session.logged_in_with(hash_token("two"))
    assert not session.logged_in_with(None)
    _, anonymous = db.open_session(None, NOW)
    assert not anonymous.logged_in_with(hash_token("one"))


def test_a_new_admin_token_ends_every_session(db: ConsoleDB) -> None:
    db.set_admin_token("one", NOW)
    value, _ = db.open_session(hash_token("one"), NOW)
    db.set_admin_token("two", NOW + 1)
    assert db.session(value, NOW + 2) is None


def test_logout_ends_the_session_for_every_reader(tmp_path: Path) -> None:
    a, b = ConsoleDB(tmp_path / "console.db"), ConsoleDB(tmp_path / "console.db")
    value, session = a.open_session(None, NOW)
    assert b.session(value, NOW) is not None
    a.close_session(session)
    assert b.session(value, NOW) is None


def test_sessions_are_capped_oldest_first(db: ConsoleDB) -> None:
    first, _ = db.open_session(None, NOW)
    values = [db.open_session(None, NOW + i)[0] for i in range(1, MAX_SESSIONS + 1)]
    assert db.session(first, NOW + MAX_SESSIONS) is None
    assert db.session(values[0], NOW + MAX_SESSIONS) is not None
    assert db.session(values[-1], NOW + MAX_SESSIONS) is not None


def test_session_repr_shows_no_secret(db: ConsoleDB) -> None:
    _, session = db.open_session(hash_token("t"), NOW)
    assert session.csrf not in repr(session)
    assert repr(session.digest) not in repr(session)


# -- wrong admin tokens, counted per client address -------------------------------


def fail(db: ConsoleDB, client: str, now: float, times: int = 1) -> None:
    for _ in range(times):
        db.count_failure(client, now, BURST, INTERVAL)


def wait(db: ConsoleDB, client: str, now: float) -> float:
    return db.failure_wait(client, now, BURST, INTERVAL)


def failure_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """What another reader of the file sees."""
    with closing(sqlite3.connect(path)) as reader:
        return reader.execute(sql).fetchall()


def test_an_address_with_no_wrong_tokens_need_not_wait(db: ConsoleDB) -> None:
    assert wait(db, "192.0.2.1", T) == 0


def test_wrong_tokens_allow_the_burst_then_one_more_per_interval(db: ConsoleDB) -> None:
    fail(db, "192.0.2.1", T, BURST - 1)
    assert wait(db, "192.0.2.1", T) == 0
    fail(db, "192.0.2.1", T)
    assert wait(db, "192.0.2.1", T) == pytest.approx(INTERVAL)
    assert wait(db, "192.0.2.1", T + INTERVAL / 2) == pytest.approx(INTERVAL / 2)
    assert wait(db, "192.0.2.1", T + INTERVAL) == 0
    fail(db, "192.0.2.1", T + INTERVAL)  # the one token refilled, spent again
    assert wait(db, "192.0.2.1", T + INTERVAL) == pytest.approx(INTERVAL)


def test_wrong_tokens_are_counted_per_address(db: ConsoleDB) -> None:
    fail(db, "192.0.2.1", T, BURST)
    assert wait(db, "192.0.2.1", T) > 0
    assert wait(db, "192.0.2.2", T) == 0


def test_wrong_tokens_through_one_process_lock_out_through_another(tmp_path: Path) -> None:
    # Two ConsoleDBs on one file are two processes of `serve --workers`: together
    # they allow the burst once, not once each.
    a, b = ConsoleDB(tmp_path / "console.db"), ConsoleDB(tmp_path / "console.db")
    fail(a, "192.0.2.1", T, BURST - 1)
    fail(b, "192.0.2.1", T + 0.001)
    assert wait(a, "192.0.2.1", T + 0.002) > 0
    assert wait(b, "192.0.2.1", T + 0.002) > 0


def test_a_lockout_survives_a_restart(tmp_path: Path) -> None:
    before = ConsoleDB(tmp_path / "console.db")
    fail(before, "192.0.2.1", T, BURST)
    before.close()
    assert wait(ConsoleDB(tmp_path / "console.db"), "192.0.2.1", T + 1) > 0


def test_a_refilled_address_is_forgotten_at_the_next_wrong_token(
    db: ConsoleDB, tmp_path: Path
) -> None:
    fail(db, "192.0.2.1", T, BURST)
    fail(db, "192.0.2.2", T + BURST * INTERVAL)  # 192.0.2.1 is full again by then
    clients = failure_rows(tmp_path / "console.db", "SELECT client FROM admin_failures")
    assert clients == [("192.0.2.2",)]


def test_an_address_refilled_and_failing_again_starts_from_a_full_burst(db: ConsoleDB) -> None:
    fail(db, "192.0.2.1", T, BURST)
    later = T + BURST * INTERVAL + 100
    fail(db, "192.0.2.1", later, BURST - 1)
    assert wait(db, "192.0.2.1", later) == 0


def test_wrong_token_rows_are_bounded_forgiving_the_nearest_to_full_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions, "MAX_FAILURE_ROWS", 5)
    db = ConsoleDB(tmp_path / "console.db")
    fail(db, "192.0.2.0", T, BURST)  # locked out: full again last
    for i in range(1, 20):  # an attacker cycling addresses, one guess each
        fail(db, f"192.0.2.{i}", T + i * 0.01)
    assert failure_rows(tmp_path / "console.db", "SELECT count(*) FROM admin_failures") == [(5,)]
    assert wait(db, "192.0.2.0", T + 1) > 0
    assert wait(db, "192.0.2.19", T + 1) == 0  # one guess of three: still allowed
    assert wait(db, "192.0.2.1", T + 1) == 0  # forgotten: a full burst again


def test_the_lockout_check_is_one_indexed_read(db: ConsoleDB) -> None:
    fail(db, "192.0.2.1", T, BURST)
    statements: list[str] = []
    db._db.set_trace_callback(statements.append)
    try:
        assert wait(db, "192.0.2.1", T) > 0
    finally:
        db._db.set_trace_callback(None)
    assert len(statements) == 1
    plan = " ".join(row[3] for row in db._db.execute("EXPLAIN QUERY PLAN " + statements[0]))
    assert "SEARCH" in plan
    assert "PRIMARY KEY" in plan
