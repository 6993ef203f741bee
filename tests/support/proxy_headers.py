"""PROXY protocol headers as a balancer writes them (HAProxy's doc/proxy-protocol.txt),
for tests that play the balancer, or a client pretending to be one."""

from __future__ import annotations

import ipaddress

from appliance.proxyproto import V2_SIGNATURE


def v2(
    source: str = "203.0.113.7",
    source_port: int = 51234,
    destination: str | None = None,
    destination_port: int = 443,
    *,
    local: bool = False,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header: PROXY over TCP (IPv4 or IPv6 by ``source``), or LOCAL (a health check).
    ``destination`` defaults to a documentation address of ``source``'s family."""
    if local:
        return V2_SIGNATURE + bytes((0x20, 0x00)) + len(tlvs).to_bytes(2, "big") + tlvs
    src = ipaddress.ip_address(source)
    dst = ipaddress.ip_address(destination or _frontend(src.version))
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed
    block += source_port.to_bytes(2, "big") + destination_port.to_bytes(2, "big") + tlvs
    return V2_SIGNATURE + bytes((0x21, family)) + len(block).to_bytes(2, "big") + block


def v1(
    source: str = "203.0.113.7",
    source_port: int = 51234,
    destination: str | None = None,
    destination_port: int = 443,
) -> bytes:
    """A v1 header (TCP4 or TCP6 by ``source``)."""
    version = ipaddress.ip_address(source).version
    family = "TCP4" if version == 4 else "TCP6"
    destination = destination or _frontend(version)
    line = f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n"
    return line.encode("ascii")


def _frontend(version: int) -> str:
    return "192.0.2.1" if version == 4 else "2001:db8::1"
