"""The admin token and console sessions in a real ``console.db`` (appliance/console/sessions.py)."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest

from appliance.console.sessions import (
    ADMIN_TOKEN_PREFIX,
    MAX_SESSIONS,
    SESSION_SECONDS,
    ConsoleDB,
    new_admin_token,
)
from appliance.tenants import hash_token

NOW = 1_800_000_000_000


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
