"""``linerelay config``: the relay's (or the bridge's) config keys, documented from the config object."""

from __future__ import annotations

import argparse

from appliance import config
from bridge import config as bridge_config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config``."""
    parser = subparsers.add_parser(
        "config",
        help="document the relay's config keys",
        description="Print docs/config.md (with --bridge: docs/bridge-config.md), generated "
        "from the config object's field docs.",
    )
    parser.add_argument(
        "--docs", action="store_true", required=True, help="print the keys as Markdown"
    )
    parser.add_argument(
        "--bridge", action="store_true", help="the bridge's JSON config instead of the relay's"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the generated docs."""
    print(bridge_config.render_docs() if args.bridge else config.render_docs(), end="")
    return 0
