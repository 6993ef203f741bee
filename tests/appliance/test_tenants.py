from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from appliance.errors import TenantError
from appliance.signature import sign, verify
from appliance.state import StateDir
from appliance.tenants import (
    TenantDirectory,
    TenantRegistry,
    hash_token,
    hold_pid_file,
    notify_relay,
    validate_id,
)


@pytest.fixture
def paths(tmp_path: Path) -> Path:
    return tmp_path / "tenants.db"


@pytest.mark.parametrize("good", ["a", "shop-42", "0abc", "a" * 63])
def test_valid_tenant_ids(good: str) -> None:
    assert validate_id(good) == good


@pytest.mark.parametrize("bad", ["", "-a", "A", "a_b", "a" * 64, "a/b", "ä", "a\n"])
def test_invalid_tenant_ids_are_refused(bad: str) -> None:
    with pytest.raises(TenantError, match="invalid tenant id"):
        validate_id(bad)


def test_the_file_is_private(paths: Path) -> None:
    TenantRegistry(paths).add("a", "secret")
    assert stat.S_IMODE(paths.stat().st_mode) == 0o600


def test_tokens_are_stored_only_hashed(paths: Path) -> None:
    token = TenantRegistry(paths).add("a", "secret")
    raw = paths.read_bytes() + (paths.parent / "tenants.db-wal").read_bytes()
    assert token.encode() not in raw
    assert hash_token(token) in raw


def test_a_token_authenticates_its_tenant_only(paths: Path) -> None:
    registry = TenantRegistry(paths)
    token_a = registry.add("a", "sa")
    registry.add("b", "sb")
    directory = TenantDirectory(paths)
    tenant = directory.authenticate(token_a)
    assert tenant is not None
    assert tenant.id == "a"
    assert tenant.secret == b"sa"
    assert directory.authenticate("lrb_wrong") is None
    assert directory.authenticate(None) is None
    assert directory.authenticate("") is None


def test_a_tenant_added_later_is_found_at_once(paths: Path) -> None:
    directory = TenantDirectory(paths)
    assert directory.get("late") is None
    TenantRegistry(paths).add("late", "s")
    found = directory.get("late")
    assert found is not None
    assert found.secret == b"s"


def test_rotation_retires_the_old_token_and_is_reported(paths: Path) -> None:
    registry = TenantRegistry(paths)
    old = registry.add("a", "s")
    directory = TenantDirectory(paths)
    new, _ = registry.rotate("a")
    assert directory.authenticate(new) is not None  # a miss re-reads the file
    assert directory.authenticate(old) is None
    assert directory.take_changes() == ({}, {"a"})
    assert directory.take_changes() == ({}, set())


def test_removal_is_reported(paths: Path) -> None:
    registry = TenantRegistry(paths)
    registry.add("a", "s")
    directory = TenantDirectory(paths)
    registry.remove("a")
    assert directory.refresh()
    assert directory.get("a") is None
    assert directory.take_changes() == ({"a": None}, set())


def test_hits_are_served_from_memory_until_a_refresh(paths: Path) -> None:
    registry = TenantRegistry(paths)
    registry.add("a", "s")
    directory = TenantDirectory(paths)
    registry.remove("a")
    assert directory.get("a") is not None  # what the relay's SIGUSR1 or poll corrects
    assert directory.refresh()
    assert directory.get("a") is None
    assert not directory.refresh()  # nothing changed since


def test_a_tenant_removed_and_added_again_is_a_removal_not_a_rotation(paths: Path) -> None:
    registry = TenantRegistry(paths)
    registry.add("a", "old-secret")
    directory = TenantDirectory(paths)
    registry.remove("a")
    registry.add("a", "new-secret")
    directory.refresh()
    tenant = directory.get("a")
    assert tenant is not None
    assert tenant.secret == b"new-secret"
    removed, rotated = directory.take_changes()
    assert removed == {"a": tenant.created_at}
    assert rotated == set()


