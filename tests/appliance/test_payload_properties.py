"""Properties of the body validator, :func:`appliance.payload.count_events` (PROTOCOL.md §1).

The JSON texts here are written by the tests' own small serializer, not by
``json.dumps``, so they can hold what ``json.dumps`` never writes: any
whitespace, escaped and raw characters, lone surrogate escapes, duplicate
keys, long integer literals and exponents.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from appliance.errors import MalformedBody
from appliance.payload import count_events
from tests.support.properties import examples

# -- JSON text, written by hand ----------------------------------------------

WHITESPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n  ", "   "])
SCALARS = st.sampled_from(["null", "true", "false", "0", "-0", "1", "-1.5e-3", "0.0"])
NUMBERS = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,6})?", fullmatch=True
)


@st.composite
def strings(draw: st.DrawFn) -> str:
    """A JSON string literal: raw or \\u-escaped characters, sometimes a lone surrogate escape."""
    text = draw(st.text(max_size=12))
    literal = json.dumps(text, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 7)) == 0:
        literal = literal[:-1] + draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d"])) + '"'
    return literal


def arrays(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda items, ws: "[" + ws + ("," + ws).join(items) + ws + "]",
        st.lists(children, max_size=4),
        WHITESPACE,
    )


def objects(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda pairs, ws: "{" + ws + ("," + ws).join(f"{k}{ws}:{ws}{v}" for k, v in pairs) + "}",
        st.lists(st.tuples(strings(), children), max_size=4),
        WHITESPACE,
    )


JSON_VALUES = st.recursive(
    st.one_of(SCALARS, NUMBERS, strings()),
    lambda children: st.one_of(arrays(children), objects(children)),
    max_leaves=12,
)
NOT_ARRAYS = JSON_VALUES.filter(lambda text: not text.startswith("["))
NOT_OBJECTS = JSON_VALUES.filter(lambda text: not text.startswith("{"))


def webhook(events: list[str], others: list[tuple[str, str]], ws: str = "") -> str:
    """An object whose ``events`` is an array of ``events``, with other members around it."""
    array = "[" + ws + ("," + ws).join(events) + ws + "]"
    pairs = [*others, ('"events"', array)]
    return ws + "{" + ws + ("," + ws).join(f"{k}{ws}:{ws}{v}" for k, v in pairs) + ws + "}" + ws


OTHER_MEMBERS = st.lists(
    st.tuples(strings().filter(lambda k: k != '"events"'), JSON_VALUES), max_size=3
)


# -- the properties -----------------------------------------------------------


def corrupted(body: bytes, data: st.DataObject) -> bytes:
    """``body`` with one byte replaced, inserted or removed."""
    if not body:
        return body
    at = data.draw(st.integers(0, len(body) - 1))
    byte = bytes([data.draw(st.integers(0, 255))])
    return data.draw(
        st.sampled_from(
            [
                body[:at] + byte + body[at + 1 :],
                body[:at] + byte + body[at:],
                body[:at] + body[at + 1 :],
            ]
        )
    )


@examples(150)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)), st.data())
def test_any_bytes_give_a_count_or_malformed_body(raw: bytes, data: st.DataObject) -> None:
    """Whatever the bytes (random, text, or a valid webhook with one byte changed), the
    answer is a non-negative int or MalformedBody (400); never another exception."""
    valid = webhook(data.draw(st.lists(JSON_VALUES, max_size=3)), []).encode()
    for body in (raw, corrupted(valid, data)):
        try:
            count = count_events(body)
        except MalformedBody:
            continue
        assert type(count) is int
        assert count >= 0


@examples(100)
@given(st.lists(JSON_VALUES, max_size=6), OTHER_MEMBERS, WHITESPACE)
def test_an_object_with_an_events_array_is_counted(
    events: list[str], others: list[tuple[str, str]], ws: str
) -> None:
    """Any JSON object whose ``events`` is an array gives that array's length, wherever
    ``events`` stands among other members and however the text is spaced and escaped."""
    body = webhook(events, others, ws).encode("utf-8")
    before = bytes(body)
    assert count_events(body) == len(events)
    assert body == before  # only a count comes back; the bytes are the caller's, untouched


@examples(60)
@given(st.one_of(NOT_OBJECTS, st.builds(lambda v: f'{{"events":{v}}}', NOT_ARRAYS)))
def test_a_non_object_or_a_non_array_events_is_malformed(text: str) -> None:
    """JSON that is not an object, or whose ``events`` is not an array, is MalformedBody."""
    with pytest.raises(MalformedBody):
        count_events(text.encode())


@examples(50)
@given(st.lists(JSON_VALUES, max_size=3), NOT_ARRAYS, st.booleans())
def test_duplicate_events_keys_are_read_as_the_bridge_reads_them(
    events: list[str], other: str, array_last: bool
) -> None:
    """With ``events`` twice, the last one counts, as in the bridge's parser (json.loads);
    the relay never accepts a body the bridge reads as having no events array."""
    array = "[" + ",".join(events) + "]"
    first, last = (other, array) if array_last else (array, other)
    body = f'{{"events":{first},"events":{last}}}'.encode()
    if array_last:
        assert count_events(body) == len(events)
    else:
        with pytest.raises(MalformedBody):
            count_events(body)


@examples(30)
@given(st.integers(1, 200_000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_malformed_not_a_recursion_error(depth: int, opener: str) -> None:
    """Nesting however deep inside ``events`` (closed or not) is counted or refused with
    MalformedBody; the parser's recursion limit never escapes as RecursionError."""
    closer = "]" if opener == "[" else "}"
    for inner in (opener * depth + "1" + closer * depth, opener * depth):
        body = f'{{"events":[{inner}]}}'.encode()
        try:
            assert count_events(body) == 1
        except MalformedBody:
            assert depth >= 100 or inner.endswith(opener)
    with pytest.raises(MalformedBody):
        count_events(("[" * 100_000).encode())


