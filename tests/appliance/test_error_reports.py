"""Error reports: what :func:`appliance.error_reports.scrub` lets out of the process.

The events are built by sentry-sdk itself (``event_from_exception`` on real
exceptions, with local variables on, as a careless setup would send them)
or follow the shapes its integrations write (request, breadcrumbs, log
entries), with the relay's real values in them: a LINE body from the shared
fixtures, its signature, a bridge token, a channel secret.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sentry_sdk.consts import DEFAULT_OPTIONS
from sentry_sdk.utils import event_from_exception

from appliance.console.sessions import new_admin_token
from appliance.error_reports import REDACTED, before_send, scrub
from appliance.signature import sign
from appliance.tenants import new_token

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "line-webhooks"
SECRET = "8c1a2e4f6b3d5a7c9e0f1b2d3c4a5e6f"  # LINE's shape: 32 hex digits
BODY = (FIXTURES / "sdk-java" / "text-user.json").read_bytes()
SIGNATURE = sign(SECRET.encode(), BODY)
TOKEN = new_token()


def sensitive() -> list[str]:
    """Everything that must not be in a report, as text would carry it."""
    return [SECRET, SIGNATURE, TOKEN, BODY.decode(), BODY.decode()[:60]]


def leaks(event: object) -> list[str]:
    text = json.dumps(event, default=str)
    return [value for value in sensitive() if value in text]


def handle_webhook(body: bytes, signature: str, secret: bytes, token: str) -> None:
    """Fails as an ingress bug would, with the request's values in its frame."""
    raise RuntimeError("store returned nothing")


def exception_event() -> dict[str, Any]:
    options = dict(DEFAULT_OPTIONS, include_local_variables=True)
    try:
        handle_webhook(BODY, SIGNATURE, SECRET.encode(), TOKEN)
    except RuntimeError as exc:
        event, _ = event_from_exception(exc, client_options=options)
    event = dict(event)
    event.update(event_id="0f" * 16, logger="appliance.ingress")
    event["contexts"] = {"trace": {"trace_id": "ab" * 16, "span_id": "cd" * 8}}
    return event


def test_the_events_are_real_enough_to_leak() -> None:
    # Without the scrub, such an event does carry the secret, the body, the token.
    assert set(leaks(exception_event())) >= {SECRET, TOKEN, SIGNATURE}


def test_local_variables_of_frames_never_leave() -> None:
    event = scrub(exception_event(), {SECRET})
    frames = event["exception"]["values"][0]["stacktrace"]["frames"]
    assert all("vars" not in frame for frame in frames)
    assert leaks(event) == []
    # What makes the report useful stays.
    assert "handle_webhook" in [frame["function"] for frame in frames]
    assert event["exception"]["values"][0]["value"] == "store returned nothing"
    assert event["event_id"] == "0f" * 16
    assert event["contexts"]["trace"]["trace_id"] == "ab" * 16


def test_request_bodies_cookies_and_credential_headers_are_dropped() -> None:
    event = exception_event()
    event["request"] = {
        "url": f"https://relay.example.com/bridge/{TOKEN}",
        "method": "POST",
        "data": BODY.decode(),
        "query_string": f"token={TOKEN}",
        "cookies": {"session": TOKEN},
        "env": {"REMOTE_ADDR": "203.0.113.9"},
        "headers": {
            "X-Line-Signature": SIGNATURE,
            "Authorization": f"Bearer {TOKEN}",
            "Cookie": f"linerelay_admin={TOKEN}",
            "Content-Type": "application/json",
            "User-Agent": "LineBotWebhook/2.0",
        },
    }
    request = scrub(event)["request"]
    assert set(request) == {"url", "method", "headers"}
    headers = request["headers"]
    assert headers["X-Line-Signature"] == headers["Authorization"] == REDACTED
    assert headers["Cookie"] == REDACTED
    assert headers["User-Agent"] == "LineBotWebhook/2.0"
    assert request["url"] == f"https://relay.example.com/bridge/{REDACTED}"
    assert leaks(request) == []


