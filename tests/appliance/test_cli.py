from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.cli import SUBCOMMANDS, _command, build_parser
from tests.support.relay import LINERELAY


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["serve"], "serve"),
        (["--state-dir", "x", "tenant", "list"], "tenant"),
        (["--state-dir=x", "tls", "check"], "tls"),
        (["--help"], None),
        (["nope"], None),
        ([], None),
    ],
)
def test_the_subcommand_is_found_before_parsing(argv: list[str], command: str | None) -> None:
    assert _command(argv) == command


def test_the_full_parser_lists_every_subcommand() -> None:
    help_text = build_parser().format_help()
    for name in SUBCOMMANDS:
        assert name in help_text


def test_serve_does_not_import_the_load_generator_or_the_tls_scanner() -> None:
    code = (
        "import sys; from appliance.cli import build_parser; build_parser('serve'); "
        "print(sorted(m for m in ('locust', 'gevent', 'sslyze') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_prints_the_version_in_pyproject() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    expected = tomllib.loads(pyproject.read_text())["project"]["version"]
    out = subprocess.run([LINERELAY, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout == f"linerelay {expected}\n"
