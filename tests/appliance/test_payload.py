from __future__ import annotations

import pytest

from appliance.errors import MalformedBody
from appliance.payload import count_events, event_types
from tests.conftest import FIXTURES


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not utf-8",
        b"not json",
        b"[]",
        b'"events"',
        b'{"destination": "U1"}',
        b'{"events": {}}',
        b'{"events": null}',
        b"\xef\xbb\xbf" + b'{"events": []}',  # a BOM is not JSON
        b"[" * 100_000,  # deep nesting must not crash the parser
        b'{"events": [NaN]}',  # NaN and Infinity are not JSON (RFC 8259 section 6)
        b'{"events": [], "x": -Infinity}',
    ],
)
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        count_events(body)


def test_verify_request_has_no_events() -> None:
    assert count_events(b'{"destination":"U1","events":[]}') == 0


def test_unknown_event_types_and_fields_are_counted_not_judged() -> None:
    body = b'{"destination":"odd","x":1,"events":[{"type":"future-thing","y":{}}]}'
    assert count_events(body) == 1


def test_every_fixture_is_a_valid_webhook() -> None:
    files = sorted(FIXTURES.rglob("*.json"))
    assert len(files) >= 28
    counts = {f.name: count_events(f.read_bytes()) for f in files}
    assert counts["webhook.json"] == 28
    assert all(n >= 1 for n in counts.values())


@pytest.mark.parametrize(
    ("body", "types"),
    [
        (b'{"events":[{"type":"message"},{"type":"follow"}]}', ("message", "follow")),
        (b'{"events":[{"type":1},"x",{}]}', ("?", "?", "?")),
        (b'{"events":[]}', ()),
        (b'{"events":{}}', ()),
        (b"[]", ()),
        (b"\xff", ()),
        (b"NaN", ()),
    ],
)
def test_event_types_name_each_event_and_never_raise(body: bytes, types: tuple[str, ...]) -> None:
    assert event_types(body) == types
