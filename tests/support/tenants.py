"""Tenants for tests: added to a relay's state dir with the code behind ``tenant add``.

:class:`appliance.tenants.TenantRegistry` in this process rather than the
CLI: each CLI run costs one to two seconds of start-up on this machine, too
much for a tenant per test (tests/integration/test_tenant_cli.py drives the
CLI itself). A running relay serves the tenant at once: a lookup that misses
re-reads the tenants file.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.state import StateDir
from appliance.tenants import TenantRegistry


@dataclass(frozen=True)
class NewTenant:
    """A tenant just added, with the credentials only its creator sees."""

    id: str
    secret: str
    token: str


def add_tenant(
    state_dir: Path,
    tenant: str | None = None,
    secret: str | None = None,
    prefix: str = "t",
    token: str | None = None,
) -> NewTenant:
    """Add ``tenant`` (default: ``PREFIX-`` and a unique suffix) with ``secret`` (default:
    random) and bridge ``token`` (default: a new one) to the tenants file of ``state_dir``."""
    tenant = tenant or f"{prefix}-{uuid.uuid4().hex[:12]}"
    secret = secret or secrets.token_hex(16)
    registry = TenantRegistry(StateDir(state_dir).tenants)
    try:
        token = registry.add(tenant, secret, token)
    finally:
        registry.close()
    return NewTenant(tenant, secret, token)
