"""The admin listener's JSON API for stored webhooks (PROTOCOL.md §7).

Used by ``linerelay webhooks`` and ``linerelay tenant purge`` against a
running relay (writes must go through the relay, so the hub learns of
replays and purges); the console calls :class:`appliance.webhooks.Webhooks`
in-process instead. Authentication is the admin app's, for every path
(appliance/app.py). Every answer is ``Cache-Control: no-store``: a body asked
for is personal data, and each one shown is logged (``api: webhook body shown``,
as the console logs its own), never the body itself.

- ``GET /api/webhooks?tenant=&state=&limit=`` → ``{"webhooks": [record, ...]}``
- ``GET /api/webhooks/<id>[?body=1]`` → the record (``"body"`` too if asked)
- ``POST /api/webhooks/replay {"ids": [...]}`` → ``{"replayed": [{"id", "replay_id"}]}``
- ``POST /api/tenants/<id>/purge {"include_queued": bool}`` →
  ``{"tenant", "queued_erased"}``

Errors: 400 ``bad_request`` (with ``why``), 404 ``unknown_webhook`` (with
``id`` and ``ids``) or ``unknown_tenant``, 409 ``queued_webhooks`` (with
``queued``), 503 ``queue_full``.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Blueprint, Response, jsonify, request

from appliance.errors import QueuedWebhooks, QueueFull, UnknownWebhook
from appliance.ingress import Relay
from appliance.limits import address_key
from appliance.tenants import TENANT_ID
from appliance.webhooks import MAX_LIST, WebhookState

#: Most ids one replay request may name.
MAX_REPLAY = 1000

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A malformed API request; the message says what is wrong with it."""


def _answer(obj: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(obj)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _limit(value: str | None) -> int:
    if value is None:
        return 50
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIST:
        raise BadRequest(f"limit must be 1-{MAX_LIST}")
    return int(value)


def _state(value: str | None) -> WebhookState | None:
    if not value:
        return None
    try:
        return WebhookState(value)
    except ValueError as exc:
        choices = ", ".join(s.value for s in WebhookState)
        raise BadRequest(f"state must be one of {choices}") from exc


async def _json_object() -> dict[str, Any]:
    body = await request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _ids(body: dict[str, Any]) -> list[str]:
    ids = body.get("ids")
    if (
        not isinstance(ids, list)
        or not ids
        or len(ids) > MAX_REPLAY
        or not all(isinstance(i, str) and i for i in ids)
    ):
        raise BadRequest(f"'ids' must be a list of 1-{MAX_REPLAY} delivery ids")
    return ids


def webhooks_api(relay: Relay) -> Blueprint:
    """The JSON API's routes, over ``relay.webhooks``."""
    api = Blueprint("webhooks_api", __name__)

    @api.errorhandler(BadRequest)
    async def bad_request(error: BadRequest) -> Response:
        return _answer({"error": "bad_request", "why": str(error)}, 400)

    @api.errorhandler(UnknownWebhook)
    async def unknown_webhook(error: UnknownWebhook) -> Response:
        body = {"error": error.code, "id": error.delivery_id, "ids": list(error.delivery_ids)}
        return _answer(body, error.status)

    @api.errorhandler(QueueFull)
    async def queue_full(error: QueueFull) -> Response:
        return _answer({"error": "queue_full", "why": str(error)}, 503)

    @api.errorhandler(QueuedWebhooks)
    async def queued(error: QueuedWebhooks) -> Response:
        return _answer({"error": error.code, "queued": error.queued}, error.status)

    @api.get("/api/webhooks")
    async def list_webhooks() -> Response:
        args = request.args
        tenant = args.get("tenant") or None
        records = await relay.webhooks.list(
            tenant, _state(args.get("state")), _limit(args.get("limit"))
        )
        return _answer({"webhooks": [r.to_json() for r in records]})

    @api.get("/api/webhooks/<delivery_id>")
    async def show_webhook(delivery_id: str) -> Response:
        record = await relay.webhooks.show(delivery_id)
        obj = record.to_json()
        if request.args.get("body") in ("1", "true"):
            # Stored bodies passed the UTF-8 check at ingress: this is exact.
            obj["body"] = (await relay.webhooks.body(delivery_id)).decode("utf-8")
            # Who read whose personal data: the id, tenant and address, never the body.
            log.info(
                "api: webhook body shown",
                extra={
                    "delivery": delivery_id,
                    "tenant": record.tenant,
                    "client": address_key(request.remote_addr or ""),
                },
            )
        return _answer(obj)

    @api.post("/api/webhooks/replay")
    async def replay_webhooks() -> Response:
        ids = _ids(await _json_object())
        new_ids = await relay.webhooks.replay(ids)
        pairs = [{"id": old, "replay_id": new} for old, new in zip(ids, new_ids, strict=True)]
        return _answer({"replayed": pairs})

    @api.post("/api/tenants/<tenant>/purge")
    async def purge_tenant(tenant: str) -> Response:
        body = await _json_object()
        include_queued = body.get("include_queued", False)
        if not isinstance(include_queued, bool):
            raise BadRequest("'include_queued' must be true or false")
        if not TENANT_ID.fullmatch(tenant) or relay.tenants.get(tenant) is None:
            return _answer({"error": "unknown_tenant", "tenant": tenant}, 404)
        purged = await relay.webhooks.purge(tenant, include_queued)
        return _answer({"tenant": purged.tenant, "queued_erased": purged.queued})

    return api
