"""``linerelay config``: the relay's configuration keys, documented from the config object."""

from __future__ import annotations

import argparse

from appliance import config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config``."""
    parser = subparsers.add_parser(
        "config",
        help="document the relay's config keys",
        description="Print docs/config.md, generated from the config object's field docs.",
    )
    parser.add_argument(
        "--docs", action="store_true", required=True, help="print the keys as Markdown"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the generated docs."""
    print(config.render_docs(), end="")
    return 0
