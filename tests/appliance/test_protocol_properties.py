"""Properties of the bridge frame parser, :mod:`appliance.protocol` (PROTOCOL.md §2)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.protocol import (
    MAX_REASON_CHARS,
    Ack,
    Frame,
    FrameError,
    Hello,
    Nack,
    Unknown,
    Webhook,
    Webhooks,
    decode,
    encode,
)
from tests.support.properties import examples

KNOWN_TYPES = ("hello", "webhook", "webhooks", "ack", "nack")
#: Every field of every protocol 1 frame type, and what it must be.
FIELDS: dict[str, dict[str, type]] = {
    "hello": {"tenant": str, "window": int, "protocol": int},
    "webhook": {
        "id": str,
        "tenant": str,
        "body": str,
        "signature": str,
        "received_at": int,
        "attempt": int,
    },
    "ack": {"id": str},
    "nack": {"id": str, "reason": str},
}

TEXT = st.text(max_size=40)
INTS = st.integers(-(2**63), 2**63)

HELLOS = st.builds(Hello, tenant=TEXT, window=INTS, protocol=INTS)
WEBHOOKS = st.builds(
    Webhook,
    id=TEXT,
    tenant=TEXT,
    body=st.text(max_size=300),
    signature=TEXT,
    received_at=INTS,
    attempt=INTS,
)
ACKS = st.builds(lambda delivery_id: Ack((delivery_id,)), TEXT)
NACKS = st.builds(Nack, id=TEXT, reason=st.text(max_size=MAX_REASON_CHARS))
#: Frames protocol 1 can say (an ack of one id, no batches).
FRAMES: st.SearchStrategy[Hello | Webhook | Ack | Nack] = st.one_of(HELLOS, WEBHOOKS, ACKS, NACKS)
#: Frames of protocol 2: batches, and acks of any number of ids.
BATCHES = st.builds(Webhooks, st.lists(WEBHOOKS, max_size=5).map(tuple))
ACK_LISTS = st.builds(Ack, st.lists(TEXT, max_size=8).map(tuple))
FRAMES_V2: st.SearchStrategy[Hello | Webhook | Webhooks | Ack | Nack] = st.one_of(
    HELLOS, WEBHOOKS, BATCHES, ACK_LISTS, NACKS
)

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), INTS, st.floats(allow_nan=False), st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIELD_NAMES = st.sampled_from(sorted({name for fields in FIELDS.values() for name in fields}))
#: Objects that look like frames: a known or unknown type, known or unknown fields of any type.
FRAME_LIKE = st.builds(
    lambda kind, fields: {**fields, "type": kind} if kind is not None else fields,
    st.one_of(st.none(), st.sampled_from(KNOWN_TYPES), JSON_SCALARS),
    st.dictionaries(st.one_of(FIELD_NAMES, st.text(max_size=8)), JSON_VALUES, max_size=7),
)


def wire(frame: Hello | Webhook | Ack | Nack) -> dict[str, Any]:
    """The JSON object ``frame`` encodes to in protocol 1."""
    obj: dict[str, Any] = json.loads(encode(frame))
    return obj


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expected(obj: object) -> Frame | None:
    """PROTOCOL.md §2 as a table: the frame ``obj`` is, or None where it is no frame."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None
    kind = obj["type"]
    if kind == "webhooks":
        items = obj.get("items")
        if not isinstance(items, list):
            return None
        batch = [
            expected({**item, "type": "webhook"}) if isinstance(item, dict) else None
            for item in items
        ]
        if not all(isinstance(item, Webhook) for item in batch):
            return None
        return Webhooks(tuple(batch))  # type: ignore[arg-type]
    if kind == "ack" and "ids" in obj:
        ids = obj["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None
        return Ack(tuple(ids))
    if kind not in FIELDS:
        return Unknown(kind)
    values = {}
    for name, kind_of in FIELDS[kind].items():
        value = obj.get(name, "" if (kind, name) == ("nack", "reason") else None)
        if not (is_int(value) if kind_of is int else isinstance(value, str)):
            return None
        values[name] = value
    if kind == "nack":
        values["reason"] = values["reason"][:MAX_REASON_CHARS]
    if kind == "ack":
        return Ack((values["id"],))
    cls = {"hello": Hello, "webhook": Webhook, "nack": Nack}[kind]
    return cls(**values)  # type: ignore[no-any-return]


@examples(300)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_text_or_bytes_give_a_frame_or_frame_error(data: str | bytes) -> None:
    """Arbitrary text or bytes decode to a frame or raise FrameError; nothing else escapes."""
    try:
        frame = decode(data)
    except FrameError:
        return
    assert isinstance(frame, Hello | Webhook | Webhooks | Ack | Nack | Unknown)


@examples(200)
@given(FRAME_LIKE)
def test_frame_like_objects_decode_as_the_protocol_table_says(obj: dict[str, Any]) -> None:
    """Objects with known or unknown types and fields of any JSON type decode to exactly
    the frame PROTOCOL.md §2 describes, or FrameError where they are none."""
    want = expected(obj)
    if want is None:
        with pytest.raises(FrameError):
            decode(json.dumps(obj))
    else:
        assert decode(json.dumps(obj)) == want


@examples(300)
@given(FRAMES)
def test_decode_inverts_encode(frame: Hello | Webhook | Ack | Nack) -> None:
    """decode(encode(f)) == f for every frame, as text and as its UTF-8 bytes on the wire."""
    assert decode(encode(frame)) == frame
    assert decode(encode(frame).encode("utf-8")) == frame


@examples(300)
@given(FRAMES_V2)
def test_decode_inverts_encode_in_protocol_2(
    frame: Hello | Webhook | Webhooks | Ack | Nack,
) -> None:
    """decode(encode(f, 2)) == f for every protocol 2 frame: batches and id lists too."""
    assert decode(encode(frame, 2)) == frame
    assert decode(encode(frame, 2).encode("utf-8")) == frame


@examples(100)
@given(WEBHOOKS)
def test_a_webhook_body_comes_back_as_the_exact_bytes(frame: Webhook) -> None:
    """The ``body`` a bridge decodes encodes (UTF-8) to the bytes the relay put in."""
    raw = frame.body.encode("utf-8")
    got = decode(encode(frame).encode("utf-8"))
    assert isinstance(got, Webhook)
    assert got.body.encode("utf-8") == raw


@examples(100)
@given(
    st.text(max_size=20).filter(lambda t: t not in KNOWN_TYPES),
    st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
)
def test_unknown_types_decode_as_unknown(kind: str, fields: dict[str, Any]) -> None:
    """A frame of a type this version does not know is Unknown(type), whatever it carries."""
    assert decode(json.dumps({**fields, "type": kind})) == Unknown(kind)


@examples(200)
@given(FRAMES, st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=4))
def test_unknown_fields_are_ignored(
    frame: Hello | Webhook | Ack | Nack, extra: dict[str, Any]
) -> None:
    """Fields a frame type does not have (a replayed webhook's ``"replay": true``) change
    nothing, wherever they stand in the object."""
    obj = wire(frame)
    unknown = {k: v for k, v in extra.items() if k not in obj}
    assert decode(json.dumps({**unknown, **obj})) == frame
    assert decode(json.dumps({**obj, **unknown})) == frame


