"""The webhook half of the suite: signed and unsigned requests, as LINE (or an attacker) sends.

Three layers: :func:`plan` builds the probes (pure: method, headers, body),
:func:`execute` sends them with httpx over HTTP/1.1 and HTTP/2, and
:func:`evaluate` judges the answers against PROTOCOL.md §1 (pure).

Every signed body carries ``"events": []`` (LINE's "Verify" request), so a
correct relay queues nothing and no bridge sees the suite's traffic. The
probes do not verify the server's certificate: the certificate checks judge
that, and a broken chain should not hide how the endpoint behaves.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import ssl
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from conformance.catalogue import CheckResult, Status, result

DEFAULT_BUDGET = 1.0
DEFAULT_BODY_LIMIT = 1024 * 1024
DEFAULT_REQUESTS = 20
REQUEST_TIMEOUT = 10.0
# LINE's destination is the bot's user id: "U" and 32 hex digits.
DESTINATION = "U" + "c0" * 16
SIGNATURE_HEADER = "x-line-signature"
_PARALLEL = 4


def sign(body: bytes, secret: str) -> str:
    """LINE's signature: base64(HMAC-SHA256(channel secret, raw body))."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_body(**extra: str) -> bytes:
    """A Verify body (no events), compact as LINE sends it."""
    return json.dumps(
        {"destination": DESTINATION, "events": [], **extra}, separators=(",", ":")
    ).encode()


@dataclass(frozen=True)
class Probe:
    """One request to send."""

    name: str
    method: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    http2: bool = False

    @property
    def signature(self) -> str | None:
        """The signature this probe sends, whatever the header's case."""
        for key, value in self.headers.items():
            if key.lower() == SIGNATURE_HEADER:
                return value
        return None


@dataclass(frozen=True)
class Exchange:
    """What came back for one probe."""

    probe: Probe
    status: int | None
    body: bytes
    seconds: float
    http_version: str = ""
    error: str = ""
    """Transport failure (connection refused, reset, timeout); empty if a response came."""


def _signed(secret: str, body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", SIGNATURE_HEADER: sign(body, secret)}


def plan(secret: str, body_limit: int = DEFAULT_BODY_LIMIT) -> list[Probe]:
    """The behaviour probes (the latency series is separate)."""
    body = verify_body()
    json_type = {"content-type": "application/json"}
    spaced = (
        b'{ "destination" : "' + DESTINATION.encode() + b'" ,\n  "events" : [ ] }'
    )  # valid JSON, laid out as no serialiser would
    parsed = json.loads(spaced)
    tampered = body.replace(DESTINATION.encode(), DESTINATION[:-1].encode() + b"1")
    not_json = b'{"destination":"' + DESTINATION.encode() + b'","events":['
    events_object = b'{"destination":"' + DESTINATION.encode() + b'","events":{}}'
    overhead = len(verify_body(padding=""))
    oversized = verify_body(padding="x" * (body_limit + 1 - overhead))
    return [
        Probe("verify-http1", "POST", body, _signed(secret, body)),
        Probe("verify-http2", "POST", body, _signed(secret, body), http2=True),
        Probe("signature-missing", "POST", body, dict(json_type)),
        Probe("signature-wrong", "POST", body, _signed(secret + "-not-the-secret", body)),
        Probe(
            "signature-header-case",
            "POST",
            body,
            {"Content-Type": "application/json", "X-LINE-SIGNATURE": sign(body, secret)},
        ),
        Probe(
            "body-tampered",
            "POST",
            tampered,
            {**json_type, SIGNATURE_HEADER: sign(body, secret)},
        ),
        # Signed over what Python's json.dumps and JavaScript's JSON.stringify (smee.io)
        # would re-serialise the body to, not over the bytes sent.
        Probe(
            "reserialised-python",
            "POST",
            spaced,
            {**json_type, SIGNATURE_HEADER: sign(json.dumps(parsed).encode(), secret)},
        ),
        Probe(
            "reserialised-compact",
            "POST",
            spaced,
            {
                **json_type,
                SIGNATURE_HEADER: sign(json.dumps(parsed, separators=(",", ":")).encode(), secret),
            },
        ),
        Probe("malformed-json", "POST", not_json, _signed(secret, not_json)),
        Probe("malformed-events", "POST", events_object, _signed(secret, events_object)),
        Probe("oversized", "POST", oversized, _signed(secret, oversized)),
        Probe("get", "GET"),
    ]


def latency_probe(secret: str) -> Probe:
    """The signed Verify request repeated for the latency series."""
    body = verify_body()
    return Probe("latency", "POST", body, _signed(secret, body))


def _client(http2: bool) -> httpx.AsyncClient:
    # With http2 the client offers ALPN h2 and http/1.1, as LINE's does; the server choosing
    # h2 is what the HTTP/2 check proves (an HTTP/2-only client would use prior knowledge).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return httpx.AsyncClient(
        verify=context,
        http2=http2,
        timeout=REQUEST_TIMEOUT,
        follow_redirects=False,
        headers={"user-agent": "linerelay-conformance/1"},
    )


