"""Frame intake (verify, split) and the status readout, without I/O."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from appliance.protocol import Webhook
from appliance.signature import sign
from bridge.intake import Prepared, Refused, prepare
from bridge.status import BridgeStatus, format_status, is_running, read_status, write_status

SECRET = "channel-secret"


def frame(body: str, signature: str | None = None) -> Webhook:
    return Webhook(
        id="d-1",
        tenant="t",
        body=body,
        signature=signature if signature is not None else sign(SECRET.encode(), body.encode()),
        received_at=0,
        attempt=1,
    )


def test_verified_body_is_split_into_keyed_events() -> None:
    body = json.dumps(
        {
            "destination": "U1",
            "events": [
                {
                    "type": "message",
                    "webhookEventId": "01A",
                    "source": {"type": "user", "userId": "U9"},
                },
                {"type": "follow"},
            ],
        },
        ensure_ascii=False,
    )
    prepared = prepare(frame(body), SECRET)
    assert isinstance(prepared, Prepared)
    assert [e.key for e in prepared.events] == ["id:01A", f"body:{prepared.digest}:1"]
    assert prepared.events[0].chat == "U9"
    assert prepared.events[1].chat.startswith("event:")


def test_signature_is_checked_over_the_exact_utf8_bytes() -> None:
    body = '{"events": [], "note": "caf\u00e9  spaced"}'
    assert isinstance(prepare(frame(body), SECRET), Prepared)
    # The same JSON re-serialised is different bytes and must not verify.
    resigned = frame(json.dumps(json.loads(body)), frame(body).signature)
    assert prepare(resigned, SECRET) == Refused("signature mismatch", security=True)


def test_wrong_or_missing_signature_is_a_security_refusal() -> None:
    assert prepare(frame('{"events": []}', "AAAA"), SECRET) == Refused("signature mismatch", True)
    assert prepare(frame('{"events": []}', ""), SECRET) == Refused("signature mismatch", True)


def test_after_a_secret_rotation_the_previous_secret_verifies_too() -> None:
    body = '{"events": []}'
    signed_before = frame(body, sign(b"old-secret", body.encode()))
    assert prepare(signed_before, SECRET) == Refused("signature mismatch", True)
    assert isinstance(prepare(signed_before, SECRET, "old-secret"), Prepared)
    assert isinstance(prepare(frame(body), SECRET, "old-secret"), Prepared)
    forged = frame(body, sign(b"another", body.encode()))
    assert prepare(forged, SECRET, "old-secret") == Refused("signature mismatch", True)


def test_signed_garbage_is_refused_without_security_flag() -> None:
    refused = prepare(frame("not json"), SECRET)
    assert isinstance(refused, Refused)
    assert not refused.security


def test_status_round_trip_and_readout(tmp_path: Path) -> None:
    status = BridgeStatus(connection="connected", tenant="shop-1", queue_depth=3)
    status.count("replies", 2)
    status.error("chat API: timeout")
    write_status(tmp_path, status.snapshot(os.getpid()))
    snapshot = read_status(tmp_path)
    assert is_running(snapshot)
    text = format_status(snapshot)
    assert "running:      yes" in text
    assert "connected as tenant shop-1" in text
    assert "queue depth:  3" in text
    assert "last error:   chat API: timeout" in text
    assert "replies=2" in text


def test_stale_or_stopped_status_is_not_running(tmp_path: Path) -> None:
    snapshot = BridgeStatus(connection="connected").snapshot(os.getpid())
    assert not is_running(snapshot, now=time.time() + 60)
    assert not is_running({**snapshot, "connection": "stopped"})
    assert not is_running({**snapshot, "pid": 2**22 + 12345})


def test_a_replay_is_its_own_webhook_to_the_inbox_with_the_events_keys_kept() -> None:
    body = json.dumps(
        {"events": [{"type": "message", "webhookEventId": "01A"}, {"type": "follow"}]}
    )
    original = prepare(frame(body), SECRET)
    replays = [
        prepare(dataclasses.replace(frame(body), id=i, replay=True), SECRET) for i in ("r1", "r2")
    ]
    assert isinstance(original, Prepared)
    assert not original.replay
    for replayed in replays:
        assert isinstance(replayed, Prepared)
        assert replayed.replay
        assert replayed.digest != original.digest
        assert [e.key for e in replayed.events] == [e.key for e in original.events]
    assert len({r.digest for r in replays if isinstance(r, Prepared)}) == 2