@st.composite
def wrongly_typed(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame's object with one field given a value of the wrong JSON type."""
    obj = wire(draw(FRAMES))
    name = draw(st.sampled_from(sorted(FIELDS[obj["type"]])))
    if FIELDS[obj["type"]][name] is int:
        wrong = JSON_VALUES.filter(lambda v: not is_int(v))
    else:
        wrong = JSON_VALUES.filter(lambda v: not isinstance(v, str))
    obj[name] = draw(wrong)
    return obj


@examples(300)
@given(st.one_of(wrongly_typed(), FRAMES.map(wire).map(lambda o: {**o, "type": 1})))
def test_wrong_field_types_are_frame_errors(obj: dict[str, Any]) -> None:
    """A known frame with a field of the wrong type (true or 1.0 for an integer, a number
    for a string, null, an array...) is a FrameError, never a frame with a bad value."""
    with pytest.raises(FrameError):
        decode(json.dumps(obj))


@examples(100)
@given(FRAMES, st.data())
def test_a_missing_required_field_is_a_frame_error(
    frame: Hello | Webhook | Ack | Nack, data: st.DataObject
) -> None:
    """Each field but a nack's ``reason`` is required."""
    obj = wire(frame)
    required = sorted(set(FIELDS[obj["type"]]) - {"reason"})
    del obj[data.draw(st.sampled_from(required))]
    with pytest.raises(FrameError):
        decode(json.dumps(obj))


@examples(200)
@given(TEXT, st.text(max_size=3 * MAX_REASON_CHARS))
def test_nack_reasons_are_truncated_not_refused(delivery_id: str, reason: str) -> None:
    """A nack's reason longer than MAX_REASON_CHARS is cut to it; the nack still counts."""
    got = decode(encode(Nack(delivery_id, reason)))
    assert got == Nack(delivery_id, reason[:MAX_REASON_CHARS])
    assert decode(json.dumps({"type": "nack", "id": delivery_id})) == Nack(delivery_id, "")