@pytest.mark.parametrize("secret", ["", "   \n", "has space", "ctl\x00char"])
def test_bad_secrets_are_refused_and_nothing_is_written(paths: Path, secret: str) -> None:
    registry = TenantRegistry(paths)
    with pytest.raises(TenantError):
        registry.add("a", secret)
    assert registry.list() == []


def test_secret_whitespace_from_a_file_is_trimmed(paths: Path) -> None:
    TenantRegistry(paths).add("a", "s3cret\n")
    tenant = TenantDirectory(paths).get("a")
    assert tenant is not None
    assert tenant.secret == b"s3cret"


def test_duplicates_and_unknown_tenants_are_errors(paths: Path) -> None:
    registry = TenantRegistry(paths)
    registry.add("a", "s")
    with pytest.raises(TenantError, match="already exists"):
        registry.add("a", "s2")
    with pytest.raises(TenantError, match="no tenant"):
        registry.remove("zzz")
    with pytest.raises(TenantError, match="no tenant"):
        registry.rotate("zzz")


def test_secrets_stay_out_of_repr(paths: Path) -> None:
    TenantRegistry(paths).add("a", "topsecret")
    assert "topsecret" not in repr(TenantDirectory(paths).get("a"))


def test_a_stale_pid_file_is_never_signalled(tmp_path: Path) -> None:
    # Our own pid, unlocked: what a relay killed with -9 leaves behind. If it were
    # signalled, SIGUSR1's default action would end this test run.
    state = StateDir(tmp_path)
    state.pid_file.write_text(f"{os.getpid()}\n")
    assert notify_relay(state) is False


def test_no_pid_file_means_no_relay_to_tell(tmp_path: Path) -> None:
    assert notify_relay(StateDir(tmp_path)) is False


