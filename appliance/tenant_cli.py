"""``linerelay tenant add|list|remove|rotate-token`` (PROTOCOL.md §3), and ``purge``
(appliance/webhooks_cli.py).

Changes land in ``STATE/tenants.db``; a running relay notices them within
``tenant_poll_interval`` seconds, without a restart. Bad input exits with
status 2 and changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from appliance import config as config_module
from appliance import webhooks_cli
from appliance.cli import add_state_dir, state_dir
from appliance.errors import ConfigError, StateDirError, TenantError
from appliance.state import StateDir
from appliance.store.sqlite import count_unacked, purge_file
from appliance.tenants import TenantRegistry, notify_relay, validate_id


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tenant`` and its subcommands."""
    parser = subparsers.add_parser("tenant", help="add, list, remove tenants; rotate tokens")
    add_state_dir(parser)
    commands = parser.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")

    add = commands.add_parser("add", help="add a tenant; prints its bridge token once")
    add_state_dir(add)
    add.add_argument("tenant", help="tenant id: [a-z0-9][a-z0-9-]{0,62}")
    secret = add.add_mutually_exclusive_group(required=True)
    secret.add_argument("--channel-secret", help="the LINE channel secret")
    secret.add_argument(
        "--channel-secret-file", help="read the channel secret from FILE ('-' for stdin)"
    )
    add.add_argument("--json", action="store_true", help="print a JSON object")
    add.add_argument(
        "--public-url",
        help="base URL LINE reaches the relay at, for the printed webhook URL "
        "(default: https://<listen address>)",
    )
    add.set_defaults(func=_add)

    listing = commands.add_parser("list", help="list tenants and their queue depth")
    add_state_dir(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    remove = commands.add_parser("remove", help="remove a tenant and close its bridges")
    add_state_dir(remove)
    remove.add_argument("tenant")
    remove.add_argument(
        "--force",
        action="store_true",
        help="remove even with unacked webhooks (they are discarded)",
    )
    remove.set_defaults(func=_remove)

    rotate = commands.add_parser("rotate-token", help="issue a new bridge token; the old stops")
    add_state_dir(rotate)
    rotate.add_argument("tenant")
    rotate.add_argument("--json", action="store_true", help="print a JSON object")
    rotate.set_defaults(func=_rotate)

    webhooks_cli.register_purge(commands)


def _state(args: argparse.Namespace, create: bool = False) -> StateDir:
    """The state dir of ``args``: created by ``add``, required to exist by the rest."""
    state = StateDir(state_dir(args))
    return state.create() if create else state.existing()


def _fail(message: str) -> int:
    print(f"linerelay tenant: {message}", file=sys.stderr)
    return 2


def _read_secret(args: argparse.Namespace) -> str:
    if args.channel_secret is not None:
        return str(args.channel_secret)
    source = args.channel_secret_file
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TenantError(f"cannot read the channel secret from {source}: {exc}") from exc


def _webhook_url(args: argparse.Namespace, tenant: str) -> str:
    base = args.public_url
    if not base:
        listen = config_module.RelayConfig().listen
        with contextlib.suppress(ConfigError):  # a bad env var is serve's to report
            listen = config_module.load(None, os.environ).listen
        base = f"https://{listen}"
    return f"{base.rstrip('/')}/webhook/{tenant}"


def _add(args: argparse.Namespace) -> int:
    try:
        validate_id(args.tenant)
        secret = _read_secret(args)
        state = _state(args, create=True)
        registry = TenantRegistry(state.tenants)
        try:
            token = registry.add(args.tenant, secret)
        finally:
            registry.close()
        notify_relay(state)
    except (TenantError, StateDirError) as exc:
        return _fail(str(exc))
    url = _webhook_url(args, args.tenant)
    if args.json:
        print(json.dumps({"tenant": args.tenant, "token": token, "webhook_url": url}))
    else:
        print(f"tenant:       {args.tenant}")
        print(f"webhook URL:  {url}")
        print(f"bridge token: {token}")
        print("The token is shown only this once; it is stored hashed.")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        state = _state(args)
    except StateDirError as exc:
        return _fail(str(exc))
    registry = TenantRegistry(state.tenants)
    try:
        tenants = registry.list()
    finally:
        registry.close()
    rows = [
        {
            "tenant": t.id,
            "created_at": t.created_at,
            "rotated_at": t.rotated_at,
            "queued": count_unacked(state.store, t.id),
        }
        for t in tenants
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['tenant']}\tqueued={row['queued']}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    try:
        validate_id(args.tenant)
        state = _state(args)
        registry = TenantRegistry(state.tenants)
        try:
            if not registry.exists(args.tenant):
                raise TenantError(f"no tenant {args.tenant!r}")
            queued = count_unacked(state.store, args.tenant)
            if queued and not args.force:
                raise TenantError(
                    f"tenant {args.tenant!r} has {queued} unacked webhooks; "
                    "pass --force to discard them"
                )
            registry.remove(args.tenant)
        finally:
            registry.close()
        notify_relay(state)
    except (TenantError, StateDirError) as exc:
        return _fail(str(exc))
    discarded = purge_file(state.store, args.tenant)
    print(
        f"removed {args.tenant}"
        + (f"; {discarded} unacked webhooks discarded" if discarded else "")
    )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    try:
        state = _state(args)
        registry = TenantRegistry(state.tenants)
        try:
            token = registry.rotate(args.tenant)
        finally:
            registry.close()
        notify_relay(state)
    except (TenantError, StateDirError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"tenant": args.tenant, "token": token}))
    else:
        print(f"bridge token: {token}")
        print("The old token no longer works; connected bridges are disconnected.")
    return 0
