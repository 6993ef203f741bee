"""``linerelay bridge --config FILE [--status]``: run a bridge, or show how it is doing."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from appliance import logs
from appliance.cli import add_state_dir, default_state_dir, explicit_state_dir
from bridge.config import BridgeConfigError, ConfigFile, resolve_state_dir
from bridge.status import StatusUnavailable, format_status, is_running, read_status


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bridge`` subcommand."""
    parser = subparsers.add_parser(
        "bridge",
        help="run a bridge: relay WebSocket -> chat model -> LINE reply",
        description=(
            "Keep an outbound WebSocket to the relay, verify every webhook again, "
            "ask an OpenAI-compatible chat API and answer through LINE's Messaging API. "
            "See docs/bridge.md."
        ),
    )
    add_state_dir(
        parser,
        help="the bridge's queue and status (default: the state_dir key, else "
        "$LINERELAY_STATE_DIR, else ./var)",
    )
    parser.add_argument(
        "--config", required=True, type=Path, metavar="FILE", help="the bridge's JSON config file"
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print the running bridge's status (connection, queue depth, last error) and exit",
    )
    parser.add_argument("--json", action="store_true", help="with --status: print the raw JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the bridge (or print its status); returns the exit status."""
    logs.configure("info")
    if args.status:
        return _show_status(args)
    try:
        config_file = ConfigFile(args.config)
    except BridgeConfigError as exc:
        print(f"linerelay bridge: {exc}", file=sys.stderr)
        return 2
    logs.configure(config_file.current.log_level)
    # Request lines carry URLs, and a URL may carry a credential: keep httpx quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Imported here: line-bot-sdk's models take most of a second to import, and every
    # other linerelay command builds this parser.
    from bridge.inbox import InboxError  # noqa: PLC0415
    from bridge.service import Bridge, StateDirBusy, lock_state_dir  # noqa: PLC0415

    state_dir = resolve_state_dir(
        config_file.current, args.config, explicit_state_dir(args), default_state_dir()
    )
    try:
        lock = lock_state_dir(state_dir)
    except (StateDirBusy, OSError) as exc:
        print(f"linerelay bridge: {exc}", file=sys.stderr)
        return 2
    try:
        bridge = Bridge(config_file, state_dir)
    except InboxError as exc:
        print(f"linerelay bridge: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(bridge.run())
    finally:
        lock.close()


def _show_status(args: argparse.Namespace) -> int:
    """Exit 0 when the bridge is running, 1 when it is not, 2 when there is no status."""
    override = explicit_state_dir(args)
    try:
        config = ConfigFile(args.config).current
    except BridgeConfigError as exc:
        print(f"linerelay bridge: {exc}", file=sys.stderr)
        return 2
    state_dir = resolve_state_dir(config, args.config, override, default_state_dir())
    try:
        snapshot = read_status(state_dir)
    except StatusUnavailable as exc:
        print(f"linerelay bridge: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(snapshot, indent=1))
    else:
        print(format_status(snapshot))
    return 0 if is_running(snapshot) else 1
