"""The public half of the LINE relay appliance: TLS ingress, signature check,
durable per-tenant queue and WebSocket delivery to bridges."""

from importlib import metadata


def version() -> str:
    """The installed ``linerelay`` distribution's version (pyproject.toml is its one source)."""
    return metadata.version("linerelay")
