"""Host names as certificates hold them (no imports beyond the standard library:
the config validates ``server_name`` with this, and every command loads the config)."""

from __future__ import annotations

import ipaddress
import re

# LDH labels, ASCII only (an IDN as its A-label), an optional trailing dot.
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"^({_LABEL}\.)*{_LABEL}\.?$")


def is_ip_address(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_dns_name(name: str, wildcard: bool = False) -> bool:
    """Whether ``name`` is a DNS name; with ``wildcard``, ``*.`` may lead (RFC 6125 §6.4.3)."""
    if wildcard and name.startswith("*."):
        name = name[2:]
    return len(name) <= 253 and _DNS_NAME.match(name.lower()) is not None
