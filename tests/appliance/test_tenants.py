"""Tenants: the registry the CLI changes and the directory the relay serves from.

The ``backend`` fixture is parametrised by storage: ``STATE/tenants.db``, and
Redis on a real ``redis-server`` (tests/support/redis.py), pass the same tests
of tenants' behaviour (rotations and their graces included). Tests of what
only one storage has (the file's mode and migrations, the pid file, Redis'
documents and its miss checks) build that storage's classes themselves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.errors import TenantError
from appliance.signature import sign, verify
from appliance.state import StateDir
from appliance.tenant_backend import Registry
from appliance.tenants import (
    SQLiteTenantDirectory,
    TenantDirectory,
    TenantRegistry,
    hash_token,
    hold_pid_file,
    notify_relay,
    validate_id,
)
from appliance.tenants_redis import RedisTenantDirectory, RedisTenantRegistry
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (a fixture)


class Clock:
    """Unix milliseconds that a test moves by hand."""

    def __init__(self, now: int = 1_800_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass
class Backend:
    """One storage of tenants under test: opens registries and directories on it
    (closed after the test) and shows what it holds."""

    name: str
    open_registry: Callable[[Clock | None], Registry]
    open_directory: Callable[[Clock | None], TenantDirectory]
    #: Every stored tenant, comparable: to see that nothing changed.
    state: Callable[[], object]
    #: Every byte stored: to look for a secret or a token in it.
    raw: Callable[[], bytes]
    opened: list[Registry | TenantDirectory] = field(default_factory=list)

    def registry(self, clock: Clock | None = None) -> Registry:
        opened = self.open_registry(clock)
        self.opened.append(opened)
        return opened

    def directory(self, clock: Clock | None = None) -> TenantDirectory:
        opened = self.open_directory(clock)
        self.opened.append(opened)
        return opened

    def stores_digest_of(self, token: str) -> bool:
        """Whether the token's SHA-256 is stored (raw in SQLite, hex in Redis)."""
        digest = hash_token(token)
        return digest in self.raw() or digest.hex().encode() in self.raw()


def sqlite_backend(path: Path) -> Backend:
    def raw() -> bytes:
        wal = path.parent / (path.name + "-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    def state() -> object:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT * FROM tenants ORDER BY id").fetchall()
        finally:
            db.close()

    return Backend(
        "sqlite",
        lambda clock: TenantRegistry(path, clock),
        lambda clock: SQLiteTenantDirectory(path, clock),
        state,
        raw,
    )


def redis_backend(server: RedisServer, prefix: str) -> Backend:
    def state() -> object:
        client = server.client()
        try:
            return (
                client.hgetall(prefix + "tenants"),
                client.hgetall(prefix + "tokens"),
                client.get(prefix + "tenants:version"),
            )
        finally:
            client.close()

    def raw() -> bytes:
        docs, tokens, _ = state()  # type: ignore[misc]
        return b"".join(k + v for k, v in sorted({**docs, **tokens}.items()))

    return Backend(
        "redis",
        lambda clock: RedisTenantRegistry(server.url, prefix, clock),
        # Every miss checks Redis: the tests look right after a change.
        lambda clock: RedisTenantDirectory(server.url, prefix, clock, miss_check_interval=0),
        state,
        raw,
    )


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        # A key prefix of its own: this test sees nothing of the others'.
        made = redis_backend(server, f"test-{uuid.uuid4().hex[:12]}:")
    else:
        made = sqlite_backend(tmp_path / "tenants.db")
    yield made
    for opened in made.opened:
        opened.close()


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


def test_tokens_are_stored_only_hashed(backend: Backend) -> None:
    token = backend.registry().add("a", "secret")
    assert token.encode() not in backend.raw()
    assert backend.stores_digest_of(token)


def test_a_token_authenticates_its_tenant_only(backend: Backend) -> None:
    registry = backend.registry()
    token_a = registry.add("a", "sa")
    registry.add("b", "sb")
    directory = backend.directory()
    tenant = directory.authenticate(token_a)
    assert tenant is not None
    assert tenant.id == "a"
    assert tenant.secret == b"sa"
    assert directory.authenticate("lrb_wrong") is None
    assert directory.authenticate(None) is None
    assert directory.authenticate("") is None


def test_a_tenant_added_later_is_found_at_once(backend: Backend) -> None:
    directory = backend.directory()
    assert directory.get("late") is None
    backend.registry().add("late", "s")
    found = directory.get("late")
    assert found is not None
    assert found.secret == b"s"


