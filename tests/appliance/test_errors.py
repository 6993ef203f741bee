from __future__ import annotations

import json

import pytest

from appliance import errors


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.InvalidSignature(), 401, "invalid_signature"),
        (errors.MalformedBody(), 400, "malformed_body"),
        (errors.UnknownTenant(), 404, "unknown_tenant"),
        (errors.BodyTooLarge(), 413, "body_too_large"),
        (errors.Overloaded(), 503, "overloaded"),
        (errors.QueueFull(), 503, "overloaded"),
        (errors.MethodNotAllowed(), 405, "method_not_allowed"),
    ],
)
def test_each_error_maps_to_protocol_md_status_and_body(
    error: errors.RelayError, status: int, code: str
) -> None:
    got_status, headers, body = errors.response_for(error)
    assert got_status == status
    assert json.loads(body) == {"error": code}
    assert (b"content-type", b"application/json") in headers


def test_overload_answers_carry_retry_after() -> None:
    _, headers, _ = errors.response_for(errors.QueueFull("tenant a has 5"))
    assert dict(headers)[b"retry-after"] == b"1"


def test_error_bodies_never_carry_the_message() -> None:
    _, _, body = errors.response_for(errors.InvalidSignature("sig was c2VjcmV0"))
    assert b"c2VjcmV0" not in body
