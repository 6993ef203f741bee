"""``linerelay tenant connect-line``: LINE's view of a real relay, through the simulated API.

A real relay (``linerelay serve``), the load harness's simulated Messaging API
as a real process (``linerelay loadtest gateway``, knowing one tenant's
channel secret, the relay's dev root and the one channel access token it
takes), and ``linerelay tenant connect-line`` as a subprocess. The gateway
stores the webhook URL and, for LINE's test, really posts a signed
verification webhook to the relay, as LINE would.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import Harness, running_relay
from tests.support.processes import stop
from tests.support.relay import LINERELAY, free_port
from tests.support.tenants import add_tenant
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@dataclass
class Line:
    """The simulated Messaging API, and the files its callers need."""

    url: str
    token_file: Path
    token: str

    def endpoint(self) -> dict[str, object]:
        answer = httpx.get(
            f"{self.url}/v2/bot/channel/webhook/endpoint",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        assert answer.status_code == 200
        found: dict[str, object] = answer.json()
        return found


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "connect-line") as h:
        yield h


@pytest.fixture(scope="module")
def secret(harness: Harness) -> str:
    """The channel secret the simulated LINE signs with."""
    return harness.remember(secrets.token_hex(16))


@pytest.fixture(scope="module")
def line(harness: Harness, secret: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    home = tmp_path_factory.mktemp("line")
    secret_file = home / "channel-secret"
    secret_file.write_text(secret + "\n")
    token = harness.remember("line-access-" + secrets.token_urlsafe(24))
    token_file = home / "access-token"
    token_file.write_text(token + "\n")
    process = subprocess.Popen(
        [
            LINERELAY,
            "loadtest",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--channel-secret-file",
            str(secret_file),
            "--channel-access-token-file",
            str(token_file),
            "--ca",
            str(harness.relay.ca_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["gateway"]
        yield Line(url, token_file, token)
    finally:
        stop(process)


def connect_line(
    harness: Harness, line: Line, tenant: str, *extra: str, token_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``linerelay tenant connect-line TENANT`` against the simulated API, as a subprocess."""
    result = harness.cli(
        "tenant",
        "connect-line",
        tenant,
        "--channel-access-token-file",
        str(token_file or line.token_file),
        "--api-base",
        line.url,
        *extra,
    )
    assert "Traceback" not in result.stderr
    assert line.token not in result.stdout + result.stderr
    return result


def answered(harness: Harness, tenant: str) -> list[tuple[object, object]]:
    """Status and outcome of each webhook the relay answered for ``tenant``, waiting
    for at least one (access lines are written in batches)."""
    lines = wait_for(
        lambda: [
            (line.get("status"), line.get("outcome"))
            for line in harness.log_events("webhook")
            if line.get("tenant") == tenant
        ],
        f"the relay's access line for {tenant}",
    )
    assert isinstance(lines, list)
    return lines


def test_a_reachable_relay_is_set_as_the_webhook_url_and_line_s_test_succeeds(
    harness: Harness, line: Line, secret: str
) -> None:
    tenant = add_tenant(harness.relay.state_dir, secret=secret)
    harness.remember(tenant.token)
    url = harness.relay.webhook_url(tenant.id)
    result = connect_line(harness, line, tenant.id, "--public-url", harness.relay.base_url)
    assert result.returncode == 0, result.stderr
    assert f"webhook URL:  {url} (set in LINE)" in result.stdout
    assert "LINE's test:  success: status 200, reason OK" in result.stdout
    assert line.endpoint() == {"endpoint": url, "active": True}
    # LINE's verification webhook reached the relay, signed, and nothing was queued.
    assert answered(harness, tenant.id) == [(200, "verify")]


def test_a_wrong_channel_secret_fails_the_test_with_line_s_reason(
    harness: Harness, line: Line
) -> None:
    tenant = harness.tenant()  # its own random secret: not the one LINE signs with
    result = connect_line(
        harness, line, tenant.id, "--public-url", harness.relay.base_url, "--json"
    )
    assert result.returncode == 1, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["tenant"] == tenant.id
    assert verdict["webhook_url"] == tenant.url
    assert (verdict["success"], verdict["status_code"]) == (False, 401)
    assert (verdict["reason"], verdict["detail"]) == ("ERROR_STATUS_CODE", "401")
    assert answered(harness, tenant.id) == [(401, "invalid_signature")]


def test_a_relay_that_is_down_fails_the_test_could_not_connect(
    harness: Harness, line: Line
) -> None:
    tenant = harness.tenant()
    down = f"https://127.0.0.1:{free_port()}"
    result = connect_line(harness, line, tenant.id, "--public-url", down)
    assert result.returncode == 1, result.stderr
    assert "LINE's test:  FAILED: status 0, reason COULD_NOT_CONNECT" in result.stdout
    assert line.endpoint()["endpoint"] == f"{down}/webhook/{tenant.id}"


def test_a_channel_access_token_line_refuses_exits_2_saying_what_to_do(
    harness: Harness, line: Line, tmp_path: Path
) -> None:
    tenant = harness.tenant()
    before = line.endpoint()
    wrong = tmp_path / "wrong-token"
    wrong.write_text(harness.remember("not-the-channel-token") + "\n")
    result = connect_line(
        harness, line, tenant.id, "--public-url", harness.relay.base_url, token_file=wrong
    )
    assert result.returncode == 2
    assert "HTTP 401" in result.stderr
    assert "channel access token is invalid or expired" in result.stderr
    assert "not-the-channel-token" not in result.stderr
    assert line.endpoint() == before


def test_a_webhook_url_line_does_not_take_exits_2_with_line_s_reason(
    harness: Harness, line: Line
) -> None:
    tenant = harness.tenant()
    result = connect_line(harness, line, tenant.id, "--public-url", "http://relay.example.com")
    assert result.returncode == 2
    assert "HTTP 400" in result.stderr
    assert "endpoint: must be an HTTPS URL" in result.stderr


def test_line_s_api_unreachable_exits_1(harness: Harness, line: Line) -> None:
    tenant = harness.tenant()
    result = harness.cli(
        "tenant",
        "connect-line",
        tenant.id,
        "--channel-access-token-file",
        str(line.token_file),
        "--api-base",
        f"http://127.0.0.1:{free_port()}",
    )
    assert result.returncode == 1
    assert "no answer from LINE's API" in result.stderr
    assert line.token not in result.stderr


@pytest.mark.parametrize(
    ("tenant", "token_file", "message"),
    [
        ("no-such-shop", None, "no tenant 'no-such-shop'"),
        ("Bad_Id", None, "invalid tenant id"),
        ("EXISTING", "/nonexistent/token", "cannot read the channel access token"),
        ("EXISTING", "EMPTY", "must hold the token alone"),
    ],
)
def test_bad_input_exits_2_and_asks_line_nothing(
    harness: Harness,
    line: Line,
    tmp_path: Path,
    tenant: str,
    token_file: str | None,
    message: str,
) -> None:
    if tenant == "EXISTING":
        tenant = harness.tenant().id
    path = Path(token_file) if token_file else None
    if token_file == "EMPTY":
        path = tmp_path / "empty"
        path.write_text("\n")
    before = httpx.get(f"{line.url}/stats", timeout=10).json()
    result = connect_line(harness, line, tenant, token_file=path)
    assert result.returncode == 2
    assert message in result.stderr
    assert httpx.get(f"{line.url}/stats", timeout=10).json() == before
