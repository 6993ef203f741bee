"""Properties of the PROXY protocol header parser, :mod:`appliance.proxyproto`.

Whatever a peer sends, the parser answers a header, "more", or
:class:`ProxyHeaderError`, nothing else; "more" only while every byte so far
can belong to a header (so the listener may consume them), and a header's
length never reaches past it into the TLS bytes that follow.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from appliance.proxyproto import V1_MAX_BYTES, V1_PREFIX, V2_SIGNATURE, ProxyHeaderError, parse
from tests.support import proxy_headers
from tests.support.properties import examples

IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
PORTS = st.integers(0, 65535)
TLVS = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4).map(
    lambda tlvs: b"".join(bytes((t,)) + len(v).to_bytes(2, "big") + v for t, v in tlvs)
)
#: What a peer might send: garbage, or garbage behind a real signature or prefix.
GARBAGE = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b),
    st.binary(max_size=300).map(lambda b: V1_PREFIX + b),
    st.text(alphabet="PROXYTCP46UNKOW .:0123456789abcdef\r\n", max_size=120).map(
        lambda t: V1_PREFIX + t.encode()
    ),
)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, str, int]:
    """A valid header of either version, its client address and port."""
    family = draw(st.sampled_from((IPV4, IPV6)))
    source, destination = draw(family), draw(family)
    source_port, destination_port = draw(PORTS), draw(PORTS)
    if draw(st.booleans()):
        header = proxy_headers.v2(
            source, source_port, destination, destination_port, tlvs=draw(TLVS)
        )
    else:
        header = proxy_headers.v1(source, source_port, destination, destination_port)
    return header, source, source_port


@examples(300)
@given(GARBAGE)
def test_garbage_gets_a_header_more_or_a_refusal_and_nothing_else(data: bytes) -> None:
    try:
        parsed = parse(data)
    except ProxyHeaderError:
        return
    if parsed is None:
        # "More" promises that all of it is header: no byte of TLS is consumed.
        assert data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)] or (
            data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)] and len(data) < V1_MAX_BYTES
        )
    else:
        assert 0 < parsed.length <= len(data)


@examples(300)
@given(headers(), st.binary(max_size=64))
def test_a_header_is_read_whole_and_never_into_what_follows(
    drawn: tuple[bytes, str, int], tail: bytes
) -> None:
    header, source, port = drawn
    parsed = parse(header + tail)
    assert parsed is not None
    assert parsed.length == len(header)
    assert ipaddress.ip_address(parsed.source or "") == ipaddress.ip_address(source)
    assert parsed.source_port == port


@examples(100)
@given(headers(), st.data())
def test_a_header_cut_anywhere_asks_for_more(
    drawn: tuple[bytes, str, int], data: st.DataObject
) -> None:
    header = drawn[0]
    end = data.draw(st.integers(0, len(header) - 1))
    assert parse(header[:end]) is None
