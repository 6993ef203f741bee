"""``sentry_dsn``: a real relay reports an unexpected exception, and nothing sensitive with it.

A tiny real HTTP server stands in for Sentry's ingest endpoint (the DSN
``http://KEY@127.0.0.1:PORT/1``) and keeps every envelope sentry-sdk sends.
The relay first does its ordinary work with secrets in hand (a signed
webhook with a body, a bridge whose token is in its URL), then its tenants
file is broken under it (the table renamed by another process): its
housekeeping fails with an exception it did not expect, which it logs with a
traceback, and which must reach "Sentry" scrubbed.
"""

from __future__ import annotations

import gzip
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.integration.helpers import (
    TIMEOUT,
    Harness,
    async_client,
    post,
    running_relay,
    wait_for,
    webhook_body,
)

pytestmark = pytest.mark.integration

KEY = "f00dfeed" * 4


def decompress(data: bytes, encoding: str | None) -> bytes:
    """An envelope as sentry-sdk compressed it: gzip, or brotli when that is installed."""
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "br":
        import brotli  # noqa: PLC0415 (sentry-sdk uses it only when it is there)

        return bytes(brotli.decompress(data))
    assert encoding is None, encoding
    return data


class Ingest:
    """Sentry's envelope endpoint, as a small real HTTP server that keeps what it gets."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self.paths: list[str] = []
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                data = decompress(data, self.headers.get("Content-Encoding"))
                ingest.paths.append(self.path)
                ingest.envelopes.append(data)
                answer = b'{"id":"' + b"0" * 32 + b'"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://{KEY}@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        """The error events among the envelopes (an envelope: header line, then items)."""
        found = []
        for envelope in self.envelopes:
            lines = envelope.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found


@pytest.fixture(scope="module")
def ingest() -> Iterator[Ingest]:
    stand_in = Ingest()
    stand_in.thread.start()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, ingest: Ingest) -> Iterator[Harness]:
    config = f'sentry_dsn = "{ingest.dsn}"\nhypercorn_access_log = true\n'
    with running_relay(
        tmp_path_factory, "sentry", config=config, expected_errors=("housekeeping failed",)
    ) as h:
        yield h


async def test_an_unexpected_exception_is_reported_with_no_body_secret_token_or_signature(
    harness: Harness, ingest: Ingest
) -> None:
    tenant = harness.tenant()
    marker = "private-" + secrets.token_hex(8)
    body = webhook_body(marker)
    signature = harness.sign(tenant.secret, body)
    async with async_client(harness) as client:
        response = await client.post(
            tenant.url, content=body, headers={"x-line-signature": signature}
        )
        assert response.status_code == 200
        assert (await post(client, harness, tenant, webhook_body("second"))).status_code == 200
        # A token in a path that Hypercorn serves: its access line (a breadcrumb) holds it.
        stray = await client.get(f"{harness.relay.base_url}/bridge/{tenant.token}")
        assert stray.status_code in (400, 404, 405, 426)
    async with connect(
        f"{harness.relay.bridge_url}/{tenant.token}", ssl=harness.ssl, open_timeout=TIMEOUT
    ) as bridge:
        hello = json.loads(await bridge.recv(TIMEOUT))
        assert hello["tenant"] == tenant.id
        frame = json.loads(await bridge.recv(TIMEOUT))
        await bridge.send(json.dumps({"type": "ack", "id": frame["id"]}))
    assert ingest.envelopes == []  # nothing is reported while all is well

    broken = sqlite3.connect(harness.relay.state.tenants)
    broken.execute("ALTER TABLE tenants RENAME TO tenants_elsewhere")
    broken.commit()
    broken.close()

    def reported() -> list[dict[str, Any]]:
        return [
            event
            for event in ingest.events()
            if event.get("logentry", {}).get("message") == "housekeeping failed"
        ]

    event = wait_for(reported, "the housekeeping failure's report")[0]
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "OperationalError"
    assert "tenants" in exception["value"]
    assert event["release"].startswith("linerelay@")
    assert event["logger"] == "appliance.server"
    assert ingest.paths[0] == "/api/1/envelope/"
    # The log lines before it came along as breadcrumbs, scrubbed.
    crumbs = [crumb.get("message") for crumb in event["breadcrumbs"]["values"]]
    assert "bridge connected" in crumbs
    assert all("vars" not in frame for frame in exception["stacktrace"]["frames"])
    sent = b"".join(ingest.envelopes).decode("utf-8", "replace")
    assert "/bridge/[redacted]" in sent  # the stray request's access line, scrubbed
    for value in (tenant.secret, tenant.token, signature, marker, body.decode()[:40]):
        assert value not in sent, "a report carried a secret, token, signature or body"
