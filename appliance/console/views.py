"""The console's pages and fragments, its login, and replay (PROTOCOL.md §7).

Server-rendered Jinja templates (autoescaped), one small stylesheet and one
small script (appliance/console/static/): the script refreshes the part of a
page marked ``data-poll`` from its fragment URL every two seconds (one request
per page and poll), so a page updates without a reload; it stops while the tab
is hidden.

Pages:

- ``/``: every tenant with its queue depth, oldest unacked age and bridge
  (connected since, protocol, window in flight, last ack, acks per second,
  redeliveries); the answer-time histogram against the budget.
- ``/tenants/ID``: one tenant's bridge and its recent webhooks (state,
  attempts, latency from receipt to ack, event types), with replay buttons.
- ``/webhooks/DELIVERY_ID``: one webhook's record and the headers that matter;
  its body only with ``?body=1`` (the "Show body" button), never in a fragment.
- ``/login`` and ``/logout``.

No page shows a channel secret, a token or a signature; a body only on the
page that was asked for it (tests/integration/test_console.py scans them all).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from quart import Blueprint, Quart, Response, g, redirect, render_template, request
from quart.typing import ResponseReturnValue

from appliance.console.auth import CSRF_FIELD, safe_next
from appliance.console.guard import Access, Guard
from appliance.console.overview import Overview, TenantView
from appliance.console.sessions import ConsoleDB
from appliance.errors import QueueFull, RelayError, UnknownWebhook
from appliance.ingress import Relay
from appliance.limits import address_key
from appliance.state import StateDir
from appliance.tenants import TENANT_ID
from appliance.webhooks import WebhookRecord, WebhookState

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
#: Webhooks listed on a tenant's page.
RECENT = 50
#: How often the pages' script refreshes their fragments (milliseconds).
POLL_MS = 2000


def install(app: Quart, relay: Relay, loopback: bool) -> None:
    """Put the console, and the guard in front of every admin path, on ``app``.

    ``loopback``: whether the admin listener takes connections from this
    machine only (then, with ``admin_auth = "auto"``, no token is needed).
    """
    db = ConsoleDB(StateDir(relay.config.state_dir).console, fsync=False)
    guard = Guard(db, lambda: relay.config.admin_auth == "token" or not loopback)
    app.before_request(guard.check)
    app.after_request(guard.finish)
    app.register_blueprint(Console(relay, guard).blueprint)

    @app.after_serving
    async def close() -> None:
        db.close()


class Console:
    """The console's routes, over one relay."""

    def __init__(self, relay: Relay, guard: Guard) -> None:
        self.relay = relay
        self.guard = guard
        self.overview = Overview(relay)
        bp = self.blueprint = Blueprint(
            "console",
            __name__,
            template_folder=str(HERE / "templates"),
            static_folder=str(HERE / "static"),
            static_url_path="/static",
        )
        bp.add_app_template_filter(age, "age")
        bp.add_app_template_filter(utc, "utc")
        bp.add_app_template_filter(latency, "latency")
        bp.context_processor(self._context)
        bp.register_error_handler(UnknownWebhook, self._unknown_webhook)
        bp.register_error_handler(_NotFound, self._unknown_tenant)
        bp.register_error_handler(RelayError, self._refused)
        routes = (
            ("/", self.index, ["GET"]),
            ("/fragments/overview", self.overview_fragment, ["GET"]),
            ("/tenants/<tenant>", self.tenant, ["GET"]),
            ("/fragments/tenants/<tenant>", self.tenant_fragment, ["GET"]),
            ("/webhooks/<delivery>", self.webhook, ["GET"]),
            ("/fragments/webhooks/<delivery>", self.webhook_fragment, ["GET"]),
            ("/webhooks/<delivery>/replay", self.replay, ["POST"]),
            ("/login", self.login_page, ["GET"]),
            ("/login", self.login, ["POST"]),
            ("/logout", self.logout, ["POST"]),
        )
        for rule, view, methods in routes:
            name = f"{view.__name__}_{methods[0].lower()}"
            bp.add_url_rule(rule, name, view, methods=methods)

    def _context(self) -> dict[str, object]:
        access: Access | None = g.get("console")
        now = time.time()
        return {
            "access": access,
            "csrf_field": CSRF_FIELD,
            "poll_ms": POLL_MS,
            "now": now,
            "now_ms": int(now * 1000),
        }

    # -- the overview ---------------------------------------------------------

    async def index(self) -> ResponseReturnValue:
        """Every tenant, its queue and bridge; the answer-time histogram."""
        self.guard.ensure_session()
        snapshot = await self.overview.snapshot()
        return await render_template("console/overview.html", snapshot=snapshot)

    async def overview_fragment(self) -> ResponseReturnValue:
        """What the overview refreshes: the tenants table and the histogram."""
        snapshot = await self.overview.snapshot()
        return await render_template("console/_overview.html", snapshot=snapshot)

    # -- one tenant -------------------------------------------------------------

    async def _tenant_view(self, tenant: str) -> TenantView:
        view = await self.overview.tenant(tenant) if TENANT_ID.fullmatch(tenant) else None
        if view is None:
            raise _NotFound
        return view

    async def tenant(self, tenant: str) -> ResponseReturnValue:
        """One tenant's queue, bridge and recent webhooks."""
        self.guard.ensure_session()
        return await render_template("console/tenant.html", **await self._tenant_parts(tenant))

    async def tenant_fragment(self, tenant: str) -> ResponseReturnValue:
        """What a tenant's page refreshes: all of it but the title."""
        return await render_template("console/_tenant.html", **await self._tenant_parts(tenant))

    async def _tenant_parts(self, tenant: str) -> dict[str, object]:
        view = await self._tenant_view(tenant)
        state = _state_filter()
        return {
            "tenant": view,
            "state": state,
            "states": list(WebhookState),
            "records": await self.overview.recent(tenant, state, RECENT),
        }

    # -- one webhook --------------------------------------------------------------

    async def webhook(self, delivery: str) -> ResponseReturnValue:
        """One webhook's record; its body too when the operator asked (``?body=1``)."""
        self.guard.ensure_session()
        record = await self.relay.webhooks.show(delivery)
        body: str | None = None
        if request.args.get("body") == "1":
            body = (await self.relay.webhooks.body(delivery)).decode("utf-8", "replace")
            log.info(
                "console: webhook body shown",
                extra={"delivery": delivery, "tenant": record.tenant, "client": _client()},
            )
        return await render_template("console/webhook.html", record=record, body=body)

    async def webhook_fragment(self, delivery: str) -> ResponseReturnValue:
        """One webhook's record alone (never its body)."""
        record = await self.relay.webhooks.show(delivery)
        return await render_template("console/_webhook.html", record=record)

    async def replay(self, delivery: str) -> ResponseReturnValue:
        """Queue the webhook again (same bytes, new id, ``"replay": true``); go to the copy."""
        replayed = await self.relay.webhooks.replay([delivery])
        log.info(
            "console: webhook replayed",
            extra={"delivery": delivery, "replay": replayed[0], "client": _client()},
        )
        return redirect(f"/webhooks/{replayed[0]}", 303)

    # -- login ----------------------------------------------------------------------

    async def login_page(self) -> ResponseReturnValue:
        """The login form (where a token is needed; elsewhere, straight to the console)."""
        access: Access = g.console
        target = safe_next(request.args.get("next"))
        if not access.token_needed or access.session is not None:
            return redirect(target, 303)
        return await self._login_form(target, failed=False, status=200)

    async def login(self) -> ResponseReturnValue:
        """Check the posted admin token; a session cookie on success."""
        form = await request.form
        target = safe_next(form.get("next"))
        if not self.guard.log_in(form.get("token", ""), _client()):
            log.info("console: login refused", extra={"client": _client()})
            return await self._login_form(target, failed=True, status=401)
        log.info("console: logged in", extra={"client": _client()})
        return redirect(target, 303)

    async def _login_form(self, target: str, failed: bool, status: int) -> ResponseReturnValue:
        html = await render_template(
            "console/login.html",
            next=target,
            failed=failed,
            token_set=self.guard.db.admin_digest() is not None,
        )
        return Response(html, status=status, content_type="text/html; charset=utf-8")

    async def logout(self) -> ResponseReturnValue:
        """End the session."""
        access: Access = g.console
        self.guard.log_out()
        return redirect("/login" if access.token_needed else "/", 303)

    # -- errors -------------------------------------------------------------------

    async def _unknown_webhook(self, _: UnknownWebhook) -> ResponseReturnValue:
        return await _not_found("No such webhook")

    async def _unknown_tenant(self, _: _NotFound) -> ResponseReturnValue:
        return await _not_found("No such tenant")

    async def _refused(self, error: RelayError) -> ResponseReturnValue:
        """What the relay refused (a replay into a full queue: 503), as a page."""
        title = "The tenant's queue is full" if isinstance(error, QueueFull) else "Refused"
        return await _error_page(title, error.status, str(error))