def test_rotation_retires_the_old_token_and_is_reported(backend: Backend) -> None:
    registry = backend.registry()
    old = registry.add("a", "s")
    directory = backend.directory()
    new, _ = registry.rotate("a")
    assert directory.authenticate(new) is not None  # a miss re-reads the storage
    assert directory.authenticate(old) is None
    # A rotation, not a new tenant: its queue stays (the incarnation is kept whole).
    assert directory.take_changes() == ({}, {"a"})
    assert directory.take_changes() == ({}, set())


def test_removal_is_reported(backend: Backend) -> None:
    registry = backend.registry()
    registry.add("a", "s")
    directory = backend.directory()
    registry.remove("a")
    assert directory.refresh()
    assert directory.get("a") is None
    assert directory.take_changes() == ({"a": None}, set())


def test_hits_are_served_from_memory_until_a_refresh(backend: Backend) -> None:
    registry = backend.registry()
    registry.add("a", "s")
    directory = backend.directory()
    registry.remove("a")
    assert directory.get("a") is not None  # what the relay's SIGUSR1 or poll corrects
    assert directory.refresh()
    assert directory.get("a") is None
    assert not directory.refresh()  # nothing changed since


def test_a_tenant_removed_and_added_again_is_a_removal_not_a_rotation(backend: Backend) -> None:
    registry = backend.registry()
    registry.add("a", "old-secret")
    directory = backend.directory()
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
def test_bad_secrets_are_refused_and_nothing_is_written(backend: Backend, secret: str) -> None:
    registry = backend.registry()
    with pytest.raises(TenantError):
        registry.add("a", secret)
    assert registry.list() == []


def test_secret_whitespace_from_a_file_is_trimmed(backend: Backend) -> None:
    backend.registry().add("a", "s3cret\n")
    tenant = backend.directory().get("a")
    assert tenant is not None
    assert tenant.secret == b"s3cret"


def test_duplicates_and_unknown_tenants_are_errors(backend: Backend) -> None:
    registry = backend.registry()
    registry.add("a", "s")
    with pytest.raises(TenantError, match="already exists"):
        registry.add("a", "s2")
    with pytest.raises(TenantError, match="no tenant"):
        registry.remove("zzz")
    with pytest.raises(TenantError, match="no tenant"):
        registry.rotate("zzz")


def test_secrets_stay_out_of_repr(backend: Backend) -> None:
    backend.registry().add("a", "topsecret")
    assert "topsecret" not in repr(backend.directory().get("a"))


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


def test_a_given_token_is_stored_hashed_and_authenticates(backend: Backend) -> None:
    token = "given-" + "t" * 30
    registry = backend.registry()
    assert registry.add("shop-1", "secret", token=token) == token
    with pytest.raises(TenantError, match="shorter than 32"):
        registry.add("shop-2", "secret", token="t" * 31)
    with pytest.raises(TenantError, match="token is in use"):
        registry.add("shop-3", "secret", token=token)
    assert [t.id for t in registry.list()] == ["shop-1"]
    assert token.encode() not in backend.raw()
    found = backend.directory().authenticate(token)
    assert found is not None
    assert found.token_hash == hash_token(token)


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
    directory = SQLiteTenantDirectory(path)
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


def test_with_a_grace_the_old_token_works_until_it_ends_and_the_new_one_at_once(
    backend: Backend,
) -> None:
    clock = Clock()
    registry = backend.registry(clock)
    old = registry.add("a", "s")
    directory = backend.directory(clock)
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


def test_the_end_of_a_grace_is_reported_as_a_token_change_once(backend: Backend) -> None:
    clock = Clock()
    registry = backend.registry(clock)
    old = registry.add("a", "s")
    directory = backend.directory(clock)
    new, until = registry.rotate("a", grace=5)
    directory.refresh()
    # The rotation itself: bridges are checked, and the old token still passes.
    assert directory.take_changes() == ({}, {"a"})
    assert directory.accepts("a", hash_token(old))
    clock.now = until
    # Nothing changed in storage: the relay's poll notices the end of the grace by the clock.
    assert not directory.refresh()
    assert directory.take_changes() == ({}, {"a"})
    assert not directory.accepts("a", hash_token(old))
    assert directory.accepts("a", hash_token(new))
    assert directory.token_grace_until("a") == 0
    assert directory.take_changes() == ({}, set())


def test_every_directory_notices_the_end_of_a_grace_by_itself(backend: Backend) -> None:
    # Two relays (two nodes, on Redis) loaded the rotation; nobody tells them it ended.
    clock = Clock()
    registry = backend.registry(clock)
    old = registry.add("a", "s")
    registry.rotate("a", grace=5)
    first, second = backend.directory(clock), backend.directory(clock)
    clock.now += 5_000
    for directory in (first, second):
        assert not directory.refresh()
        assert directory.take_changes() == ({}, {"a"})
        assert not directory.accepts("a", hash_token(old))


