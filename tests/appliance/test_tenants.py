from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from appliance.errors import TenantError
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
