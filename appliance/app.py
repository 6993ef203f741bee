"""The admin app (Quart), on the private admin listener.

It serves ``/healthz``, ``/readyz``, ``/metrics``, the JSON API for stored
webhooks under ``/api/`` (appliance/webhooks_api.py) and the operator console
at ``/`` (appliance/console), all behind the console's guard: off loopback,
every path but ``/healthz`` needs the admin token (PROTOCOL.md §7). The public listener's
app is :class:`appliance.ingress.Ingress` alone: webhooks, bridges and a JSON
404 for everything else, so operator endpoints never show on the
internet-facing listener.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response

from appliance.console import views as console
from appliance.ingress import Relay
from appliance.webhooks_api import webhooks_api


def create_admin_app(relay: Relay, is_ready: Callable[[], bool], loopback: bool = True) -> Quart:
    """The operator's app: health, readiness, Prometheus metrics, the webhooks API, the console.

    ``loopback``: whether the admin listener takes connections from this machine only.
    """
    # No static or template folder of the app's own: they would be looked for in
    # the working directory. The console brings its own.
    app = Quart("linerelay-admin", static_folder=None, template_folder=None)
    console.install(app, relay, loopback)

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
