"""The PROXY protocol header a load balancer opens a connection with (sans I/O).

A balancer in TCP mode (HAProxy's ``send-proxy-v2``, nginx's stream
``proxy_protocol on``) passes TLS through untouched, so it cannot add an
``X-Forwarded-For``; instead it writes one header before the client's first
byte, naming the client's address. The relay reads it only on connections
from its configured balancers (``proxy_protocol_from``,
appliance/listener.py); from anyone else a header is not looked for, and
fails as the TLS garbage it then is.

Both versions of HAProxy's specification (doc/proxy-protocol.txt) are read:

- **v2**, binary: a 12-byte signature, a version and command byte, a family
  byte, a 16-bit length, then the addresses and optional TLVs (ignored);
- **v1**, text: ``PROXY TCP4 SRC DST SPORT DPORT\\r\\n`` (or ``TCP6``, or
  ``UNKNOWN ...``), at most 107 bytes.

:func:`parse` takes the bytes received so far and says: a complete header
(and how many bytes it took), not yet (every byte so far may still be the
start of one), or :class:`ProxyHeaderError`. The reader can therefore
consume what it was given whenever the answer is "not yet", and never reads
into the TLS bytes that follow a header.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: The v2 header's first twelve bytes.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The v1 header's first six bytes.
V1_PREFIX = b"PROXY "
#: The longest v1 header, CRLF included (the specification's bound).
V1_MAX_BYTES = 107
#: The v2 fixed part: signature, version/command, family, length.
V2_FIXED_BYTES = 16

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_FAMILY_UNSPEC, _FAMILY_INET, _FAMILY_INET6, _FAMILY_UNIX = 0x0, 0x1, 0x2, 0x3
_TRANSPORT_STREAM = 0x1
#: Bytes of the address block by family: two addresses and two ports; Unix: two paths.
_ADDRESS_BYTES = {_FAMILY_UNSPEC: 0, _FAMILY_INET: 12, _FAMILY_INET6: 36, _FAMILY_UNIX: 216}
#: What a v1 TCP4 or TCP6 header is written with, CRLF aside.
_V1_CHARS = frozenset(b"PROXYTCPUNKOW46 .:0123456789abcdefABCDEF")
_V1_UNKNOWN = b"PROXY UNKNOWN"


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header (or one this relay cannot use)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header: who the client is, as the balancer says."""

    #: Bytes the header took, from the connection's first byte.
    length: int
    #: 1 or 2.
    version: int
    #: The client's address, or None when the header names none (a v2 LOCAL
    #: command, a balancer's own health check; an unspecified family; v1
    #: ``UNKNOWN``; a Unix-socket client): the connection's own peer stands.
    source: str | None = None
    source_port: int | None = None
    #: The address the client connected to (the balancer's frontend).
    destination: str | None = None
    destination_port: int | None = None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None if ``data`` may still become one.

    Raises :class:`ProxyHeaderError` as soon as ``data`` cannot start one.
    None promises that every byte of ``data`` belongs to the header, so a
    reader may consume them all and ask again with more.
    """
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data)
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    raise ProxyHeaderError("not a PROXY protocol header")


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED_BYTES:
        if len(data) > len(V2_SIGNATURE):
            _v2_command(data[12])
        return None
    command = _v2_command(data[12])
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = V2_FIXED_BYTES + int.from_bytes(data[14:16], "big")
    if command == _V2_LOCAL:
        # The balancer's own connection: its address block is to be skipped unread.
        return ProxyHeader(length, 2) if len(data) >= length else None
    if family not in _ADDRESS_BYTES or transport > 0x2:
        raise ProxyHeaderError(f"unknown v2 family/transport byte {data[13]:#04x}")
    if length - V2_FIXED_BYTES < _ADDRESS_BYTES[family]:
        raise ProxyHeaderError("v2 header too short for its addresses")
    if len(data) < length:
        return None
    if family in (_FAMILY_UNSPEC, _FAMILY_UNIX):
        return ProxyHeader(length, 2)
    if transport != _TRANSPORT_STREAM:
        raise ProxyHeaderError("v2 header for a datagram connection")
    size = 4 if family == _FAMILY_INET else 16
    block = data[V2_FIXED_BYTES:]
    source = ipaddress.ip_address(block[:size])
    destination = ipaddress.ip_address(block[size : 2 * size])
    ports = block[2 * size : 2 * size + 4]
    return ProxyHeader(
        length,
        2,
        str(source),
        int.from_bytes(ports[:2], "big"),
        str(destination),
        int.from_bytes(ports[2:], "big"),
    )


def _v2_command(byte: int) -> int:
    if byte >> 4 != 2:
        raise ProxyHeaderError(f"unknown v2 version {byte >> 4}")
    command = byte & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"unknown v2 command {command}")
    return command


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES or b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("v1 header without CRLF within 107 bytes")
        if data[: len(_V1_UNKNOWN)] == _V1_UNKNOWN[: len(data)]:
            return None  # UNKNOWN may be followed by anything up to CRLF
        if not _V1_CHARS.issuperset(data.rstrip(b"\r")):
            raise ProxyHeaderError("v1 header with a character it cannot hold")
        return None
    line = data[:end].decode("ascii", errors="replace")
    fields = line.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(end + 2, 1)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed v1 header")
    version = 4 if fields[1] == "TCP4" else 6
    source, destination = _v1_address(fields[2], version), _v1_address(fields[3], version)
    return ProxyHeader(end + 2, 1, source, _v1_port(fields[4]), destination, _v1_port(fields[5]))


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError as exc:
        raise ProxyHeaderError("v1 header with an invalid address") from exc
    if address.version != version:
        raise ProxyHeaderError("v1 header with an address of the other family")
    return str(address)


def _v1_port(text: str) -> int:
    # The specification's ports: decimal, no sign, no leading zero.
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or text != str(int(text)):
        raise ProxyHeaderError("v1 header with an invalid port")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("v1 header with an invalid port")
    return port
