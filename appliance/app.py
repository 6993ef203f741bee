"""The admin app (Quart), on the private admin listener.

It serves ``/healthz``, ``/readyz``, ``/metrics`` and the JSON API for stored
webhooks under ``/api/`` (appliance/webhooks_api.py). The public listener's
app is :class:`appliance.ingress.Ingress` alone: webhooks, bridges and a JSON
404 for everything else, so operator endpoints never show on the
internet-facing listener.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response

from appliance.ingress import Relay
from appliance.webhooks_api import webhooks_api


def create_admin_app(relay: Relay, is_ready: Callable[[], bool]) -> Quart:
    """The operator's app: health, readiness, Prometheus metrics."""
    app = Quart("linerelay-admin")

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, str], int]:
        return {"status": "ok"}, 200

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, object], int]:
        ready = is_ready()
        answer: dict[str, object] = {"ready": ready, "bridges": len(relay.hub.connections)}
        problem = relay.store.health()
        if problem is not None:
            answer["store"] = problem
        return answer, 200 if ready else 503

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(relay.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    app.register_blueprint(webhooks_api(relay))
    return app
