"""asyncio's TLS read buffer: the one library behaviour the relay changes without a setting.

asyncio's TLS transport gives every connection a read buffer of
``SSLProtocol.max_size`` (256 KiB), allocated and zero-filled when the
connection starts, so it is resident whether the connection is busy or idle:
most of an idle bridge's memory on stock settings (DESIGN.md). The size is
also how much TLS data one socket read takes. asyncio offers no setting for
it, so :func:`apply` sets that class attribute, to the config's
``tls_read_buffer``, once at start, and only on the CPython versions in
:data:`VERIFIED`, whose ``asyncio/sslproto.py`` was read and measured: there
the attribute sizes the buffer ``SSLProtocol.__init__`` allocates, the most
``get_buffer`` hands the socket transport's ``recv_into``, and the most
plaintext one ``SSLObject.read`` returns. Anywhere else asyncio's default is
kept and an info line says why. A smaller buffer costs a large body more
reads, one event-loop turn each (OpenSSL reassembles records whatever the
size): bench/large_body.py measures that, README "Performance" has the
figures, and tests/appliance/test_tuning.py observes the reads of a real
asyncio TLS server.

The relay changes nothing else in a library. What this module once patched
in Hypercorn (declining permessage-deflate, ending a closed WebSocket's ping
task) served bridges that HTTP/1.1 upgrades now bring to python-websockets,
where both are settings; the rare bridge over HTTP/2 keeps Hypercorn's stock
behaviour, at the cost appliance/bridges.py states.
"""

from __future__ import annotations

import asyncio.sslproto
import logging
import sys

log = logging.getLogger(__name__)

#: ``tls_read_buffer`` that keeps asyncio's own size.
ASYNCIO_DEFAULT = 0
#: The CPython versions (major, minor) whose ``SSLProtocol.max_size`` means what
#: the module docstring says; a new one is added after reading its sslproto.py
#: and running tests/appliance/test_tuning.py under it.
VERIFIED = ((3, 11), (3, 12), (3, 13))

_SSLProtocol = asyncio.sslproto.SSLProtocol
#: asyncio's own size, as this interpreter has it (None where the attribute is missing).
_ASYNCIO_SIZE: object = vars(_SSLProtocol).get("max_size")


def unsupported_because() -> str | None:
    """Why :func:`apply` cannot set the read buffer on this interpreter, or None if it can."""
    version = sys.version_info[:2]
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} is not CPython"
    if version not in VERIFIED:
        return f"Python {version[0]}.{version[1]} is not one of the versions checked"
    if not isinstance(_ASYNCIO_SIZE, int):
        return "asyncio.sslproto.SSLProtocol has no max_size"
    return None


def apply(tls_read_buffer: int) -> int | None:
    """Make asyncio read TLS connections ``tls_read_buffer`` bytes at a time, with a
    buffer that size (0: asyncio's own); call before any TLS connection starts.

    Returns the size in force, or None where it is not known (the interpreter
    is not one :data:`VERIFIED`; logged at info).
    """
    why = unsupported_because()
    if why is not None:
        if tls_read_buffer != ASYNCIO_DEFAULT:
            log.info(
                "tls_read_buffer not applied: asyncio's own read buffer is used",
                extra={"why": why, "tls_read_buffer": tls_read_buffer},
            )
        return None
    assert isinstance(_ASYNCIO_SIZE, int)  # unsupported_because() checked it
    size = tls_read_buffer or _ASYNCIO_SIZE
    _SSLProtocol.max_size = size
    return size
