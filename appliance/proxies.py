"""Which peers are trusted proxies, and the client address they vouch for.

Behind nginx (or a load balancer) every connection comes from the proxy, and
the client's address arrives in ``X-Forwarded-For``. That header is believed
only from a configured proxy (``trusted_proxies``): from anyone else it is a
string the client wrote. The client is the rightmost address in the header
that is not itself a trusted proxy (RFC 7239 §7.4's reasoning: each proxy
appends the peer it saw, so everything left of the first untrusted hop may
be forged).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from appliance.errors import ConfigError

#: How Unix-socket peers are named (a proxy on the same machine).
UNIX_PEER = "unix"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The proxies whose word on the client address is taken."""

    def __init__(self, entries: Iterable[str] = (), key: str = "trusted_proxies") -> None:
        """``entries``: addresses or networks (``10.0.0.0/8``, ``::1``), or ``unix``;
        ``key``: the setting they come from, for the error message."""
        self.unix = False
        self.networks: list[Network] = []
        for entry in entries:
            if entry == UNIX_PEER:
                self.unix = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"{key}: {entry!r} is not an address, a network or 'unix'"
                ) from exc

    def __bool__(self) -> bool:
        return self.unix or bool(self.networks)

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (a socket's peer address, or ``unix``) is a trusted proxy."""
        if peer == UNIX_PEER:
            return self.unix
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client address to believe for a request from ``peer``.

        ``peer`` itself unless it is a trusted proxy with a usable
        ``X-Forwarded-For``; then the rightmost address in it that is not a
        trusted proxy. Entries that are not IP addresses end the walk: what
        lies left of garbage cannot be trusted either.
        """
        if forwarded_for is None or not self.trusts(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            candidate = hop.strip()
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                break
            client = candidate
            if not self.trusts(candidate):
                break
        return client