def test_without_a_grace_the_old_token_stops_at_once(backend: Backend) -> None:
    registry = backend.registry()
    old = registry.add("a", "s")
    directory = backend.directory()
    new, until = registry.rotate("a", grace=0)
    assert until == 0
    directory.refresh()
    assert directory.authenticate(old) is None
    assert not directory.accepts("a", hash_token(old))
    assert directory.accepts("a", hash_token(new))


def test_a_second_rotation_ends_the_first_ones_grace(backend: Backend) -> None:
    clock = Clock()
    registry = backend.registry(clock)
    first = registry.add("a", "s")
    second, _ = registry.rotate("a", grace=600)
    third, _ = registry.rotate("a", grace=600)
    directory = backend.directory(clock)
    assert directory.authenticate(first) is None
    assert directory.authenticate(second) is not None
    assert directory.authenticate(third) is not None


def test_a_second_secret_rotation_ends_the_first_ones_grace(backend: Backend) -> None:
    registry = backend.registry()
    registry.add("a", "first")
    registry.rotate_secret("a", "second", grace=600)
    registry.rotate_secret("a", "third", grace=600)
    tenant = backend.directory().get("a")
    assert tenant is not None
    body = b"{}"
    assert verify(tenant.secret, body, sign(b"third", body))
    assert tenant.verifies_with_previous_secret(body, sign(b"second", body))
    assert not tenant.verifies_with_previous_secret(body, sign(b"first", body))


@pytest.mark.parametrize("grace", [-1, -0.001, float("nan"), float("inf"), 7 * 86_400 + 1])
def test_a_bad_grace_is_refused_and_nothing_changes(backend: Backend, grace: float) -> None:
    registry = backend.registry()
    token = registry.add("a", "s")
    before = backend.state()
    with pytest.raises(TenantError, match="grace"):
        registry.rotate("a", grace=grace)
    with pytest.raises(TenantError, match="grace"):
        registry.rotate_secret("a", "s2", grace=grace)
    assert backend.state() == before
    assert backend.directory().authenticate(token) is not None


def test_list_shows_when_graces_end_and_forgets_them_after(backend: Backend) -> None:
    clock = Clock()
    registry = backend.registry(clock)
    registry.add("a", "s")
    registry.add("b", "s")
    _, token_until = registry.rotate("a", grace=30)
    secret_until = registry.rotate_secret("a", "s2", grace=90)
    a, b = registry.list()
    assert (a.token_grace_until, a.secret_grace_until) == (token_until, secret_until)
    assert (b.token_grace_until, b.secret_grace_until) == (0, 0)
    assert (a.rotated_at, b.rotated_at) == (clock.now, clock.now)
    clock.now = token_until
    (a, _) = registry.list()
    assert (a.token_grace_until, a.secret_grace_until) == (0, secret_until)


def test_a_new_secret_verifies_at_once_and_the_old_one_only_in_its_grace(
    backend: Backend,
) -> None:
    registry = backend.registry()
    registry.add("a", "old-secret")
    body = b'{"destination":"U1","events":[]}'
    old_signature = sign(b"old-secret", body)
    new_signature = sign(b"new-secret", body)
    registry.rotate_secret("a", "new-secret", grace=60)
    tenant = backend.directory().get("a")
    assert tenant is not None
    assert verify(tenant.secret, body, new_signature)
    assert not verify(tenant.secret, body, old_signature)
    assert tenant.verifies_with_previous_secret(body, old_signature)
    assert not tenant.verifies_with_previous_secret(body, sign(b"another", body))
    # Over: the grace's end is judged by the clock at each check.
    ended = dataclasses.replace(tenant, previous_secret_until=int(time.time() * 1000) - 1)
    assert not ended.verifies_with_previous_secret(body, old_signature)


def test_a_secret_rotation_without_a_grace_keeps_no_old_secret(backend: Backend) -> None:
    registry = backend.registry()
    registry.add("a", "old-secret")
    assert registry.rotate_secret("a", "new-secret") == 0
    tenant = backend.directory().get("a")
    assert tenant is not None
    assert tenant.previous_secret is None
    body = b"{}"
    assert not tenant.verifies_with_previous_secret(body, sign(b"old-secret", body))
    assert b"new-secret" in backend.raw()


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
    backend: Backend, tenant: str, secret: str, message: str
) -> None:
    registry = backend.registry()
    registry.add("a", "s")
    before = backend.state()
    with pytest.raises(TenantError, match=message):
        registry.rotate_secret(tenant, secret, grace=60)
    assert backend.state() == before


