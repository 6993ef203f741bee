"""``linerelay tenant add|list|remove|rotate-token|rotate-secret|connect-line`` (PROTOCOL.md §3),
and ``purge`` (appliance/webhooks_cli.py).

Changes land in ``STATE/tenants.db`` (or, with ``store = "redis"`` in the
``--config`` file or ``LINERELAY_STORE``, in Redis for every node:
appliance/tenant_backend.py); a running relay notices them within
``tenant_poll_interval`` seconds, without a restart. Bad input exits with
status 2 and changes nothing. ``connect-line`` changes nothing here: it sets
the channel's webhook URL in LINE and asks LINE to test it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from appliance import config as config_module
from appliance import webhooks_cli
from appliance.cli import add_state_dir as _add_state_dir
from appliance.cli import state_dir
from appliance.errors import ConfigError, LineAPIError, StateDirError, TenantError
from appliance.line_channel import DEFAULT_API_BASE, ChannelAPI
from appliance.state import StateDir
from appliance.tenant_backend import Registry, count_unacked, load_config, open_registry, purge
from appliance.tenants import MAX_GRACE_SECONDS, notify_relay, validate_id

GRACE_HELP = (
    "keep the old {what} working for SECONDS more (at most {most}, a week): {then}; "
    "default 0: it stops now"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tenant`` and its subcommands."""
    parser = subparsers.add_parser("tenant", help="add, list, remove tenants; rotate tokens")
    add_state_dir(parser)
    commands = parser.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")

    add = commands.add_parser("add", help="add a tenant; prints its bridge token once")
    add_state_dir(add)
    add.add_argument("tenant", help="tenant id: [a-z0-9][a-z0-9-]{0,62}")
    _secret_options(add)
    add.add_argument("--json", action="store_true", help="print a JSON object")
    _public_url_option(add, "for the printed webhook URL")
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

    rotate = commands.add_parser(
        "rotate-token", help="issue a new bridge token; the old stops now or after --grace"
    )
    add_state_dir(rotate)
    rotate.add_argument("tenant")
    rotate.add_argument(
        "--grace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=GRACE_HELP.format(
            what="token",
            most=MAX_GRACE_SECONDS,
            then="bridges still on it are disconnected when it stops",
        ),
    )
    rotate.add_argument("--json", action="store_true", help="print a JSON object")
    rotate.set_defaults(func=_rotate)

    rotate_secret = commands.add_parser(
        "rotate-secret",
        help="take a new channel secret (LINE reissued it); the old one verifies "
        "until --grace ends",
    )
    add_state_dir(rotate_secret)
    rotate_secret.add_argument("tenant")
    _secret_options(rotate_secret, "new ")
    rotate_secret.add_argument(
        "--grace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=GRACE_HELP.format(
            what="secret", most=MAX_GRACE_SECONDS, then="webhooks signed with it are accepted"
        ),
    )
    rotate_secret.add_argument("--json", action="store_true", help="print a JSON object")
    rotate_secret.set_defaults(func=_rotate_secret)

    connect = commands.add_parser(
        "connect-line",
        help="set the channel's webhook URL to the tenant's in LINE, and have LINE test it",
    )
    add_state_dir(connect)
    connect.add_argument("tenant")
    connect.add_argument(
        "--channel-access-token-file",
        required=True,
        metavar="FILE",
        help="read the channel's access token from FILE ('-' for stdin); never printed",
    )
    _public_url_option(connect, "for the webhook URL set in LINE")
    connect.add_argument(
        "--api-base",
        default=DEFAULT_API_BASE,
        metavar="URL",
        help=f"LINE's Messaging API (default: {DEFAULT_API_BASE})",
    )
    connect.add_argument("--json", action="store_true", help="print a JSON object")
    connect.set_defaults(func=_connect_line)

    webhooks_cli.register_purge(commands)


def _secret_options(parser: argparse.ArgumentParser, new: str = "") -> None:
    """``--channel-secret`` or ``--channel-secret-file``, one of them required."""
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument("--channel-secret", help=f"the {new}LINE channel secret")
    secret.add_argument(
        "--channel-secret-file", help=f"read the {new}channel secret from FILE ('-' for stdin)"
    )


def _public_url_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--public-url",
        help=f"base URL LINE reaches the relay at, {what} (default: https://<listen address>)",
    )


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    """``--state-dir``, and ``--config`` for the store it names, on a tenant command."""
    _add_state_dir(parser)
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="the relay's TOML config: with store = 'redis', tenants are changed in Redis",
    )


def _config(args: argparse.Namespace) -> config_module.RelayConfig:
    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as exc:
        raise TenantError(str(exc)) from exc


@contextlib.contextmanager
def _registry(
    args: argparse.Namespace, create: bool = False
) -> Iterator[tuple[config_module.RelayConfig, StateDir, Registry]]:
    """The config, the state dir (created by ``add``) and the open tenant registry of
    ``args``; the registry is closed after the block."""
    config = _config(args)
    state = _state(args, create)
    registry = open_registry(config, state)
    try:
        yield config, state, registry
    finally:
        registry.close()


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
    return _read_file(args.channel_secret_file, "the channel secret")


def _read_file(source: str, what: str) -> str:
    """The text of file ``source`` (``-``: stdin); :class:`TenantError` if unreadable."""
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TenantError(f"cannot read {what} from {source}: {exc}") from exc


