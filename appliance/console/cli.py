"""``linerelay admin-token``: set (or revoke) the admin token of the console and admin API.

The token is printed once and stored only as its digest, in ``STATE/console.db``
(appliance/console/sessions.py). A running relay uses the new token from its
next request; every console session ends, so whoever logged in with the old
token logs in again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from appliance import config as config_module
from appliance.cli import add_state_dir, explicit_state_dir, state_dir
from appliance.console.sessions import ConsoleDB, new_admin_token, now_ms
from appliance.errors import ConfigError, StateDirError
from appliance.state import StateDir

#: A given token's least length: as guessable as 192 random bits in base64 at worst.
MIN_TOKEN_LENGTH = 32


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin-token``."""
    parser = subparsers.add_parser(
        "admin-token",
        help="set a new admin token for the console and admin API; prints it once",
        description="Set a new admin token (printed once, stored hashed) for the operator "
        "console and the admin listener's paths, which need it when admin_listen is not a "
        "loopback address (or admin_auth = 'token'). The old token stops working and every "
        "console session ends. A running relay takes it at once.",
    )
    add_state_dir(parser)
    parser.add_argument(
        "--config", type=Path, help="the relay's config file, for its state_dir (docs/config.md)"
    )
    parser.add_argument("--json", action="store_true", help='print {"admin_token": ...}')
    parser.add_argument(
        "--token-file",
        help="set the token read from FILE ('-' for stdin) instead of a new one: one token for "
        "several nodes (HAProxy's health checks, the CLI); at least 32 printable characters",
    )
    parser.add_argument(
        "--revoke",
        action="store_true",
        help="remove the admin token instead: off loopback, nothing but /healthz is served "
        "until a new one is set",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Set or revoke the admin token; exit status 2 on bad input."""
    try:
        given = None if args.token_file is None or args.revoke else _read_token(args.token_file)
        state = _state(args, create=not args.revoke)
    except (ConfigError, StateDirError) as exc:
        print(f"linerelay admin-token: {exc}", file=sys.stderr)
        return 2
    db = ConsoleDB(state.console)
    try:
        if args.revoke:
            removed = db.clear_admin_token()
            _say(
                args,
                {"revoked": removed},
                "admin token revoked" if removed else "no admin token was set",
            )
            return 0
        token = given or new_admin_token()
        db.set_admin_token(token, now_ms())
    finally:
        db.close()
    if given is not None:
        _say(args, {"set": True}, "admin token set (the one given)")
    elif args.json:
        print(json.dumps({"admin_token": token}))
    else:
        print(f"admin token:  {token}")
        print("(shown once; stored hashed in the state dir. Use it as 'Authorization: Bearer")
        print(" <token>' or to log in to the console; every earlier console session has ended.)")
    return 0


def _read_token(path: str) -> str:
    """The token in ``path`` (``-``: stdin), alone on its line; :class:`ConfigError` if unfit."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file: {exc}") from exc
    token = text.strip()
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise ConfigError(
            f"the token file must hold one token of at least {MIN_TOKEN_LENGTH} printable "
            "characters without spaces"
        )
    return token


def _state(args: argparse.Namespace, create: bool) -> StateDir:
    """``--state-dir``, else the config's ``state_dir`` (with ``--config``), else the
    default; created if ``create``, else it must exist."""
    path = state_dir(args)
    if args.config is not None:
        path = config_module.load(
            args.config, os.environ, {"state_dir": explicit_state_dir(args)}
        ).state_dir
    state = StateDir(path)
    return state.create() if create else state.existing()


def _say(args: argparse.Namespace, as_json: dict[str, object], text: str) -> None:
    print(json.dumps(as_json) if args.json else text)
