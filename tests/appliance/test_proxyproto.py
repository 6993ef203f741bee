"""The PROXY protocol header parser, :mod:`appliance.proxyproto`: examples of each shape."""

from __future__ import annotations

import pytest

from appliance.proxyproto import V2_SIGNATURE, ProxyHeader, ProxyHeaderError, parse
from tests.support import proxy_headers

TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def test_a_v2_ipv4_header_names_the_client_and_its_length() -> None:
    header = proxy_headers.v2("203.0.113.7", 51234, "192.0.2.1", 443)
    assert parse(header + TLS_HELLO) == ProxyHeader(
        len(header), 2, "203.0.113.7", 51234, "192.0.2.1", 443
    )


def test_a_v2_ipv6_header_names_the_client() -> None:
    header = proxy_headers.v2("2001:db8::7", 40000, "2001:db8::1", 8443)
    parsed = parse(header)
    assert parsed is not None
    assert (parsed.source, parsed.source_port, parsed.destination) == (
        "2001:db8::7",
        40000,
        "2001:db8::1",
    )


def test_v2_tlvs_are_skipped_and_counted_in_the_length() -> None:
    tlvs = b"\x01\x00\x02h2" + b"\x05\x00\x04abcd"  # ALPN, unique id
    header = proxy_headers.v2(tlvs=tlvs)
    parsed = parse(header + TLS_HELLO)
    assert parsed is not None
    assert (parsed.length, parsed.source) == (len(header), "203.0.113.7")


def test_a_v2_local_command_names_no_client() -> None:
    header = proxy_headers.v2(local=True)
    assert parse(header + b"GET /") == ProxyHeader(len(header), 2)


def test_v2_unspecified_and_unix_families_name_no_client() -> None:
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    unix = V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"/run/a".ljust(108, b"\0") * 2
    assert parse(unspec) == ProxyHeader(16, 2)
    assert parse(unix) == ProxyHeader(len(unix), 2)


def test_a_v1_header_names_the_client() -> None:
    header = proxy_headers.v1("198.51.100.9", 1234, "192.0.2.1", 443)
    assert parse(header + TLS_HELLO) == ProxyHeader(
        len(header), 1, "198.51.100.9", 1234, "192.0.2.1", 443
    )
    six = proxy_headers.v1("2001:db8::9", 1, "2001:db8::1", 2)
    assert parse(six) == ProxyHeader(len(six), 1, "2001:db8::9", 1, "2001:db8::1", 2)


def test_v1_unknown_names_no_client_whatever_follows_it() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, 1)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest") == ProxyHeader(35, 1)


@pytest.mark.parametrize(
    "header",
    [proxy_headers.v2(), proxy_headers.v2("2001:db8::7", 1, "2001:db8::1"), proxy_headers.v1()],
    ids=["v2", "v2-ipv6", "v1"],
)
def test_every_strict_prefix_of_a_header_asks_for_more(header: bytes) -> None:
    for end in range(len(header)):
        assert parse(header[:end]) is None, header[:end]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (TLS_HELLO, "not a PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "without CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "without CRLF"),
        (b"PROXY TCP4 " + b"1" * 100, "without CRLF"),
        (b"PROXY TCP4 1.2.3.4\x00", "cannot hold"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "invalid address"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "invalid address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "other family"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "other family"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "invalid port"),
        (V2_SIGNATURE + b"\x11", "version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c", "command 2"),
        (V2_SIGNATURE + b"\x21\x41\x00\x0c", "family"),
        (V2_SIGNATURE + b"\x21\x13\x00\x0c", "family"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0b" + b"\0" * 11, "too short"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\0" * 12, "too short"),
        (V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\0" * 12, "datagram"),
    ],
)
def test_what_cannot_be_a_header_is_refused_at_once(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)
