"""The public half of the LINE relay appliance: TLS ingress, signature check,
durable per-tenant queue and WebSocket delivery to bridges."""

__version__ = "0.1.0"
