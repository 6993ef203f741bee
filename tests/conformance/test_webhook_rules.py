"""The webhook probes' content and judgement (no sockets)."""

from __future__ import annotations

import json

from conformance import webhook
from conformance.catalogue import Status
from conformance.webhook import Exchange, Probe

SECRET = "unit-secret"


def probes() -> dict[str, Probe]:
    return {probe.name: probe for probe in webhook.plan(SECRET, body_limit=4096)}


def test_every_signed_probe_that_is_json_carries_no_events():
    for probe in probes().values():
        if probe.signature is None:
            continue
        try:
            decoded = json.loads(probe.body)
        except ValueError:
            continue  # the malformed-JSON probe
        assert decoded.get("events") in ([], {}), probe.name


def test_the_reserialised_probe_is_signed_over_other_bytes_than_it_sends():
    plan = probes()
    for name in ("reserialised-python", "reserialised-compact"):
        probe = plan[name]
        assert probe.signature != webhook.sign(probe.body, SECRET)
        reserialised = json.dumps(json.loads(probe.body), separators=None)
        compact = json.dumps(json.loads(probe.body), separators=(",", ":"))
        assert probe.signature in (
            webhook.sign(reserialised.encode(), SECRET),
            webhook.sign(compact.encode(), SECRET),
        )


def test_the_oversized_body_is_one_byte_over_the_limit_and_validly_signed():
    probe = probes()["oversized"]
    assert len(probe.body) == 4097
    assert probe.signature == webhook.sign(probe.body, SECRET)


def test_the_header_case_probe_changes_the_name_not_the_signature():
    probe = probes()["signature-header-case"]
    assert "X-LINE-SIGNATURE" in probe.headers
    assert probe.signature == webhook.sign(probe.body, SECRET)


def test_sign_matches_lines_documented_algorithm():
    # base64(HMAC-SHA256(secret, body)); computed independently with openssl dgst.
    assert webhook.sign(b"{}", "secret") == "dzJZAsrKgS3CWXM6rNBGtzgXNyx3e42VtAJkdHRRbhM="


def exchange(
    probe: Probe, status: int, body: bytes = b"", seconds: float = 0.01, version: str = "HTTP/1.1"
) -> Exchange:
    return Exchange(probe, status, body, seconds, version)


def correct_answers() -> dict[str, Exchange]:
    expected = {
        "verify-http1": (200, b"{}"),
        "verify-http2": (200, b"{}"),
        "signature-missing": (401, b'{"error":"invalid_signature"}'),
        "signature-wrong": (401, b'{"error":"invalid_signature"}'),
        "signature-header-case": (200, b"{}"),
        "body-tampered": (401, b'{"error":"invalid_signature"}'),
        "reserialised-python": (401, b'{"error":"invalid_signature"}'),
        "reserialised-compact": (401, b'{"error":"invalid_signature"}'),
        "malformed-json": (400, b'{"error":"malformed_body"}'),
        "malformed-events": (400, b'{"error":"malformed_body"}'),
        "oversized": (413, b'{"error":"body_too_large"}'),
        "get": (405, b""),
    }
    return {
        name: exchange(probe, *expected[name], version="HTTP/2" if probe.http2 else "HTTP/1.1")
        for name, probe in probes().items()
    }


def series(*seconds: float) -> list[Exchange]:
    probe = webhook.latency_probe(SECRET)
    return [exchange(probe, 200, b"{}", value) for value in seconds]


def judged(answers: dict[str, Exchange], latencies: list[Exchange]) -> dict[str, Status]:
    return {item.id: item.status for item in webhook.evaluate(answers, latencies, SECRET)}


def test_correct_answers_pass_every_check():
    result = judged(correct_answers(), series(0.01, 0.02))
    assert set(result.values()) == {Status.PASS}


def test_an_error_body_echoing_the_signature_fails_the_no_echo_check():
    answers = correct_answers()
    wrong = answers["signature-wrong"]
    leaked = json.dumps({"error": "invalid_signature", "got": wrong.probe.signature}).encode()
    answers["signature-wrong"] = exchange(wrong.probe, 401, leaked)
    result = judged(answers, series(0.01))
    assert result["webhook-error-no-echo"] is Status.FAIL


def test_the_right_status_with_another_error_code_fails():
    answers = correct_answers()
    missing = answers["signature-missing"]
    answers["signature-missing"] = exchange(missing.probe, 401, b'{"error":"unauthorized"}')
    assert judged(answers, series(0.01))["webhook-signature-missing"] is Status.FAIL


def test_h2_answered_over_http1_fails_the_http2_check():
    answers = correct_answers()
    answers["verify-http2"] = exchange(answers["verify-http2"].probe, 200, b"{}")
    assert judged(answers, series(0.01))["webhook-verify-http2"] is Status.FAIL


def test_one_slow_answer_in_the_series_fails_latency_and_reports_percentiles():
    latencies = series(*([0.01] * 99 + [1.2]))
    check = next(
        item
        for item in webhook.evaluate(correct_answers(), latencies, SECRET)
        if item.id == "webhook-latency"
    )
    assert check.status is Status.FAIL
    assert "p50 10 ms" in check.detail
    assert "p99 10 ms" in check.detail
    assert "max 1200 ms" in check.detail


def test_a_transport_error_is_reported_not_raised():
    answers = correct_answers()
    probe = answers["oversized"].probe
    answers["oversized"] = Exchange(probe, None, b"", 0.5, error="RemoteProtocolError: reset")
    check = next(
        item
        for item in webhook.evaluate(answers, series(0.01), SECRET)
        if item.id == "webhook-oversized-body"
    )
    assert check.status is Status.FAIL
    assert "reset" in check.detail


def test_percentile_is_nearest_rank():
    assert webhook.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert webhook.percentile([1.0] * 99 + [5.0], 0.99) == 1.0
    assert webhook.percentile([1.0] * 98 + [5.0, 6.0], 0.99) == 5.0