async def _send(client: httpx.AsyncClient, url: str, probe: Probe) -> Exchange:
    start = time.perf_counter()
    try:
        response = await client.request(
            probe.method, url, content=probe.body or None, headers=probe.headers
        )
    except httpx.HTTPError as exc:
        return Exchange(
            probe,
            None,
            b"",
            time.perf_counter() - start,
            error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        )
    return Exchange(
        probe,
        response.status_code,
        response.content,
        time.perf_counter() - start,
        response.http_version,
    )


async def execute(
    url: str, probes: Sequence[Probe], latency: Probe, requests: int
) -> tuple[dict[str, Exchange], list[Exchange]]:
    """Send ``probes`` (a few at a time), then ``latency`` ``requests`` times in a row."""
    limit = asyncio.Semaphore(_PARALLEL)
    async with _client(http2=False) as http1, _client(http2=True) as http2:

        async def one(probe: Probe) -> Exchange:
            async with limit:
                return await _send(http2 if probe.http2 else http1, url, probe)

        exchanges = await asyncio.gather(*(one(probe) for probe in probes))
    series = []
    async with _client(http2=False) as client:
        for _ in range(requests):
            series.append(await _send(client, url, latency))
    return {exchange.probe.name: exchange for exchange in exchanges}, series


# Judgement.


def _error_code(body: bytes) -> str | None:
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    error = decoded.get("error") if isinstance(decoded, dict) else None
    return error if isinstance(error, str) else None


def _answer(exchange: Exchange) -> str:
    if exchange.error:
        return f"no answer ({exchange.error}) after {exchange.seconds:.2f} s"
    snippet = exchange.body[:80].decode("utf-8", "replace")
    return f"{exchange.status} {snippet!r} in {exchange.seconds * 1000:.0f} ms"


def _expect(
    check_id: str, exchanges: Sequence[Exchange], status: int, error: str | None
) -> CheckResult:
    """Every exchange must have ``status`` and, if ``error``, the body {"error": error}."""
    problems = []
    for exchange in exchanges:
        if exchange.status != status:
            problems.append(f"{exchange.probe.name}: expected {status}, got {_answer(exchange)}")
        elif error is not None and _error_code(exchange.body) != error:
            problems.append(
                f"{exchange.probe.name}: {status} as expected but the body is "
                f'{exchange.body[:80]!r}, not {{"error": "{error}"}}'
            )
    if problems:
        return result(check_id, Status.FAIL, "; ".join(problems))
    answers = "; ".join(f"{e.probe.name}: {_answer(e)}" for e in exchanges)
    return result(check_id, Status.PASS, answers)


_HINTS = {
    401: " (is --tenant-secret this tenant's channel secret?)",
    404: " (is the tenant in the URL known to the relay?)",
}


