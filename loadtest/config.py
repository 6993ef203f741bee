"""The run's configuration: tenants, target and pacing, handed to Locust's processes.

The command builds one :class:`RunConfig` and passes it to every Locust
process it starts in the environment variable :data:`ENV_VAR` (secrets stay
out of command lines and report files). Tenants come from repeated
``--tenant``/``--channel-secret``/``--bridge-token`` options, paired in order,
or from a JSON tenants file: ``[{"tenant": ..., "channel_secret": ...,
"bridge_token": ..., "target": ...}, ...]`` (``bridge_token`` and
``target``, the node the tenant lives on, optional; see :mod:`loadtest.routing`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.events import Mix

ENV_VAR = "LINERELAY_LOADTEST_CONFIG"
_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class ConfigError(ValueError):
    """Tenants or options that do not make a runnable load test."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant the generator sends to; with a bridge token, bridges receive for it."""

    tenant: str
    channel_secret: str
    bridge_token: str | None = None
    #: The target (relay node) the tenant lives on; None when every target serves it.
    target: str | None = None


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a Locust process of the run needs."""

    #: The relay nodes (or the balancer) webhooks go to.
    targets: tuple[str, ...]
    tenants: tuple[Tenant, ...]
    #: Where simulated bridges connect; the same as ``targets`` unless the store is shared.
    bridge_targets: tuple[str, ...] = ()
    #: Every target serves every tenant (see :mod:`loadtest.routing`).
    shared_store: bool = False
    #: CA bundles trusted for every target; none: the system store.
    ca_files: tuple[str, ...] = ()
    profile: str = "steady"
    rate: float = 50.0
    users: int = 10
    per_user_rate: float = 5.0
    duration: float = 60.0
    drain: float = 30.0
    bridges: int = 1
    #: The bridge protocol simulated bridges offer (PROTOCOL.md §2); 1 offers none.
    bridge_protocol: int = 2
    churn_seconds: float | None = None
    new_connection_ratio: float = 0.1
    budget_ms: float = 1000.0
    gateway: str | None = None
    mix: Mix = field(default_factory=Mix)
    report_dir: str = "."

    @property
    def with_bridges(self) -> bool:
        """Whether simulated bridges take part (every tenant has a bridge token)."""
        return all(t.bridge_token for t in self.tenants)

    def to_env(self) -> str:
        """The JSON text for :data:`ENV_VAR`."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RunConfig:
        """The config a parent process put in :data:`ENV_VAR`."""
        text = (os.environ if environ is None else environ).get(ENV_VAR)
        if not text:
            raise ConfigError(f"{ENV_VAR} is not set: start this through `linerelay loadtest`")
        data: dict[str, Any] = json.loads(text)
        data["tenants"] = tuple(Tenant(**t) for t in data["tenants"])
        for key in ("targets", "bridge_targets", "ca_files"):
            data[key] = tuple(data[key])
        data["mix"] = Mix(**data["mix"])
        return cls(**data)


def check_tenant(tenant: Tenant) -> Tenant:
    """``tenant`` when its id and secret are usable; :class:`ConfigError` otherwise."""
    if not _TENANT_ID.fullmatch(tenant.tenant):
        raise ConfigError(f"tenant id {tenant.tenant!r} is not [a-z0-9][a-z0-9-]{{0,62}}")
    if not tenant.channel_secret:
        raise ConfigError(f"tenant {tenant.tenant!r} has an empty channel secret")
    if tenant.bridge_token is not None and not tenant.bridge_token:
        raise ConfigError(f"tenant {tenant.tenant!r} has an empty bridge token")
    return tenant


def tenants_from_options(
    ids: list[str], secrets: list[str], tokens: list[str]
) -> tuple[Tenant, ...]:
    """Pair repeated ``--tenant``, ``--channel-secret`` and ``--bridge-token`` options in order."""
    if len(ids) != len(secrets):
        raise ConfigError(
            f"{len(ids)} --tenant options but {len(secrets)} --channel-secret options; "
            "give one secret per tenant, in the same order"
        )
    if tokens and len(tokens) != len(ids):
        raise ConfigError(
            f"{len(tokens)} --bridge-token options for {len(ids)} tenants; "
            "give none or one per tenant, in the same order"
        )
    return tuple(
        check_tenant(Tenant(t, s, tokens[i] if tokens else None))
        for i, (t, s) in enumerate(zip(ids, secrets, strict=True))
    )


def tenants_from_file(path: Path) -> tuple[Tenant, ...]:
    """Tenants from a JSON tenants file (see the module docstring)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read tenants file {path}: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise ConfigError(f"tenants file {path} must hold a non-empty JSON array")
    tenants = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or set(item) - {
            "tenant",
            "channel_secret",
            "bridge_token",
            "target",
        }:
            raise ConfigError(
                f"tenants file {path}, entry {i}: expected an object with tenant, "
                "channel_secret and optionally bridge_token and target"
            )
        tenant, secret = item.get("tenant"), item.get("channel_secret")
        token, target = item.get("bridge_token"), item.get("target")
        if not isinstance(tenant, str) or not isinstance(secret, str):
            raise ConfigError(
                f"tenants file {path}, entry {i}: tenant and channel_secret are strings"
            )
        for key, value in (("bridge_token", token), ("target", target)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"tenants file {path}, entry {i}: {key} is a string")
        tenants.append(check_tenant(Tenant(tenant, secret, token, target)))
    return tuple(tenants)
