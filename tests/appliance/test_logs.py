from __future__ import annotations

import io
import json
import logging

import pytest

from appliance import logs


def test_redact_removes_path_tokens_bearer_and_signatures() -> None:
    text = (
        'GET /bridge/lrb_abc123-_x?x=1 "Authorization: Bearer lrb_tok.en" '
        "x-line-signature: c2lnbmF0dXJl+/= {'x-line-signature': 'AAAA='}"
    )
    out = logs.redact(text)
    for secret in ("lrb_abc123-_x", "lrb_tok.en", "c2lnbmF0dXJl+/=", "AAAA="):
        assert secret not in out
    assert out.count(logs.REDACTED) == 4


def test_redact_removes_bridge_and_admin_tokens_anywhere_in_free_text() -> None:
    bridge = "lrb_" + "k" * 43
    admin = "lra_Zm9vYmFyLWJhei1xdXV4LXRva2VuLXZhbHVlLTEyMzQ"
    out = logs.redact(f"token {bridge} refused; admin={admin}.")
    assert bridge not in out
    assert admin not in out
    assert out == f"token {logs.REDACTED} refused; admin={logs.REDACTED}."


def test_redact_leaves_ordinary_text_alone() -> None:
    assert logs.redact("POST /webhook/shop-1 200 bridge connected") == (
        "POST /webhook/shop-1 200 bridge connected"
    )
    # Names that merely start like a token are not one.
    assert logs.redact("tenant lrb_shop and key lra_x") == "tenant lrb_shop and key lra_x"


def test_records_are_json_lines_with_extra_fields_redacted() -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    logging.getLogger("t").info(
        "request %s", "/bridge/lrb_secret", extra={"tenant": "a", "path": "/bridge/lrb_x"}
    )
    line = json.loads(stream.getvalue())
    assert line["event"] == f"request /bridge/{logs.REDACTED}"
    assert line["tenant"] == "a"
    assert line["path"] == f"/bridge/{logs.REDACTED}"
    assert line["level"] == "info"


def test_exceptions_are_logged_redacted() -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    try:
        raise ValueError("Bearer lrb_leaky")
    except ValueError:
        logging.getLogger("t").exception("boom")
    assert "lrb_leaky" not in stream.getvalue()


async def test_a_workers_lines_all_carry_its_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_TAGS", {})  # this process's tags, for this test only
    stream = io.StringIO()
    logs.configure("info", stream)
    logs.tag(worker=2)
    logging.getLogger("t").info("relay serving", extra={"pid": 7})
    access = logs.AccessLog(stream)
    access.write("webhook", {"tenant": "a"})
    access.flush()
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [(line["event"], line["worker"]) for line in lines] == [
        ("relay serving", 2),
        ("webhook", 2),
    ]
