"""The public half of the LINE relay appliance: TLS ingress, signature check,
durable per-tenant queue and WebSocket delivery to bridges."""


def version() -> str:
    """The installed ``linerelay`` distribution's version (pyproject.toml is its one source)."""
    # Imported here: importlib.metadata is a third of a bare CLI start-up, and
    # every process of the appliance's boot imports this package.
    from importlib import metadata  # noqa: PLC0415

    return metadata.version("linerelay")