def test_tokens_signatures_and_bodies_in_messages_and_breadcrumbs_are_redacted() -> None:
    event = exception_event()
    event["logentry"] = {
        "message": "bridge %s failed",
        "formatted": f"bridge /bridge/{TOKEN} failed",
        "params": [f"/bridge/{TOKEN}"],
    }
    event["exception"]["values"][0]["value"] = (
        f"could not store {BODY.decode()!r} signed {SIGNATURE}"
    )
    event["breadcrumbs"] = {
        "values": [
            {
                "category": "hypercorn.access",
                "message": f'GET /bridge/{TOKEN} 101 "x-line-signature: {SIGNATURE}"',
                "level": "info",
                "data": {"tenant": "shop-42", "peer": "203.0.113.9"},
            },
            {
                "category": "appliance.bridges",
                "message": "bridge connected",
                "data": {"tenant": "shop-42", "token": TOKEN, "attempt": f"token {TOKEN}"},
            },
        ]
    }
    cleaned = scrub(event)
    assert leaks(cleaned) == []
    first, second = cleaned["breadcrumbs"]["values"]
    assert first["data"] == {"tenant": "shop-42", "peer": "203.0.113.9"}
    assert second["data"]["token"] == REDACTED
    assert second["message"] == "bridge connected"
    assert "a webhook body" in cleaned["exception"]["values"][0]["value"]


def test_known_channel_secrets_are_redacted_wherever_they_appear() -> None:
    odd = "s3cret with: spaces!"  # an operator's own secret, of no recognisable shape
    event = exception_event()
    event["extra"] = {
        "why": f"hmac key {SECRET} refused",
        "also": f"[{odd}]",
        "digest": "deadbeef" * 4,  # 32 hex digits that are no secret
    }
    cleaned = scrub(event, {SECRET, odd})
    assert cleaned["extra"]["why"] == f"hmac key {REDACTED} refused"
    assert cleaned["extra"]["also"] == f"[{REDACTED}]"
    assert cleaned["extra"]["digest"] == "deadbeef" * 4
    assert leaks(cleaned) == []


def test_values_under_credential_keys_are_redacted_whatever_they_look_like() -> None:
    event = exception_event()
    event["extra"] = {
        "channel_secret": "x",
        "previous_channel_secret": "y",
        "relay_token": "z",
        "sentry_dsn": "https://k@sentry.example/1",
        "password": "p",
        "body": "{}",
        "tenant": "shop-42",
        "token_hash": None,
    }
    extra = scrub(event)["extra"]
    assert {k for k, v in extra.items() if v == REDACTED} == {
        "channel_secret",
        "previous_channel_secret",
        "relay_token",
        "sentry_dsn",
        "password",
        "body",
    }
    assert (extra["tenant"], extra["token_hash"]) == ("shop-42", None)


def test_scrub_leaves_the_event_it_was_given_unchanged() -> None:
    event = exception_event()
    before = copy.deepcopy(event)
    scrub(event, {SECRET})
    assert event == before


def test_only_events_that_report_an_exception_are_sent() -> None:
    plain_error = {"level": "error", "logentry": {"message": "reload: config kept"}}
    assert before_send(plain_error) is None
    assert before_send({"exception": {"values": []}}) is None
    sent = before_send(exception_event(), {SECRET})
    assert sent is not None
    assert leaks(sent) == []


def test_without_a_dsn_sentry_sdk_is_never_imported() -> None:
    code = (
        "import sys\n"
        "from appliance import error_reports, server\n"
        "assert error_reports.start('', lambda: []) is False\n"
        "print('sentry_sdk' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_a_bare_signature_is_recognised_by_its_shape() -> None:
    event = exception_event()
    event["exception"]["values"][0]["value"] = f"claimed {SIGNATURE}, computed {SIGNATURE[::-1]}"
    value = scrub(event)["exception"]["values"][0]["value"]
    assert value.startswith(f"claimed {REDACTED}, computed ")
    assert SIGNATURE not in value


def test_admin_and_bridge_tokens_in_free_text_are_redacted() -> None:
    admin, bridge = new_admin_token(), new_token()
    event = exception_event()
    event["exception"]["values"][0]["value"] = f"login with {admin} failed; bridge {bridge}"
    event["breadcrumbs"] = {"values": [{"message": f"admin token set: {admin}.", "data": {}}]}
    cleaned = scrub(event)
    value = cleaned["exception"]["values"][0]["value"]
    assert value == f"login with {REDACTED} failed; bridge {REDACTED}"
    assert cleaned["breadcrumbs"]["values"][0]["message"] == f"admin token set: {REDACTED}."
    assert admin not in json.dumps(cleaned, default=str)
