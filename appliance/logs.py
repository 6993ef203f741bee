"""JSON log lines, one object per line, with secrets kept out.

Every process of the product (relay, bridge, tools) logs through
:func:`configure`. Records carry structured fields passed as ``extra``; the
formatter writes them as JSON keys. Two defences keep secrets out of logs:
callers never pass secrets in the first place, and :func:`redact` scrubs the
shapes a secret can take in free text (bridge tokens in ``/bridge/{token}``
paths, ``Bearer`` credentials, ``x-line-signature`` values, and a bridge or
admin token anywhere by its ``lrb_``/``lra_`` shape).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import sys
import time
from typing import Any, TextIO

_BRIDGE_PATH = re.compile(r"(/bridge/)[^/?\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SIGNATURE = re.compile(r"(?i)(x-line-signature[\"']?\s*[:=,]\s*[\"']?)[A-Za-z0-9+/=]+")
#: A bridge (``lrb_``) or admin (``lra_``) token in free text: the prefix, then URL-safe
#: base64 (appliance.tenants.new_token, appliance.console.sessions.new_admin_token).
_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])lr[ab]_[A-Za-z0-9_-]{16,}")
REDACTED = "[redacted]"
#: Fields every line of this process carries (:func:`tag`).
_TAGS: dict[str, Any] = {}

# Attributes every LogRecord has; anything else came in through ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def tag(**fields: Any) -> None:
    """Write ``fields`` into every line of this process from now on, access lines
    included: ``worker=N`` in each of ``linerelay serve --workers``'s processes."""
    _TAGS.update(fields)


def redact(text: str) -> str:
    """Return ``text`` with bridge and admin tokens, Bearer credentials and signatures
    removed."""
    text = _BRIDGE_PATH.sub(rf"\1{REDACTED}", text)
    text = _BEARER.sub(rf"\1{REDACTED}", text)
    text = _TOKEN.sub(REDACTED, text)
    return _SIGNATURE.sub(rf"\1{REDACTED}", text)


class JSONFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, event, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(record.getMessage()),
            **_TAGS,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str, separators=(",", ":"))


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) as JSON lines.

    Also routes what Python would otherwise print raw (exceptions it cannot
    raise, in ``__del__`` or callbacks) through the same JSON lines, and
    demotes asyncio's complaints about peers that vanished mid-write.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.filters[:] = [_demote_peer_noise]
    # python-websockets logs every handshake and close at info: per-connection detail.
    logging.getLogger("appliance.bridges.websockets").setLevel(max(logging.WARNING, root.level))
    sys.unraisablehook = _log_unraisable
    # Python's warnings (a coroutine never awaited, say) as JSON lines, not raw stderr.
    logging.captureWarnings(True)


#: asyncio's own lines about writes to a connection the peer already dropped.
_PEER_NOISE = ("SSL connection is closed", "socket.send() raised exception.")


def _demote_peer_noise(record: logging.LogRecord) -> bool:
    """Turn asyncio's lines about vanished peers into debug lines."""
    if record.msg in _PEER_NOISE:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    return True


def _log_unraisable(unraisable: Any) -> None:
    logging.getLogger("python").warning(
        "unraisable exception",
        extra={
            "where": repr(unraisable.object),
            "why": repr(unraisable.exc_value),
        },
    )


#: Exceptions a peer causes by going away or speaking TLS badly: not our fault.
PEER_ERRORS = (ssl.SSLError, ConnectionError, TimeoutError)


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler for errors no task caught.

    What a peer causes (a TLS alert, a reset, data after close_notify: an
    ordinary internet's noise) is a debug line, not an error with a
    traceback; anything else is a bug of ours and stays an error.
    """
    exception = context.get("exception")
    if isinstance(exception, RuntimeError) and "is shutting down" in str(exception):
        # A handler that outlived its connection's task group (Hypercorn tears a
        # connection down when it fails on what a client sent; that is logged).
        logging.getLogger("asyncio").debug("late task", extra={"why": repr(exception)})
        return
    if isinstance(exception, PEER_ERRORS):
        logging.getLogger("asyncio").debug(
            "peer error", extra={"why": repr(exception), "where": context.get("message")}
        )
        return
    if isinstance(exception, OSError) and context.get("message", "").startswith("socket.accept()"):
        # asyncio's own accept loop (the admin listener) out of descriptors:
        # it reports every attempt, many a millisecond.
        _accept_failures(time.monotonic(), why=exception.strerror)
        return
    loop.default_exception_handler(context)


class Throttle:
    """One log line per ``interval`` seconds at most for a recurring event; the rest counted.

    The first occurrence is logged at once; later ones within the interval
    are counted and reported (``count``) with the next line written.
    """

    def __init__(
        self, logger: logging.Logger, level: int, event: str, interval: float = 60.0
    ) -> None:
        self.logger = logger
        self.level = level
        self.event = event
        self.interval = interval
        self._count = 0
        self._last = -interval

    def __call__(self, now: float, **fields: Any) -> None:
        """Note one occurrence at monotonic time ``now``; ``fields`` describe the latest."""
        self._count += 1
        if now - self._last >= self.interval:
            self.logger.log(self.level, self.event, extra={**fields, "count": self._count})
            self._count, self._last = 0, now


class AccessLog:
    """One JSON line per request, written in batches.

    Going through :mod:`logging` for every webhook cost about a tenth of the
    relay's time at full load (measured with py-spy; README, "Performance").
    Lines here are formatted with one ``json.dumps`` and written together
    every ``interval`` seconds, or sooner when ``max_lines`` are waiting.
    Callers pass only fields that hold no secret; nothing here is redacted.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        interval: float = 0.1,
        max_lines: int = 512,
        name: str = "appliance.access",
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._max_lines = max_lines
        self._name = name
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self.enabled = logging.getLogger(name).isEnabledFor(logging.INFO)

    def write(self, event: str, fields: dict[str, Any]) -> None:
        """Queue one line: ``event`` plus ``fields``."""
        if not self.enabled:
            return
        line = {"ts": round(time.time(), 3), "level": "info", "logger": self._name, "event": event}
        line.update(_TAGS)
        line.update(fields)
        self._lines.append(json.dumps(line, separators=(",", ":")))
        if len(self._lines) >= self._max_lines:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Write every queued line now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            stream = self._stream or sys.stderr
            stream.write("\n".join(self._lines) + "\n")
            stream.flush()
            self._lines.clear()


_accept_failures = Throttle(
    logging.getLogger("asyncio"), logging.ERROR, "out of file descriptors: accept() failing"
)
