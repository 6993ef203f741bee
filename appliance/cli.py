"""The linerelay command: one entry point, one subcommand per concern.

Each subcommand lives with the code it drives and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
callable taking the parsed namespace and returning an exit status.
Exit status 2 means bad input (argparse uses it too); 1 means the command ran
and found a failure; 0 means success.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance import version

#: Each subcommand and the module that registers it, in the order `--help` lists them.
SUBCOMMANDS = {
    "serve": "appliance.serve_cli",
    "tenant": "appliance.tenant_cli",
    "webhooks": "appliance.webhooks_cli",
    "admin-token": "appliance.console.cli",
    "config": "appliance.config_cli",
    "provision": "appliance.provision",
    "loadtest": "loadtest.cli",
    "bridge": "bridge.cli",
    "tls": "tls.cli",
    "conformance": "conformance.cli",
}


def default_state_dir() -> str:
    """``$LINERELAY_STATE_DIR``, else ``./var`` (PROTOCOL.md §3)."""
    return os.environ.get("LINERELAY_STATE_DIR") or "var"


STATE_DIR_HELP = (
    "where tenants, the store and the dev PKI live (default: $LINERELAY_STATE_DIR or ./var)"
)


def add_state_dir(parser: argparse.ArgumentParser, help: str = STATE_DIR_HELP) -> None:
    """Accept ``--state-dir`` on a subcommand too, so it may follow the command name.

    The default is suppressed here so an absent flag does not overwrite a
    value given before the command name; :func:`state_dir` applies it.
    """
    parser.add_argument("--state-dir", default=argparse.SUPPRESS, help=help)


def explicit_state_dir(args: argparse.Namespace) -> str | None:
    """``--state-dir`` if it was given on the command line, else None."""
    value = getattr(args, "state_dir", None)
    return None if value is None else str(value)


def state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else ``$LINERELAY_STATE_DIR``, else ``./var``."""
    return Path(explicit_state_dir(args) or default_state_dir())


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``linerelay`` parser: every subcommand, or ``only`` that one.

    Each subcommand's module is imported to register it, and some import a
    great deal (Locust, sslyze): ``linerelay serve`` registers only itself,
    which saves about a third of the relay's start on a slow machine.
    """
    parser = argparse.ArgumentParser(
        prog="linerelay", description="The LINE relay appliance: relay, bridge and their tools."
    )
    parser.add_argument("--state-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"linerelay {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(subparsers)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``, if it names one (after ``--state-dir DIR``)."""
    rest = list(argv)
    if rest[:1] == ["--state-dir"]:
        rest = rest[2:]
    elif rest[:1] and rest[0].startswith("--state-dir="):
        rest = rest[1:]
    return rest[0] if rest and rest[0] in SUBCOMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    sys.stdout.flush()
    return status
