"""``linerelay admin-token`` (appliance/console/cli.py), run in-process on a real state dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.console.sessions import ADMIN_TOKEN_PREFIX, ConsoleDB
from appliance.state import StateDir
from appliance.tenants import hash_token


def digest_in(state: Path) -> bytes | None:
    db = ConsoleDB(StateDir(state).console)
    try:
        return db.admin_digest()
    finally:
        db.close()


def test_a_new_token_is_printed_once_and_stored_hashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin-token", "--state-dir", str(tmp_path / "state")]) == 0
    out = capsys.readouterr().out
    token = out.split("admin token:", 1)[1].split()[0]
    assert token.startswith(ADMIN_TOKEN_PREFIX)
    assert digest_in(tmp_path / "state") == hash_token(token)


def test_json_output_and_each_run_replaces_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin-token", "--json", "--state-dir", str(tmp_path)]) == 0
    first = json.loads(capsys.readouterr().out)["admin_token"]
    assert main(["--state-dir", str(tmp_path), "admin-token", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)["admin_token"]
    assert first != second
    assert digest_in(tmp_path) == hash_token(second)


def test_revoke_removes_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["admin-token", "--state-dir", str(tmp_path)])
    assert main(["admin-token", "--revoke", "--state-dir", str(tmp_path)]) == 0
    assert "admin token revoked" in capsys.readouterr().out
    assert digest_in(tmp_path) is None
    assert main(["admin-token", "--revoke", "--json", "--state-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"revoked": False}


def test_the_state_dir_may_come_from_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LINERELAY_STATE_DIR", raising=False)
    config = tmp_path / "relay.toml"
    config.write_text(f'state_dir = "{tmp_path / "from-config"}"\n')
    assert main(["admin-token", "--json", "--config", str(config)]) == 0
    token = json.loads(capsys.readouterr().out)["admin_token"]
    assert digest_in(tmp_path / "from-config") == hash_token(token)


def test_a_bad_config_is_exit_status_2_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("admin_auth = 'sometimes'\n")
    assert main(["admin-token", "--config", str(config), "--state-dir", str(tmp_path)]) == 2
    assert "admin_auth" in capsys.readouterr().err
    assert not StateDir(tmp_path).console.exists()


def test_revoking_in_a_missing_state_dir_is_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin-token", "--revoke", "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_a_given_token_is_set_and_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token = "shared-admin-token-" + "x" * 20
    token_file.write_text(token + "\n")
    assert main(["admin-token", "--token-file", str(token_file), "--state-dir", str(tmp_path)]) == 0
    assert token not in capsys.readouterr().out
    assert digest_in(tmp_path) == hash_token(token)


@pytest.mark.parametrize("content", ["", "short", "two words and more than thirty-two chars"])
def test_an_unfit_token_file_exits_2_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    main(["admin-token", "--state-dir", str(tmp_path)])
    before = digest_in(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(content)
    assert main(["admin-token", "--token-file", str(token_file), "--state-dir", str(tmp_path)]) == 2
    assert "token file" in capsys.readouterr().err
    assert digest_in(tmp_path) == before
