"""``linerelay webhooks list|show|replay|send`` (PROTOCOL.md §7) and ``tenant purge``.

On a running relay they go through its admin JSON API; on a stopped one they
open its store (appliance/operator.py). Nothing here prints a body unless
asked (``show --body``), and never a signature, a secret or a token. A body
read from a stopped relay's store is logged here (``cli: webhook body shown``,
a JSON line on stderr), as a running relay logs the reads it serves. Exit
status: 0 done, 1 failed (the relay unreachable, a sample refused), 2 bad
input (an unknown delivery id, a bad option), with nothing changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pwd
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from appliance import config as config_module
from appliance import logs
from appliance.errors import QueuedWebhooks, QueueFull, TenantError, UnknownWebhook
from appliance.operator import (
    OperatorError,
    Target,
    add_relay_options,
    existing_state,
    has_store,
    local_webhooks,
    relay_config,
    target,
)
from appliance.signature import sign
from appliance.tenant_backend import open_directory, open_registry
from appliance.tenants import validate_id
from appliance.webhooks import MAX_LIST, WebhookRecord, WebhookState
from tls.pki import EmbeddedPKI

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``webhooks`` and its subcommands."""
    parser = subparsers.add_parser(
        "webhooks", help="list, show, replay stored webhooks; send a signed sample"
    )
    commands = parser.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="recent webhooks, newest first (never bodies)")
    add_relay_options(listing)
    listing.add_argument("--tenant", type=_tenant_id, help="only this tenant's")
    listing.add_argument(
        "--state", choices=[s.value for s in WebhookState], help="only those in this state"
    )
    listing.add_argument(
        "--limit", type=_limit, default=50, help=f"at most N (1-{MAX_LIST}, default 50)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    show = commands.add_parser("show", help="one webhook; its body only with --body")
    add_relay_options(show)
    show.add_argument("delivery_id", metavar="DELIVERY_ID")
    show.add_argument("--body", action="store_true", help="also print the body (personal data)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)

    replay = commands.add_parser(
        "replay", help="queue webhooks again for their tenant's bridge, marked as replays"
    )
    add_relay_options(replay)
    replay.add_argument("delivery_ids", nargs="+", metavar="DELIVERY_ID")
    replay.add_argument("--json", action="store_true", help="print JSON")
    replay.set_defaults(func=_replay)

    send = commands.add_parser(
        "send", help="post a correctly signed sample text webhook for a tenant (no LINE needed)"
    )
    add_relay_options(send)
    send.add_argument("--tenant", required=True, type=_tenant_id, help="the tenant")
    send.add_argument("--text", default="linerelay test message", help="the message's text")
    send.add_argument(
        "--user",
        default=None,
        help="the LINE user id it comes from (default: a made-up one; give yours to get "
        "the bot's answer by push)",
    )
    send.add_argument(
        "--url", help="the tenant's webhook URL (default: from the config's listen address)"
    )
    send.add_argument(
        "--cafile",
        type=Path,
        help="CA bundle to verify the relay's certificate (default: the dev PKI's root "
        "when the relay uses it, else the system's)",
    )
    send.add_argument("--json", action="store_true", help="print JSON")
    send.set_defaults(func=_send)


def register_purge(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``purge`` under ``linerelay tenant``."""
    purge = commands.add_parser(
        "purge", help="erase every stored webhook (bodies included) of a tenant"
    )
    add_relay_options(purge)
    purge.add_argument("tenant", type=_tenant_id)
    purge.add_argument(
        "--include-queued",
        action="store_true",
        help="also erase webhooks no bridge has taken yet (they are lost)",
    )
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(func=_purge)


# -- argument types ----------------------------------------------------------


def _tenant_id(value: str) -> str:
    try:
        return validate_id(value)
    except TenantError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _limit(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIST:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_LIST}")
    return int(value)


# -- running the commands ------------------------------------------------------


def _run(name: str, work: Callable[[], int]) -> int:
    try:
        return work()
    except OperatorError as exc:
        print(f"linerelay {name}: {exc}", file=sys.stderr)
        return exc.status


def _unknown(ids: Sequence[str], replaying: bool = False) -> OperatorError:
    message = f"no webhook {', '.join(ids)} (unknown, or pruned after its retention)"
    return OperatorError(message + ("; nothing was replayed" if replaying else ""), 2)


def _unexpected(answer_status: int, body: dict[str, Any]) -> OperatorError:
    why = body.get("why") or body.get("error") or "no reason given"
    return OperatorError(f"the relay answered {answer_status}: {why}")


def _list(args: argparse.Namespace) -> int:
    def work() -> int:
        where = target(args)
        state = WebhookState(args.state) if args.state else None
        if where.client is not None:
            params = {"limit": str(args.limit)}
            if args.tenant:
                params["tenant"] = args.tenant
            if state is not None:
                params["state"] = state.value
            answer = where.client.get("/api/webhooks", params)
            if answer.status != 200:
                raise _unexpected(answer.status, answer.body)
            records = [WebhookRecord.from_json(obj) for obj in answer.body["webhooks"]]
        elif has_store(where):
            records = asyncio.run(_local_list(where, args.tenant, state, args.limit))
        else:
            records = []  # a relay that never started has stored none (and no file)
        if args.json:
            print(json.dumps({"webhooks": [r.to_json() for r in records]}))
        else:
            _print_table(records)
        return 0

    return _run("webhooks list", work)


async def _local_list(
    where: Target, tenant: str | None, state: WebhookState | None, limit: int
) -> list[WebhookRecord]:
    async with local_webhooks(where) as webhooks:
        return await webhooks.list(tenant, state, limit)


def _show(args: argparse.Namespace) -> int:
    def work() -> int:
        where = target(args)
        body: str | None = None
        if where.client is not None:
            params = {"body": "1"} if args.body else None
            answer = where.client.get(f"/api/webhooks/{_path(args.delivery_id)}", params)
            if answer.status == 404:
                raise _unknown([args.delivery_id])
            if answer.status != 200:
                raise _unexpected(answer.status, answer.body)
            record = WebhookRecord.from_json(answer.body)
            body = answer.body.get("body") if args.body else None
        else:
            if not has_store(where):
                raise _unknown([args.delivery_id])
            record, raw = asyncio.run(_local_show(where, args.delivery_id, args.body))
            body = raw.decode("utf-8") if raw is not None else None
            if body is not None:
                # No relay saw this read (the running one logs those it serves).
                _log_body_read(where, record)
        if args.json:
            obj = record.to_json()
            if body is not None:
                obj["body"] = body
            print(json.dumps(obj, ensure_ascii=False))
        else:
            _print_record(record)
            if body is not None:
                print()
                print(body)
        return 0

    return _run("webhooks show", work)


async def _local_show(
    where: Target, delivery_id: str, with_body: bool
) -> tuple[WebhookRecord, bytes | None]:
    async with local_webhooks(where) as webhooks:
        try:
            record = await webhooks.show(delivery_id)
            return record, (await webhooks.body(delivery_id) if with_body else None)
        except UnknownWebhook as exc:
            raise _unknown(exc.delivery_ids) from exc


def _log_body_read(where: Target, record: WebhookRecord) -> None:
    """Log that this command read ``record``'s body from the store: who (the login, and
    the sudo caller), which webhook and tenant; never the body."""
    if not logging.getLogger().handlers:  # a command run on its own; not under a test's
        logs.configure(where.config.log_level)
    user: dict[str, Any] = {"user": _login()}
    if os.environ.get("SUDO_USER"):
        user["sudo_user"] = os.environ["SUDO_USER"]
    log.info(
        "cli: webhook body shown",
        extra={"delivery": record.id, "tenant": record.tenant, **user},
    )


def _login() -> str:
    """This process's user name (its uid if the name is unknown)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _replay(args: argparse.Namespace) -> int:
    def work() -> int:
        where = target(args)
        ids: list[str] = args.delivery_ids
        if where.client is not None:
            answer = where.client.post("/api/webhooks/replay", {"ids": ids})
            if answer.status == 404:
                raise _unknown(answer.body.get("ids") or [answer.body.get("id", "?")], True)
            if answer.status == 503:
                raise OperatorError(f"nothing replayed: {answer.body.get('why', 'queue full')}")
            if answer.status != 200:
                raise _unexpected(answer.status, answer.body)
            pairs = [(p["id"], p["replay_id"]) for p in answer.body["replayed"]]
        else:
            if not has_store(where):
                raise _unknown(ids, True)
            pairs = list(zip(ids, asyncio.run(_local_replay(where, ids)), strict=True))
        if args.json:
            print(json.dumps({"replayed": [{"id": old, "replay_id": new} for old, new in pairs]}))
        else:
            for old, new in pairs:
                print(f"{old} -> {new}")
            if where.client is None:
                print("The relay is not running: it delivers them when it starts.")
        return 0

    return _run("webhooks replay", work)


async def _local_replay(where: Target, ids: list[str]) -> list[str]:
    async with local_webhooks(where) as webhooks:
        try:
            return await webhooks.replay(ids)
        except UnknownWebhook as exc:
            raise _unknown(exc.delivery_ids, True) from exc
        except QueueFull as exc:
            raise OperatorError(f"nothing replayed: {exc}") from exc


def _purge(args: argparse.Namespace) -> int:
    def work() -> int:
        where = target(args)
        try:
            registry = open_registry(where.config, where.state)
        except TenantError as exc:
            raise OperatorError(str(exc)) from exc
        try:
            known = registry.exists(args.tenant)
        finally:
            registry.close()
        if not known:
            raise OperatorError(f"no tenant {args.tenant!r}", 2)
        queued = _queued(where, args.tenant)
        if queued and not args.include_queued:
            raise OperatorError(
                f"tenant {args.tenant} has {_count(queued)} queued webhooks no bridge has taken "
                "yet; purging erases them too: pass --include-queued (or let its bridge take "
                "them first). Nothing was erased.",
                2,
            )
        if not args.yes:
            _confirm(args.tenant, queued)
        if where.client is not None:
            answer = where.client.post(
                f"/api/tenants/{args.tenant}/purge", {"include_queued": args.include_queued}
            )
            if answer.status == 409:
                raise OperatorError(
                    f"tenant {args.tenant} now has {answer.body.get('queued')} queued "
                    "webhooks; pass --include-queued to erase them too. Nothing was erased.",
                    2,
                )
            if answer.status != 200:
                raise _unexpected(answer.status, answer.body)
            erased = int(answer.body["queued_erased"])
        elif has_store(where):
            erased = asyncio.run(_local_purge(where, args.tenant, args.include_queued))
        else:
            erased = 0  # no store: nothing was ever stored to erase
        print(
            f"purged {args.tenant}: every stored webhook erased"
            + (f", {erased} of them still queued" if erased else "")
        )
        return 0

    return _run("tenant purge", work)


def _queued(where: Target, tenant: str) -> int:
    """The tenant's queued webhooks (counted up to :data:`MAX_LIST`)."""
    if where.client is not None:
        params = {"tenant": tenant, "state": "queued", "limit": str(MAX_LIST)}
        answer = where.client.get("/api/webhooks", params)
        if answer.status != 200:
            raise _unexpected(answer.status, answer.body)
        return len(answer.body["webhooks"])
    if not has_store(where):
        return 0

    async def count() -> int:
        async with local_webhooks(where) as webhooks:
            return webhooks.store.depth(tenant)

    return asyncio.run(count())


def _count(queued: int) -> str:
    return f"{queued} or more" if queued >= MAX_LIST else str(queued)


def _confirm(tenant: str, queued: int) -> None:
    if not sys.stdin.isatty():
        raise OperatorError("not a terminal to confirm on: pass --yes to purge", 2)
    what = f" ({_count(queued)} of them still queued)" if queued else ""
    print(
        f"Erase every stored webhook of tenant {tenant}{what}, bodies included? "
        "This cannot be undone. [y/N] ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if input().strip().lower() not in ("y", "yes"):
        raise OperatorError("not confirmed; nothing was erased", 2)


async def _local_purge(where: Target, tenant: str, include_queued: bool) -> int:
    async with local_webhooks(where) as webhooks:
        try:
            return (await webhooks.purge(tenant, include_queued)).queued
        except QueuedWebhooks as exc:
            raise OperatorError(f"{exc}: pass --include-queued. Nothing was erased.", 2) from exc


# -- send ---------------------------------------------------------------------


def sample_body(text: str, user: str, now_ms: int) -> tuple[bytes, str]:
    """A webhook body as LINE sends one for a user's text message, and its
    ``webhookEventId`` (LINE's format: 26 characters). Its reply token and
    (unless given) user are made up, so a bridge's reply to it fails at LINE;
    with the operator's own user id, its push reaches them."""
    event_id = "01" + secrets.token_hex(12).upper()
    event = {
        "type": "message",
        "message": {
            "type": "text",
            "id": str(secrets.randbelow(10**18)),
            "quoteToken": secrets.token_urlsafe(32),
            "text": text,
        },
        "webhookEventId": event_id,
        "deliveryContext": {"isRedelivery": False},
        "timestamp": now_ms,
        "source": {"type": "user", "userId": user},
        "replyToken": secrets.token_hex(16),
        "mode": "active",
    }
    # LINE names the bot in "destination"; the relay does not know it, and no
    # bridge checks it.
    body = {"destination": "U" + "0" * 32, "events": [event]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(), event_id


def _send(args: argparse.Namespace) -> int:
    def work() -> int:
        config = relay_config(args)
        state = existing_state(config)
        if config.store == "sqlite" and not state.tenants.exists():
            raise OperatorError(f"no tenant {args.tenant!r} (no tenants in {state.path})", 2)
        try:
            directory = open_directory(config, state)
        except TenantError as exc:
            raise OperatorError(str(exc)) from exc
        try:
            tenant = directory.get(args.tenant)
        finally:
            directory.close()
        if tenant is None:
            raise OperatorError(f"no tenant {args.tenant!r}", 2)
        user = args.user or "U" + secrets.token_hex(16)
        body, event_id = sample_body(args.text, user, int(time.time() * 1000))
        signature = sign(tenant.secret, body)
        url, transport = _webhook_url(args, config)
        verify: Any = True
        if args.cafile is not None:
            verify = str(args.cafile)
        elif config.uses_dev_pki and EmbeddedPKI(state.pki).root.exists():
            verify = str(EmbeddedPKI(state.pki).root)
        headers = {"Content-Type": "application/json", "x-line-signature": signature}
        try:
            with httpx.Client(verify=verify, transport=transport, timeout=30.0) as client:
                response = client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise OperatorError(f"POST {url} failed: {exc}") from exc
        if args.json:
            print(
                json.dumps(
                    {"url": url, "status": response.status_code, "webhook_event_id": event_id}
                )
            )
        else:
            print(f"POST {url} -> {response.status_code}")
            print(f"webhookEventId: {event_id} (find it in the bridge's log)")
        if response.status_code != 200:
            if not args.json:
                print(f"the relay answered {response.text.strip()[:200]}", file=sys.stderr)
            return 1
        return 0

    return _run("webhooks send", work)


def _webhook_url(
    args: argparse.Namespace, config: config_module.RelayConfig
) -> tuple[str, httpx.HTTPTransport | None]:
    """The tenant's webhook URL (from ``--url`` or the config's ``listen``), and the
    transport for a ``unix:`` listener."""
    if args.url:
        return str(args.url), None
    path = f"/webhook/{args.tenant}"
    if config.listen.startswith(config_module.UNIX_PREFIX):
        socket_path = config.listen[len(config_module.UNIX_PREFIX) :]
        return f"http://localhost{path}", httpx.HTTPTransport(uds=socket_path)
    host, port = config_module.parse_address(config.listen, "listen")
    if host in ("0.0.0.0", "::"):  # noqa: S104 (a wildcard: this machine is reached on loopback)
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.public_tls else "http"
    return f"{scheme}://{host}:{port}{path}", None


# -- output ---------------------------------------------------------------------


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _print_table(records: list[WebhookRecord]) -> None:
    rows = [("ID", "TENANT", "STATE", "RECEIVED", "ATTEMPTS", "SIZE", "EVENTS", "REPLAY OF")]
    for r in records:
        rows.append(
            (
                r.id,
                r.tenant,
                r.state.value,
                _time(r.received_at),
                str(r.attempts),
                str(r.size),
                ",".join(r.event_types) or "-",
                r.replay_of or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _print_record(record: WebhookRecord) -> None:
    fields = [
        ("id", record.id),
        ("tenant", record.tenant),
        ("state", record.state.value),
        ("received", _time(record.received_at)),
        ("acked", _time(record.acked_at)),
        ("expired", _time(record.expired_at)),
        ("attempts", str(record.attempts)),
        ("size", f"{record.size} bytes"),
        ("events", ", ".join(record.event_types) or "-"),
        ("replay of", record.replay_of or "-"),
    ]
    for name, value in fields:
        print(f"{name + ':':<11}{value}")


def _path(delivery_id: str) -> str:
    """A delivery id as one URL path segment (ids are ``d-`` and hex; anything else is
    escaped, and then unknown)."""
    return quote(delivery_id, safe="")
