"""The harness refuses LINE's own hosts and anything that is not an http(s) URL."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtest.cli import register
from loadtest.safety import BadTarget, ForbiddenTarget, check_target, forbidden_domain


@pytest.mark.parametrize(
    "url",
    [
        "https://api.line.me/v2/bot/message/reply",
        "https://line.me",
        "https://API.LINE.ME./webhook/x",
        "https://obs.line-scdn.net/x",
        "https://legy.line-apps.com",
        "http://corp.linecorp.com:8080",
        "https://line.naver.jp",
        "https://manager.line.biz",
        "https://lin.ee/abc",
    ],
)
def test_line_hosts_and_their_subdomains_are_forbidden(url: str) -> None:
    with pytest.raises(ForbiddenTarget, match="LINE forbids"):
        check_target(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443",
        "https://relay.example.com",
        "https://notline.me",
        "http://line.me.example.org",
    ],
)
def test_private_hosts_and_lookalikes_are_allowed(url: str) -> None:
    assert check_target(url)


@pytest.mark.parametrize(
    "url", ["ftp://relay.example", "relay.example:8443", "https://", "wss://x"]
)
def test_non_http_targets_are_bad_input(url: str) -> None:
    with pytest.raises(BadTarget):
        check_target(url)


def test_forbidden_domain_names_the_matching_line_domain() -> None:
    assert forbidden_domain("api-data.line.me") == "line.me"
    assert forbidden_domain("example.com") is None


def test_command_refuses_line_target_with_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    report = tmp_path / "report"
    args = parser.parse_args(
        [
            "loadtest",
            "--target",
            "https://api.line.me",
            "--tenant",
            "shop-1",
            "--channel-secret",
            "s",
            "--report",
            str(report),
        ]
    )
    assert args.func(args) == 2
    assert "LINE forbids load and stress tests" in capsys.readouterr().err
    assert not report.exists()
