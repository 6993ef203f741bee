"""A watch on what an HTTP/2 client sends, frame headers only, without I/O.

Hypercorn's own defence against rapid reset (CVE-2023-44487) is a GOAWAY
after ``keep_alive_max_requests`` streams, but it goes on parsing and
serving whatever the client sends after it (measured: 26,050 streams on
one connection). :class:`H2Guard` sits between the socket and Hypercorn
and reads only the 9-byte frame headers of the client's stream (RFC 9113
§4.1), never payloads, so it costs little. It trips when a client

- resets more streams than a token bucket allows (``RST_STREAM`` frames:
  a burst, then a steady rate), or
- opens more streams than ``max_streams`` on one connection (Hypercorn's
  GOAWAY comes at ``keep_alive_max_requests``; a client that goes on past
  it and a margin is not a client).

Once tripped, :meth:`H2Guard.feed` says how many bytes of the chunk came
before the offending frame; the caller passes those on and closes the
connection without reading further. Written against RFC 9113 rather than
Hypercorn's internals, so it needs no patch of Hypercorn.
"""

from __future__ import annotations

from appliance.limits import TokenBucket

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
HEADERS = 0x1
RST_STREAM = 0x3


class H2Guard:
    """Counts the streams a client opens and resets on one HTTP/2 connection."""

    __slots__ = (
        "_header",
        "_highest",
        "_preface",
        "_skip",
        "max_streams",
        "resets",
        "streams",
        "tripped",
    )

    def __init__(
        self, max_streams: int, reset_burst: float, reset_interval: float, now: float
    ) -> None:
        self.max_streams = max_streams
        self.resets = TokenBucket.full(reset_burst, reset_interval, now)
        self.streams = 0
        #: Why the connection must close (``"rapid_reset"``, ``"too_many_streams"``), or None.
        self.tripped: str | None = None
        self._preface = 0  # bytes of the preface seen so far
        self._header = bytearray()  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to pass
        self._highest = 0  # highest client stream id seen in a HEADERS frame

    def feed(self, data: bytes, now: float) -> int:
        """Scan ``data``; returns how many of its bytes may be passed on.

        That is ``len(data)`` while the client keeps within the limits;
        once :attr:`tripped` is set, the offset of the frame that broke a
        limit (its earlier bytes may still be passed), and 0 for any later
        chunk.
        """
        if self.tripped is not None:
            return 0
        pos, end = 0, len(data)
        if self._preface < len(PREFACE):
            take = min(len(PREFACE) - self._preface, end)
            if data[:take] != PREFACE[self._preface : self._preface + take]:
                # Not HTTP/2 after all: Hypercorn's h2 refuses it; nothing to count.
                self._preface = len(PREFACE)
                self._skip = 1 << 62
                return end
            self._preface += take
            pos = take
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            start = pos - len(self._header)
            need = FRAME_HEADER - len(self._header)
            self._header += data[pos : pos + need]
            pos += min(need, end - pos)
            if len(self._header) < FRAME_HEADER:
                break
            header = bytes(self._header)
            self._header.clear()
            self._skip = int.from_bytes(header[0:3], "big")
            kind = header[3]
            stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            if kind == HEADERS and stream > self._highest:
                self._highest = stream
                self.streams += 1
                if self.streams > self.max_streams:
                    self.tripped = "too_many_streams"
            elif kind == RST_STREAM and not self.resets.take(now):
                self.tripped = "rapid_reset"
            if self.tripped is not None:
                return max(0, start)
        return end