def _when(ms: int) -> str:
    """Unix milliseconds as an ISO 8601 UTC time, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


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
        with _registry(args, create=True) as (_, state, registry):
            token = registry.add(args.tenant, secret)
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
        with _registry(args) as (config, state, registry):
            tenants = registry.list()
        rows = [
            {
                "tenant": t.id,
                "created_at": t.created_at,
                "rotated_at": t.rotated_at,
                "queued": count_unacked(config, state, t.id),
                # When the previous token and secret stop working; null: none is in a grace.
                "token_grace_until": t.token_grace_until or None,
                "secret_grace_until": t.secret_grace_until or None,
            }
            for t in tenants
        ]
    except (TenantError, StateDirError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(rows))
    else:
        for row, info in zip(rows, tenants, strict=True):
            line = f"{row['tenant']}\tqueued={row['queued']}"
            if info.token_grace_until:
                line += f"\told token valid until {_when(info.token_grace_until)}"
            if info.secret_grace_until:
                line += f"\told secret valid until {_when(info.secret_grace_until)}"
            print(line)
    return 0


def _remove(args: argparse.Namespace) -> int:
    try:
        validate_id(args.tenant)
        with _registry(args) as (config, state, registry):
            if not registry.exists(args.tenant):
                raise TenantError(f"no tenant {args.tenant!r}")
            queued = count_unacked(config, state, args.tenant)
            if queued and not args.force:
                raise TenantError(
                    f"tenant {args.tenant!r} has {queued} unacked webhooks; "
                    "pass --force to discard them"
                )
            registry.remove(args.tenant)
        notify_relay(state)
    except (TenantError, StateDirError) as exc:
        return _fail(str(exc))
    try:
        discarded = purge(config, state, args.tenant)
    except TenantError as exc:
        return _fail(str(exc))
    print(
        f"removed {args.tenant}"
        + (f"; {discarded} unacked webhooks discarded" if discarded else "")
    )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    try:
        with _registry(args) as (_, state, registry):
            token, until = registry.rotate(args.tenant, args.grace)
        notify_relay(state)
    except (TenantError, StateDirError) as exc:
        return _fail(str(exc))
    if args.json:
        print(
            json.dumps({"tenant": args.tenant, "token": token, "token_grace_until": until or None})
        )
        return 0
    print(f"bridge token: {token}")
    if until:
        print(
            f"The old token works until {_when(until)}: put the new one in the bridge's "
            "relay_token before then. Bridges still on the old token are disconnected then."
        )
    else:
        print("The old token no longer works; connected bridges are disconnected.")
    return 0


def _rotate_secret(args: argparse.Namespace) -> int:
    try:
        validate_id(args.tenant)
        secret = _read_secret(args)
        with _registry(args) as (_, state, registry):
            until = registry.rotate_secret(args.tenant, secret, args.grace)
        notify_relay(state)
    except (TenantError, StateDirError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"tenant": args.tenant, "secret_grace_until": until or None}))
        return 0
    print(f"{args.tenant}: the new channel secret verifies webhooks now.")
    if until:
        print(f"Webhooks signed with the old one are accepted until {_when(until)}.")
    else:
        print("The old one no longer verifies.")
    print(
        "Bridges verify again: give the bridge the new channel_secret and the old one as "
        "previous_channel_secret (docs/bridge.md, 'Rotating the channel secret')."
    )
    return 0


def _connect_line(args: argparse.Namespace) -> int:
    """Point the channel at the tenant's webhook URL and print LINE's test verdict.

    Exit status 0: LINE reached the relay and got a 200. 1: LINE's test
    failed, or LINE could not be reached or failed itself. 2: bad input,
    LINE's refusals of it (an invalid token, a URL it does not take) included.
    """
    try:
        validate_id(args.tenant)
        with _registry(args) as (_, _, registry):
            if not registry.exists(args.tenant):
                raise TenantError(f"no tenant {args.tenant!r}")
        token = _read_file(args.channel_access_token_file, "the channel access token").strip()
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            raise TenantError(
                "the channel access token file must hold the token alone, on one line"
            )
    except (TenantError, StateDirError) as exc:
        return _fail(str(exc))
    url = _webhook_url(args, args.tenant)
    api = ChannelAPI(token, args.api_base)
    try:
        api.set_endpoint(url)
        _, active = api.endpoint()
        verdict = api.test()
    except LineAPIError as exc:
        print(f"linerelay tenant: {exc}", file=sys.stderr)
        # LINE refusing what it was given (token, URL) is bad input; the rest is a failure.
        refused = exc.status is not None and 400 <= exc.status < 500 and exc.status != 429
        return 2 if refused else 1
    finally:
        api.close()
    if args.json:
        print(
            json.dumps(
                {
                    "tenant": args.tenant,
                    "webhook_url": url,
                    "webhook_active": active,
                    "success": verdict.success,
                    "status_code": verdict.status_code,
                    "reason": verdict.reason,
                    "detail": verdict.detail,
                    "timestamp": verdict.timestamp,
                }
            )
        )
    else:
        print(f"webhook URL:  {url} (set in LINE)")
        outcome = "success" if verdict.success else "FAILED"
        print(
            f"LINE's test:  {outcome}: status {verdict.status_code}, "
            f"reason {verdict.reason or '-'}, detail {verdict.detail or '-'}"
        )
    if not active:
        print(
            "linerelay tenant: webhooks are switched off for this channel: LINE sends none "
            "until 'Use webhook' is turned on in the LINE Developers console",
            file=sys.stderr,
        )
    return 0 if verdict.success else 1
