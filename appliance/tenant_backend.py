"""Where the operator CLI finds tenants and their queues: the state dir, or Redis.

``linerelay tenant ... [--config FILE]`` reads the relay's config (the file,
then ``LINERELAY_*`` variables) to learn the store: with ``store = "sqlite"``
the tenants are ``STATE/tenants.db`` and the queues ``STATE/store.db``; with
``store = "redis"`` both are in Redis, shared by every node (PROTOCOL.md §6).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from appliance import config as config_module
from appliance.config import RelayConfig
from appliance.errors import StoreError, TenantError
from appliance.state import StateDir
from appliance.store import sqlite
from appliance.tenants import SQLiteTenantDirectory, TenantDirectory, TenantInfo, TenantRegistry


class Registry(Protocol):
    """What the CLI does to tenants (:class:`TenantRegistry` and its Redis twin)."""

    def add(self, tenant: str, secret: str, token: str | None = None) -> str: ...
    def rotate(self, tenant: str, grace: float = 0.0) -> tuple[str, int]: ...
    def rotate_secret(self, tenant: str, secret: str, grace: float = 0.0) -> int: ...
    def remove(self, tenant: str) -> None: ...
    def exists(self, tenant: str) -> bool: ...
    def list(self) -> list[TenantInfo]: ...
    def close(self) -> None: ...


def load_config(path: Path | None) -> RelayConfig:
    """The relay config the CLI works on (raises :class:`ConfigError`)."""
    return config_module.load(path, os.environ)


def open_registry(config: RelayConfig, state: StateDir) -> Registry:
    """The tenants the configured store keeps (raises :class:`TenantError` if unreachable)."""
    if config.store == "redis":
        from appliance.tenants_redis import RedisTenantRegistry  # noqa: PLC0415

        return RedisTenantRegistry(config.redis_url)
    return TenantRegistry(state.tenants)


def open_directory(config: RelayConfig, state: StateDir) -> TenantDirectory:
    """The relay's view of the tenants the configured store keeps (raises
    :class:`TenantError` if unreachable)."""
    if config.store == "redis":
        from appliance.tenants_redis import RedisTenantDirectory  # noqa: PLC0415 (only if used)

        return RedisTenantDirectory(config.redis_url)
    return SQLiteTenantDirectory(state.tenants)


def count_unacked(config: RelayConfig, state: StateDir, tenant: str) -> int:
    """Unacked webhooks of ``tenant`` in the configured store."""
    if config.store == "redis":
        from appliance.store import redis as redis_store  # noqa: PLC0415 (redis-py only if used)

        return _as_tenant_error(redis_store.count_unacked, config.redis_url, tenant)
    return sqlite.count_unacked(state.store, tenant)


def purge(config: RelayConfig, state: StateDir, tenant: str) -> int:
    """Delete every webhook of ``tenant`` from the configured store; returns how many
    were unacked. Safe beside running relays."""
    if config.store == "redis":
        from appliance.store import redis as redis_store  # noqa: PLC0415 (idem)

        return _as_tenant_error(redis_store.purge_tenant, config.redis_url, tenant)
    return sqlite.purge_file(state.store, tenant)


def _as_tenant_error(call: Callable[[str, str], int], url: str, tenant: str) -> int:
    """``call(url, tenant)``, its :class:`StoreError` as the CLI's :class:`TenantError`."""
    try:
        return call(url, tenant)
    except StoreError as exc:
        raise TenantError(str(exc)) from exc