def _in_budget(check_id: str, exchange: Exchange, budget: float, version: str) -> CheckResult:
    if exchange.status != 200:
        hint = _HINTS.get(exchange.status or 0, "")
        return result(check_id, Status.FAIL, f"expected 200, got {_answer(exchange)}{hint}")
    if exchange.http_version != version:
        return result(
            check_id, Status.FAIL, f"answered 200 but over {exchange.http_version}, not {version}"
        )
    if exchange.seconds > budget:
        return result(
            check_id,
            Status.FAIL,
            f"200 after {exchange.seconds * 1000:.0f} ms: over the {budget * 1000:.0f} ms budget",
        )
    return result(
        check_id,
        Status.PASS,
        f"200 over {version} in {exchange.seconds * 1000:.0f} ms (budget {budget * 1000:.0f} ms)",
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (0 < fraction <= 1)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _latency(series: Sequence[Exchange], budget: float) -> CheckResult:
    if not series:
        return result("webhook-latency", Status.SKIP, "no latency requests (--requests 0)")
    seconds = [exchange.seconds for exchange in series]
    figures = (
        f"{len(series)} signed requests: p50 {statistics.median(seconds) * 1000:.0f} ms, "
        f"p99 {percentile(seconds, 0.99) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms "
        f"(budget {budget * 1000:.0f} ms)"
    )
    not_ok = [exchange for exchange in series if exchange.status != 200]
    over = [exchange for exchange in series if exchange.seconds > budget]
    if not_ok:
        return result(
            "webhook-latency",
            Status.FAIL,
            f"{figures}; {len(not_ok)} not answered 200 (first: {_answer(not_ok[0])})",
        )
    if over:
        return result("webhook-latency", Status.FAIL, f"{figures}; {len(over)} over budget")
    return result("webhook-latency", Status.PASS, figures)


def _no_echo(exchanges: Sequence[Exchange], secret: str) -> CheckResult:
    errors = [e for e in exchanges if e.status is not None and e.status >= 400]
    leaks = []
    for exchange in errors:
        text = exchange.body.decode("utf-8", "replace")
        secrets = [value for value in (exchange.probe.signature, secret) if value]
        if any(value in text for value in secrets):
            leaks.append(exchange.probe.name)
    if leaks:
        return result(
            "webhook-error-no-echo",
            Status.FAIL,
            "error bodies repeat the signature or secret: " + ", ".join(leaks),
        )
    if not errors:
        return result("webhook-error-no-echo", Status.SKIP, "no error response to inspect")
    return result(
        "webhook-error-no-echo",
        Status.PASS,
        f"{len(errors)} error bodies inspected; none repeats the signature or secret",
    )


def evaluate(
    exchanges: dict[str, Exchange],
    series: Sequence[Exchange],
    secret: str,
    budget: float = DEFAULT_BUDGET,
) -> list[CheckResult]:
    """Judge the answers against PROTOCOL.md §1."""
    unauthorised = "invalid_signature"
    malformed = "malformed_body"
    return [
        _in_budget("webhook-verify-http1", exchanges["verify-http1"], budget, "HTTP/1.1"),
        _in_budget("webhook-verify-http2", exchanges["verify-http2"], budget, "HTTP/2"),
        _expect("webhook-signature-missing", [exchanges["signature-missing"]], 401, unauthorised),
        _expect("webhook-signature-wrong", [exchanges["signature-wrong"]], 401, unauthorised),
        _expect("webhook-signature-header-case", [exchanges["signature-header-case"]], 200, None),
        _expect("webhook-body-tampered", [exchanges["body-tampered"]], 401, unauthorised),
        _expect(
            "webhook-reserialised-json",
            [exchanges["reserialised-python"], exchanges["reserialised-compact"]],
            401,
            unauthorised,
        ),
        _expect(
            "webhook-malformed-body",
            [exchanges["malformed-json"], exchanges["malformed-events"]],
            400,
            malformed,
        ),
        _expect("webhook-oversized-body", [exchanges["oversized"]], 413, "body_too_large"),
        _expect("webhook-method-get", [exchanges["get"]], 405, None),
        _no_echo(list(exchanges.values()), secret),
        _latency(series, budget),
    ]
