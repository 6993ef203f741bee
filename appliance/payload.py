"""The shape check a webhook body must pass before it is queued (PROTOCOL.md §1).

The relay never rewrites a body: it only decides whether the bytes are a UTF-8
JSON object whose ``events`` is an array, and how many events there are.
"""

from __future__ import annotations

import json
from typing import NoReturn

from appliance.errors import MalformedBody


def _not_json(constant: str) -> NoReturn:
    """Python's json reads NaN, Infinity and -Infinity; JSON has no such numbers."""
    raise ValueError(f"{constant} is not JSON")


#: One decoder for every body (json.loads with options would build one per call).
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def count_events(body: bytes) -> int:
    """The number of events in ``body``; raises :class:`MalformedBody` if it is not a webhook."""
    try:
        obj = _DECODER.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedBody("body is not UTF-8 JSON") from exc
    if not isinstance(obj, dict):
        raise MalformedBody("body is not a JSON object")
    events = obj.get("events")
    if not isinstance(events, list):
        raise MalformedBody("'events' is not an array")
    return len(events)


def event_types(body: bytes) -> tuple[str, ...]:
    """The ``type`` of each event in a stored ``body``, in order ("?" where an event has
    none); () for a body that is not a webhook (the relay stores none such)."""
    try:
        obj = _DECODER.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ()
    events = obj.get("events") if isinstance(obj, dict) else None
    if not isinstance(events, list):
        return ()
    return tuple(
        str(event["type"])
        if isinstance(event, dict) and isinstance(event.get("type"), str)
        else "?"
        for event in events
    )