def test_previous_credentials_stay_out_of_repr(backend: Backend) -> None:
    registry = backend.registry()
    registry.add("a", "first-secret")
    registry.rotate("a", grace=60)
    registry.rotate_secret("a", "second-secret", grace=60)
    text = repr(backend.directory().get("a"))
    assert "first-secret" not in text
    assert "second-secret" not in text


def test_rotations_racing_from_two_clis_are_each_applied_none_lost(backend: Backend) -> None:
    # One CLI rotates the secret, another the token, at the same time: each change
    # is made on top of the other's, never on a stale copy that undoes it. The
    # secret goes back and forth between two: had a token rotation put the one
    # replaced back, the next secret rotation would be refused as "the one in use".
    registry = backend.registry()
    registry.add("a", "secret-0")
    rounds = 40
    tokens: list[str] = []
    errors: list[BaseException] = []

    def rotate_secrets(cli: Registry) -> None:
        for i in range(1, rounds + 1):
            cli.rotate_secret("a", f"secret-{i % 2}", grace=600)

    def rotate_tokens(cli: Registry) -> None:
        for _ in range(rounds):
            tokens.append(cli.rotate("a", grace=600)[0])

    def run(work: Callable[[Registry], None]) -> None:
        try:
            cli = backend.open_registry(None)  # a CLI of its own, in its thread
            try:
                work(cli)
            finally:
                cli.close()
        except BaseException as exc:  # the test's thread reports it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in (rotate_secrets, rotate_tokens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    tenant = backend.directory().get("a")
    assert tenant is not None
    assert (tenant.secret, tenant.previous_secret) == (b"secret-0", b"secret-1")
    assert (tenant.token_hash, tenant.previous_token_hash) == (
        hash_token(tokens[-1]),
        hash_token(tokens[-2]),
    )
    directory = backend.directory()
    assert [t for t in tokens if directory.authenticate(t)] == tokens[-2:]


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
    directory = SQLiteTenantDirectory(path)
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


# -- what only Redis has ------------------------------------------------------------


@dataclass
class RedisTenants:
    """The session's redis-server, and a key prefix of this test's own."""

    server: RedisServer
    prefix: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:12]}:")


@pytest.fixture
def on_redis(request: pytest.FixtureRequest) -> RedisTenants:
    return RedisTenants(request.getfixturevalue("redis_server"))


def test_a_redis_tenant_from_before_graces_is_read_and_rotated_with_one(
    on_redis: RedisTenants,
) -> None:
    server, prefix = on_redis.server, on_redis.prefix
    # What `tenant add` wrote on Redis before graces: no previous credentials, and
    # an incarnation of 63 bits that a double could not hold.
    token = "lrb_" + "y" * 40
    digest = hash_token(token).hex()
    doc = {
        "secret": "s",
        "token_hash": digest,
        "created_at": 1,
        "rotated_at": 1,
        "incarnation": 2**62 + 1,
    }
    client = server.client()
    try:
        client.hset(prefix + "tenants", "a", json.dumps(doc))
        client.hset(prefix + "tokens", digest, "a")
    finally:
        client.close()
    directory = RedisTenantDirectory(server.url, prefix, miss_check_interval=0)
    registry = RedisTenantRegistry(server.url, prefix)
    try:
        tenant = directory.authenticate(token)
        assert tenant is not None
        assert (tenant.incarnation, tenant.previous_token_hash, tenant.previous_secret) == (
            2**62 + 1,
            None,
            None,
        )
        new, until = registry.rotate("a", grace=60)
        assert until > 0
        assert directory.refresh()
        assert directory.authenticate(token) is not None
        assert directory.authenticate(new) is not None
        # The same tenant still: rotated, not removed and added again.
        assert directory.take_changes() == ({}, {"a"})
        rotated = directory.get("a")
        assert rotated is not None
        assert rotated.incarnation == 2**62 + 1
    finally:
        directory.close()
        registry.close()


def test_lookups_that_miss_check_redis_at_most_once_an_interval(
    on_redis: RedisTenants,
) -> None:
    server, prefix = on_redis.server, on_redis.prefix
    directory = RedisTenantDirectory(server.url, prefix, miss_check_interval=3600)
    registry = RedisTenantRegistry(server.url, prefix)
    try:
        assert directory.get("late") is None  # a miss that checked Redis
        registry.add("late", "s")
        # A flood of unknown ids costs one round trip an interval, not one a request.
        assert directory.get("late") is None
    finally:
        directory.close()
        registry.close()