def test_a_second_relay_on_one_state_dir_is_refused(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    fd = hold_pid_file(state)
    try:
        assert state.pid_file.read_text().strip() == str(os.getpid())
        with pytest.raises(TenantError, match="another relay is running"):
            hold_pid_file(state)
    finally:
        os.close(fd)
    os.close(hold_pid_file(state))  # free again once the first let go


def test_a_given_token_is_stored_hashed_and_authenticates(paths: Path) -> None:
    token = "given-" + "t" * 30
    registry = TenantRegistry(paths)
    try:
        assert registry.add("shop-1", "secret", token=token) == token
        with pytest.raises(TenantError, match="shorter than 32"):
            registry.add("shop-2", "secret", token="t" * 31)
        with pytest.raises(TenantError, match="token is in use"):
            registry.add("shop-3", "secret", token=token)
        assert [t.id for t in registry.list()] == ["shop-1"]
    finally:
        registry.close()
    assert token.encode() not in paths.read_bytes()
    directory = TenantDirectory(paths)
    try:
        found = directory.authenticate(token)
        assert found is not None
        assert found.token_hash == hash_token(token)
    finally:
        directory.close()


def test_a_tenants_file_from_before_incarnations_is_read_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE tenants (id TEXT PRIMARY KEY, secret BLOB NOT NULL, "
        "token_hash BLOB NOT NULL UNIQUE, created_at INTEGER NOT NULL, rotated_at INTEGER NOT NULL)"
    )
    old.execute("INSERT INTO tenants VALUES ('a', x'73', x'00', 1, 1)")
    old.commit()
    old.close()
    directory = TenantDirectory(path)
    try:
        tenant = directory.get("a")
        assert tenant is not None
        assert (tenant.secret, tenant.incarnation) == (b"s", 0)
    finally:
        directory.close()
    registry = TenantRegistry(path)
    try:
        registry.add("b", "secret-b")
        assert {t.id for t in registry.list()} == {"a", "b"}
    finally:
        registry.close()


# -- rotations with a grace -------------------------------------------------------


class Clock:
    """Unix milliseconds that a test moves by hand."""

    def __init__(self, now: int = 1_800_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_with_a_grace_the_old_token_works_until_it_ends_and_the_new_one_at_once(
    paths: Path,
) -> None:
    clock = Clock()
    registry = TenantRegistry(paths, clock)
    old = registry.add("a", "s")
    directory = TenantDirectory(paths, clock)
    new, until = registry.rotate("a", grace=60)
    assert until == clock.now + 60_000
    directory.refresh()
    assert directory.authenticate(new) is not None
    assert directory.authenticate(old) is not None
    assert directory.token_grace_until("a") == until
    clock.now = until - 1
    assert directory.authenticate(old) is not None
    clock.now = until
    assert directory.authenticate(old) is None
    assert directory.authenticate(new) is not None


def test_the_end_of_a_grace_is_reported_as_a_token_change_once(paths: Path) -> None:
    clock = Clock()
    registry = TenantRegistry(paths, clock)
    old = registry.add("a", "s")
    directory = TenantDirectory(paths, clock)
    new, until = registry.rotate("a", grace=5)
    directory.refresh()
    # The rotation itself: bridges are checked, and the old token still passes.
    assert directory.take_changes() == ({}, {"a"})
    assert directory.accepts("a", hash_token(old))
    clock.now = until
    # No file change: the relay's poll notices the end of the grace by the clock.
    assert not directory.refresh()
    assert directory.take_changes() == ({}, {"a"})
    assert not directory.accepts("a", hash_token(old))
    assert directory.accepts("a", hash_token(new))
    assert directory.token_grace_until("a") == 0
    assert directory.take_changes() == ({}, set())


def test_without_a_grace_the_old_token_stops_at_once(paths: Path) -> None:
    registry = TenantRegistry(paths)
    old = registry.add("a", "s")
    directory = TenantDirectory(paths)
    new, until = registry.rotate("a", grace=0)
    assert until == 0
    directory.refresh()
    assert directory.authenticate(old) is None
    assert not directory.accepts("a", hash_token(old))
    assert directory.accepts("a", hash_token(new))


def test_a_second_rotation_ends_the_first_ones_grace(paths: Path) -> None:
    clock = Clock()
    registry = TenantRegistry(paths, clock)
    first = registry.add("a", "s")
    second, _ = registry.rotate("a", grace=600)
    third, _ = registry.rotate("a", grace=600)
    directory = TenantDirectory(paths, clock)
    assert directory.authenticate(first) is None
    assert directory.authenticate(second) is not None
    assert directory.authenticate(third) is not None


@pytest.mark.parametrize("grace", [-1, -0.001, float("nan"), float("inf"), 7 * 86_400 + 1])
def test_a_bad_grace_is_refused_and_nothing_changes(paths: Path, grace: float) -> None:
    registry = TenantRegistry(paths)
    token = registry.add("a", "s")
    before = sqlite3.connect(paths).execute("SELECT * FROM tenants").fetchall()
    with pytest.raises(TenantError, match="grace"):
        registry.rotate("a", grace=grace)
    with pytest.raises(TenantError, match="grace"):
        registry.rotate_secret("a", "s2", grace=grace)
    assert sqlite3.connect(paths).execute("SELECT * FROM tenants").fetchall() == before
    assert TenantDirectory(paths).authenticate(token) is not None


def test_list_shows_when_graces_end_and_forgets_them_after(paths: Path) -> None:
    clock = Clock()
    registry = TenantRegistry(paths, clock)
    registry.add("a", "s")
    registry.add("b", "s")
    _, token_until = registry.rotate("a", grace=30)
    secret_until = registry.rotate_secret("a", "s2", grace=90)
    a, b = registry.list()
    assert (a.token_grace_until, a.secret_grace_until) == (token_until, secret_until)
    assert (b.token_grace_until, b.secret_grace_until) == (0, 0)
    clock.now = token_until
    (a, _) = registry.list()
    assert (a.token_grace_until, a.secret_grace_until) == (0, secret_until)


def test_a_new_secret_verifies_at_once_and_the_old_one_only_in_its_grace(paths: Path) -> None:
    registry = TenantRegistry(paths)
    registry.add("a", "old-secret")
    body = b'{"destination":"U1","events":[]}'
    old_signature = sign(b"old-secret", body)
    new_signature = sign(b"new-secret", body)
    registry.rotate_secret("a", "new-secret", grace=60)
    tenant = TenantDirectory(paths).get("a")
    assert tenant is not None
    assert verify(tenant.secret, body, new_signature)
    assert not verify(tenant.secret, body, old_signature)
    assert tenant.verifies_with_previous_secret(body, old_signature)
    assert not tenant.verifies_with_previous_secret(body, sign(b"another", body))
    # Over: the grace's end is judged by the clock at each check.
    ended = dataclasses.replace(tenant, previous_secret_until=int(time.time() * 1000) - 1)
    assert not ended.verifies_with_previous_secret(body, old_signature)


def test_a_secret_rotation_without_a_grace_keeps_no_old_secret(paths: Path) -> None:
    registry = TenantRegistry(paths)
    registry.add("a", "old-secret")
    assert registry.rotate_secret("a", "new-secret") == 0
    tenant = TenantDirectory(paths).get("a")
    assert tenant is not None
    assert tenant.previous_secret is None
    body = b"{}"
    assert not tenant.verifies_with_previous_secret(body, sign(b"old-secret", body))
    raw = paths.read_bytes() + (paths.parent / "tenants.db-wal").read_bytes()
    assert b"new-secret" in raw


@pytest.mark.parametrize(
    ("tenant", "secret", "message"),
    [
        ("zzz", "new", "no tenant"),
        ("a", "s", "is the one in use"),
        ("a", " \n", "empty"),
        ("a", "two words", "spaces"),
        ("Bad_Id", "new", "invalid tenant id"),
    ],
)
def test_bad_secret_rotations_are_refused_and_change_nothing(
    paths: Path, tenant: str, secret: str, message: str
) -> None:
    registry = TenantRegistry(paths)
    registry.add("a", "s")
    before = sqlite3.connect(paths).execute("SELECT * FROM tenants").fetchall()
    with pytest.raises(TenantError, match=message):
        registry.rotate_secret(tenant, secret, grace=60)
    assert sqlite3.connect(paths).execute("SELECT * FROM tenants").fetchall() == before


def test_previous_credentials_stay_out_of_repr(paths: Path) -> None:
    registry = TenantRegistry(paths)
    registry.add("a", "first-secret")
    registry.rotate("a", grace=60)
    registry.rotate_secret("a", "second-secret", grace=60)
    text = repr(TenantDirectory(paths).get("a"))
    assert "first-secret" not in text
    assert "second-secret" not in text


def test_a_tenants_file_from_before_graces_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE tenants (id TEXT PRIMARY KEY, secret BLOB NOT NULL, "
        "token_hash BLOB NOT NULL UNIQUE, created_at INTEGER NOT NULL, "
        "rotated_at INTEGER NOT NULL, incarnation INTEGER NOT NULL DEFAULT 0)"
    )
    token = "lrb_" + "x" * 40
    old.execute("INSERT INTO tenants VALUES ('a', x'73', ?, 1, 1, 7)", (hash_token(token),))
    old.commit()
    old.close()
    directory = TenantDirectory(path)
    tenant = directory.authenticate(token)
    assert tenant is not None
    assert (tenant.incarnation, tenant.previous_token_hash, tenant.previous_secret) == (
        7,
        None,
        None,
    )
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(tenants)")}
    assert {"previous_token_hash", "previous_secret_until"} <= columns
    registry = TenantRegistry(path)
    new, until = registry.rotate("a", grace=60)
    assert until > 0
    directory.refresh()
    assert directory.authenticate(token) is not None
    assert directory.authenticate(new) is not None