@examples(50)
@given(st.lists(JSON_VALUES, max_size=3), st.sampled_from(["\\ud800", "\\udc00", "\\udbff\\u0041"]))
def test_lone_surrogate_escapes_are_json_and_counted(events: list[str], escape: str) -> None:
    """A lone surrogate written as an escape is valid JSON text and is counted (the bytes
    are relayed as they are); the same surrogate encoded raw is not UTF-8 and is refused."""
    escaped = webhook([*events, f'"{escape}"'], []).encode()
    assert count_events(escaped) == len(events) + 1
    raw = escaped.replace(b"\\ud800", b"\xed\xa0\x80").replace(b"\\udc00", b"\xed\xb0\x80")
    raw = raw.replace(b"\\udbff", b"\xed\xaf\xbf")
    with pytest.raises(MalformedBody):
        count_events(raw)


@examples(100)
@given(
    st.lists(JSON_VALUES, max_size=3),
    st.sampled_from(
        [b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf4\x90\x80\x80", b"\xff", b"\x80", b"\xe3\x81"]
    ),
)
def test_bytes_that_are_not_utf8_are_malformed(events: list[str], bad: bytes) -> None:
    """Overlong forms, code points past U+10FFFF, stray continuation or truncated
    sequences inside an otherwise valid webhook make it MalformedBody."""
    body = webhook([*events, '"x"'], []).encode().replace(b'"x"', b'"' + bad + b'"')
    with pytest.raises(MalformedBody):
        count_events(body)


@examples(50)
@given(st.lists(JSON_VALUES, max_size=3))
def test_a_byte_order_mark_is_malformed(events: list[str]) -> None:
    """JSON text has no BOM (RFC 8259 §8.1); a body starting with one is refused."""
    with pytest.raises(MalformedBody):
        count_events(b"\xef\xbb\xbf" + webhook(events, []).encode())


@examples(50)
@given(
    st.lists(JSON_VALUES, max_size=3),
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    st.booleans(),
)
def test_nan_and_infinity_are_not_json(events: list[str], constant: str, inside: bool) -> None:
    """NaN, Infinity and -Infinity are not JSON numbers (RFC 8259 §6): a body holding one,
    in ``events`` or in any other member, is MalformedBody."""
    if inside:
        text = webhook([*events, constant], [])
    else:
        text = webhook(events, [('"x"', f"[{constant}]")])
    with pytest.raises(MalformedBody):
        count_events(text.encode())


@examples(60)
@given(st.integers(1, sys.get_int_max_str_digits()), st.integers(0, 999_999), st.booleans())
def test_huge_numbers_are_counted(digits: int, exponent: int, negative: bool) -> None:
    """Integer literals up to Python's digit limit (what the bridge's parser takes too),
    long fractions and huge exponents are JSON numbers like any other: counted."""
    sign = "-" if negative else ""
    numbers = [
        sign + "9" * digits,
        f"{sign}1.{'5' * digits}",
        f"{sign}1e{exponent}",
        f"{sign}1E-{exponent}",
    ]
    assert count_events(webhook(numbers, [('"n"', numbers[0])]).encode()) == 4


@examples(10)
@given(st.integers(sys.get_int_max_str_digits() + 1, 3 * sys.get_int_max_str_digits()))
def test_an_integer_over_the_digit_limit_is_malformed_not_a_value_error(digits: int) -> None:
    """An integer literal longer than Python's digit limit (a quadratic-time conversion,
    CVE-2020-10735) is refused with MalformedBody, as the bridge would refuse it."""
    assume(digits > sys.get_int_max_str_digits())
    with pytest.raises(MalformedBody):
        count_events(f'{{"events":[{"1" * digits}]}}'.encode())
