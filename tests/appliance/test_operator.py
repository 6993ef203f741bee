"""Where operator commands act (appliance/operator.py) and the webhooks CLI's parsing.

The admin listener here is a small real HTTP server recording what it is
sent; the commands against a real relay are tests/integration/test_webhooks_cli.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.cli import build_parser, main
from appliance.config import RelayConfig
from appliance.operator import (
    ADMIN_TOKEN_ENV,
    AdminClient,
    NoStore,
    OperatorError,
    Target,
    admin_base_url,
    admin_token,
    has_store,
    local_webhooks,
    relay_running,
)
from appliance.state import StateDir
from appliance.tenants import hold_pid_file
from appliance.webhooks_cli import sample_body


class Admin:
    """An HTTP server answering every request with ``status`` and ``body``."""

    def __init__(self, status: int, body: bytes) -> None:
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.seen.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def admin() -> Iterator[Admin]:
    server = Admin(200, b'{"webhooks": []}')
    yield server
    server.server.shutdown()


def test_the_client_sends_the_admin_token_as_a_bearer_header(admin: Admin) -> None:
    answer = AdminClient(admin.url, "tok-123").get("/api/webhooks")
    assert (answer.status, answer.body) == (200, {"webhooks": []})
    assert admin.seen[0]["Authorization"] == "Bearer tok-123"
    AdminClient(admin.url, None).get("/api/webhooks")
    assert "Authorization" not in admin.seen[1]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_bad_input_and_never_echoed(status: int) -> None:
    server = Admin(status, b'{"error": "unauthorized"}')
    try:
        with pytest.raises(OperatorError) as refused:
            AdminClient(server.url, "tok-secret").get("/api/webhooks")
    finally:
        server.server.shutdown()
    assert refused.value.status == 2
    assert ADMIN_TOKEN_ENV in str(refused.value)
    assert "tok-secret" not in str(refused.value)


def test_an_admin_listener_that_is_not_ours_is_a_failure() -> None:
    server = Admin(200, b"<html>hello</html>")
    try:
        with pytest.raises(OperatorError, match="without a JSON object") as failed:
            AdminClient(server.url, None).get("/api/webhooks")
    finally:
        server.server.shutdown()
    assert failed.value.status == 1


def test_a_relay_whose_admin_listener_does_not_answer_is_a_failure() -> None:
    with pytest.raises(OperatorError, match="did not answer") as failed:
        AdminClient("http://127.0.0.1:9", None).get("/api/webhooks")
    assert failed.value.status == 1


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9443", "http://127.0.0.1:9443"),
        ("0.0.0.0:9443", "http://127.0.0.1:9443"),
        ("[::]:9443", "http://[::1]:9443"),
        ("[::1]:9443", "http://[::1]:9443"),
        ("10.0.0.5:80", "http://10.0.0.5:80"),
        ("admin.internal:9443", "http://admin.internal:9443"),
    ],
)
def test_the_admin_url_reaches_the_listener_from_this_machine(listen: str, url: str) -> None:
    assert admin_base_url(listen) == url


def test_the_admin_token_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    assert admin_token(argparse.Namespace(admin_token_file=None)) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert admin_token(argparse.Namespace(admin_token_file=tmp_path / "token")) == "from-file"
    (tmp_path / "empty").write_text("\n")
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(OperatorError) as bad:
            admin_token(argparse.Namespace(admin_token_file=path))
        assert bad.value.status == 2
    monkeypatch.delenv(ADMIN_TOKEN_ENV)
    assert admin_token(argparse.Namespace(admin_token_file=None)) is None


def test_a_relay_runs_while_it_holds_the_pid_file(tmp_path: Path) -> None:
    state = StateDir(tmp_path).create()
    assert not relay_running(state)
    fd = hold_pid_file(state)
    try:
        assert relay_running(state)
    finally:
        os.close(fd)
    # A pid file left behind by a relay that stopped is not a running relay.
    assert state.pid_file.exists()
    assert not relay_running(state)


@pytest.mark.parametrize(
    "argv",
    [
        ["webhooks", "list", "--limit", "0"],
        ["webhooks", "list", "--limit", "1001"],
        ["webhooks", "list", "--state", "acked"],
        ["webhooks", "list", "--tenant", "Not_An_Id"],
        ["webhooks", "show"],
        ["webhooks", "replay"],
        ["webhooks", "send"],
        ["tenant", "purge", "-bad-"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2


def test_a_missing_state_dir_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    for argv in (
        ["webhooks", "list"],
        ["webhooks", "replay", "d-1"],
        ["webhooks", "send", "--tenant", "shop"],
        ["tenant", "purge", "shop", "--yes"],
    ):
        assert main([*argv, "--state-dir", str(missing)]) == 2
        assert str(missing) in capsys.readouterr().err


def test_the_sample_is_a_line_text_message_webhook() -> None:
    body, event_id = sample_body("héllo", "U" + "a" * 32, 1_700_000_000_000)
    obj = json.loads(body)
    (event,) = obj["events"]
    assert event["webhookEventId"] == event_id
    assert len(event_id) == 26
    assert (event["type"], event["mode"], event["timestamp"]) == (
        "message",
        "active",
        1_700_000_000_000,
    )
    assert event["message"]["type"] == "text"
    assert event["message"]["text"] == "héllo"
    assert event["source"] == {"type": "user", "userId": "U" + "a" * 32}
    assert event["deliveryContext"] == {"isRedelivery": False}
    assert event["replyToken"]
    assert sample_body("x", "U1", 1)[1] != event_id


def test_read_only_commands_on_a_relay_that_never_started_create_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A state dir before the relay's first start (made by `tenant add`, or by hand).
    state = StateDir(tmp_path / "state").create()
    where = ["--state-dir", str(state.path)]
    assert main(["webhooks", "list", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out) == {"webhooks": []}
    assert main(["webhooks", "list", "--tenant", "shop", *where]) == 0
    for argv in (["show", "d-1"], ["show", "d-1", "--body"], ["replay", "d-1"]):
        assert main(["webhooks", *argv, *where]) == 2
        assert "no webhook d-1" in capsys.readouterr().err
    assert list(state.path.iterdir()) == []


def test_a_stopped_relays_missing_store_is_refused_not_created(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").create()
    target = Target(RelayConfig(state_dir=state.path), state, None)
    assert not has_store(target)

    async def open_it() -> None:
        async with local_webhooks(target):
            pass

    with pytest.raises(NoStore, match="first starts"):
        asyncio.run(open_it())
    assert not state.store.exists()
