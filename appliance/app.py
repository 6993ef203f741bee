"""The Quart apps: the public one (behind the ingress hot paths) and the admin one.

The public app answers everything that is not a webhook or a bridge with a
JSON 404, so operator endpoints never show on the internet-facing listener.
The admin app serves ``/healthz``, ``/readyz`` and ``/metrics`` on the
private admin listener.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response

from appliance.bridges import BridgeEndpoint
from appliance.errors import NotFound, RelayError, response_for
from appliance.ingress import Ingress, Relay


def _error_response(error: RelayError) -> Response:
    status, headers, body = response_for(error)
    return Response(body, status=status, headers={k.decode(): v.decode() for k, v in headers})


def create_public_app(relay: Relay, bridges: BridgeEndpoint) -> Quart:
    """The internet-facing app: webhooks and bridges via :class:`Ingress`, else 404."""
    app = Quart("linerelay")
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.errorhandler(404)
    @app.errorhandler(405)
    async def not_found(_: Exception) -> Response:
        return _error_response(NotFound())

    # Quart's documented way to add ASGI middleware; its scope types are stricter than ours.
    app.asgi_app = Ingress(relay, bridges, app.asgi_app)  # type: ignore[method-assign,assignment,arg-type]
    return app


def create_admin_app(relay: Relay, is_ready: Callable[[], bool]) -> Quart:
    """The operator's app: health, readiness, Prometheus metrics."""
    app = Quart("linerelay-admin")

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, str], int]:
        return {"status": "ok"}, 200

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, object], int]:
        ready = is_ready()
        return {"ready": ready, "bridges": len(relay.hub.connections)}, 200 if ready else 503

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(relay.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    return app