async def _not_found(title: str) -> ResponseReturnValue:
    return await _error_page(title, 404)


async def _error_page(title: str, status: int, detail: str = "") -> ResponseReturnValue:
    html = await render_template("console/error.html", title=title, detail=detail)
    return Response(html, status=status, content_type="text/html; charset=utf-8")


class _NotFound(LookupError):
    """A tenant the console does not know (404)."""


def _state_filter() -> WebhookState | None:
    value = request.args.get("state")
    try:
        return None if not value else WebhookState(value)
    except ValueError:
        return None


def _client() -> str:
    return address_key(request.remote_addr or "")


# -- template filters -----------------------------------------------------------


def age(seconds: float | None) -> str:
    """A duration as people read it: ``0.4 s``, ``12 s``, ``5 min``, ``2 h 3 min``, ``3 d``."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} d"


def utc(stamp: float | None, unit: str = "ms") -> str:
    """A Unix time (``ms``, or ``s``) as ``2026-12-03 22:10:05 UTC``."""
    if stamp is None:
        return "—"
    seconds = stamp / 1000 if unit == "ms" else stamp
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def latency(record: WebhookRecord) -> str:
    """Time from receipt to the bridge's ack, ``—`` while unacked."""
    if record.acked_at is None:
        return "—"
    ms = max(0, record.acked_at - record.received_at)
    return f"{ms} ms" if ms < 10_000 else age(ms / 1000)
