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

# Modules that contribute subcommands, in the order `--help` lists them.
SUBCOMMANDS = (
    "appliance.serve_cli",
    "appliance.tenant_cli",
    "appliance.config_cli",
    "appliance.provision",
    "loadtest.cli",
    "bridge.cli",
    "tls.cli",
    "conformance.cli",
)


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


def build_parser() -> argparse.ArgumentParser:
    """The full ``linerelay`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="linerelay", description="The LINE relay appliance: relay, bridge and their tools."
    )
    parser.add_argument("--state-dir", default=None, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    sys.stdout.flush()
    return status
