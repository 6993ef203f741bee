"""Which node gets what when a run drives several targets.

A run names one or more targets (relay nodes, or one balancer in front of
them). How tenants spread over them depends on what the nodes share:

- **Per node** (the default): each node is a relay of its own, with its own
  store and tenants (SQLite). A tenant lives on one node, its *home*: the
  ``target`` its tenants-file entry names, or else the targets in turn, in
  the order given (first tenant on the first target, second on the second,
  and round again). Its webhooks go there and its bridges connect there.
- **Shared store** (``--shared-store``): every node serves every tenant
  (relays on one Redis store, or the same relay listed twice). Each webhook
  user sends to the targets in turn, request by request, and the bridges
  connect to the bridge targets (the ``--target`` list unless
  ``--bridge-target`` names others) spread by tenant and bridge, so most
  webhooks are accepted on one node and delivered from another.

Pure functions of the configuration; the Locust users call them per request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from loadtest.config import ConfigError, Tenant


def normalise(url: str) -> str:
    """``url`` without a trailing slash, so that targets compare equal however written."""
    return url.rstrip("/")


def place(
    tenants: tuple[Tenant, ...], targets: tuple[str, ...], *, shared: bool
) -> tuple[Tenant, ...]:
    """``tenants`` with their home target set (per node), or checked for none (shared store)."""
    placed = []
    for i, tenant in enumerate(tenants):
        if shared:
            if tenant.target is not None:
                raise ConfigError(
                    f"tenant {tenant.tenant!r} names a target, but with --shared-store every "
                    "target serves every tenant: drop its target or drop --shared-store"
                )
            placed.append(tenant)
            continue
        home = normalise(tenant.target) if tenant.target else targets[i % len(targets)]
        if home not in targets:
            raise ConfigError(
                f"tenant {tenant.tenant!r} names target {tenant.target!r}, "
                "which is not one of the --target options"
            )
        placed.append(replace(tenant, target=home))
    return tuple(placed)


def bridge_url(target: str) -> str:
    """The bridge endpoint of a target: ``wss://HOST[/prefix]/bridge`` (``ws://`` for http)."""
    parts = urlsplit(target)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/bridge"


def webhook_url(target: str, tenant: str) -> str:
    """Where a tenant's webhooks go on a target: ``BASE/webhook/{tenant}``."""
    return f"{normalise(target)}/webhook/{tenant}"


@dataclass(frozen=True, slots=True)
class Routing:
    """Targets for webhooks and bridges; indexes are positions in the two lists."""

    targets: tuple[str, ...]
    bridge_targets: tuple[str, ...]
    shared: bool

    def webhook_target(self, tenant: Tenant, sequence: int) -> int:
        """The target of a user's ``sequence``-th webhook, for ``tenant``."""
        if self.shared or tenant.target is None:
            return sequence % len(self.targets)
        return self.targets.index(tenant.target)

    def bridge_target(self, tenant_index: int, tenant: Tenant, bridge: int) -> int:
        """The bridge target that bridge number ``bridge`` uses for the tenant at ``tenant_index``."""
        if self.shared or tenant.target is None:
            return (tenant_index + bridge) % len(self.bridge_targets)
        return self.bridge_targets.index(tenant.target)
