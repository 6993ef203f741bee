"""Network fuzzer: mutated HTTP/1.1 requests, HTTP/2 frames and bridge WebSocket frames
against a real relay over TLS.

    .venv/bin/python -m bench.fuzz --inputs 100000 [--seed S] [--kinds http1,http2,ws]
    .venv/bin/python -m bench.fuzz --seed S --replay 1234[-1300] [--show]

Every input is derived from ``(seed, index)`` alone, so any one can be made
again: a failure prints the seed and the input range, and ``--replay`` sends
just those inputs, one at a time, checking the relay after each. Inputs start
from valid traffic (real LINE bodies from shared/fixtures/line-webhooks,
signed; HTTP/2 sequences built with h2; protocol-correct WebSocket frames on
an authenticated bridge connection) and are mutated structurally, then
sometimes byte by byte. Each input goes on its own connection from
127.0.0.2-127.0.0.9.

After every batch: the relay is alive (``/healthz`` on the admin listener),
and a legitimate signed webhook gets a 200 and reaches its bridge (a trickle of
legitimate traffic runs throughout). At the end: no 5xx other than 503 (every
status is counted), no error-level line in the relay's log, and the relay's
RSS did not keep growing. Exit status 0 when all held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import ssl
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import hpack
from hpack import NeverIndexedHeaderTuple

from appliance.signature import sign
from bench.attacks import Target, open_tcp, read_response, request_bytes
from bench.common import CLIENT_CORE, SERVER_CORE
from bench.traffic import ERROR_LEVELS, Legit, ProcessWatch, acking_bridge, scan_log
from tests.support.relay import RelayProcess

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "line-webhooks"
KINDS = ("http1", "http2", "ws")
#: The fuzzed tenant's id, and the authority every input names (never the real port,
#: so an input's bytes do not depend on the run).
TENANT = "fuzz"
AUTHORITY = "127.0.0.1"
SOURCES = [f"127.0.0.{n}" for n in range(2, 10)]
#: Seconds to wait for more bytes after the last ones, and for an input in all.
IDLE = 0.1
PER_INPUT = 2.0
#: Answers that mean the relay failed, not the input: 501 (a Transfer-Encoding it does not
#: implement) and 505 (an HTTP version it does not speak) are the right answers to some
#: inputs, and 503 is allowed under load.
SERVER_FAULTS = frozenset({"500", "502", "504"})


def fuzz_secret(seed: int) -> str:
    """The fuzzed tenant's channel secret: fixed by the seed, so replays sign alike."""
    return hashlib.sha256(f"linerelay-fuzz-{seed}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Input:
    """One fuzz input: its kind and the byte chunks to send (written in order)."""

    index: int
    kind: str
    chunks: tuple[bytes, ...]
    what: str  # the mutations applied, for the report


# -- byte-level mutation ------------------------------------------------------

_INTERESTING = [
    b"\x00",
    b"\xff",
    b"\r\n",
    b"\n",
    b"\r",
    b"%",
    b"%00",
    b"\\u0000",
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate: invalid UTF-8
    b"\xc0\xaf",  # overlong
    b"\xef\xbb\xbf",  # BOM
    b"{",
    b"}",
    b'"',
    b"A" * 1024,
    b"9" * 40,
    b"-1",
    b" ",
    b"\t",
]


def mutate_bytes(rng: random.Random, data: bytes, rounds: int = 1) -> bytes:
    """Flip, overwrite, insert, delete, duplicate or truncate bytes of ``data``."""
    buf = bytearray(data)
    for _ in range(rounds):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = rng.choice(_INTERESTING)
        elif op == 3:
            del buf[pos : pos + rng.randrange(1, 64)]
        elif op == 4:
            chunk = buf[pos : pos + rng.randrange(1, 256)]
            buf[pos:pos] = chunk * rng.randrange(1, 8)
        elif op == 5:
            del buf[pos:]
        else:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 32))
    return bytes(buf)


def mutate_body(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    """A LINE body made odd in one of the ways a validator must survive."""
    choice = rng.randrange(12)
    if choice == 0:
        return mutate_bytes(rng, body, rng.randrange(1, 6)), "body bytes"
    if choice == 1:
        return body[: rng.randrange(len(body) + 1)], "body truncated"
    if choice == 2:
        pos = rng.randrange(len(body) + 1)
        return body[:pos] + rng.choice([b"\xff\xfe", b"\xed\xa0\x80", b"\xc3", b"\x80"]) + body[
            pos:
        ], "body invalid UTF-8"
    if choice == 3:
        depth = rng.choice([100, 1000, 10000, 100000])
        return b'{"events": ' + b"[" * depth + b"]" * depth + b"}", f"nesting {depth}"
    if choice == 4:
        return rng.choice(
            [
                b'{"events": {}}',
                b'{"events": null}',
                b'{"destination": "U1"}',
                b"[]",
                b'"events"',
                b"null",
                b"",
                b" \n\t",
                b'{"events": []}',
                b'{"events": [], "events": [1]}',
                b'{"events": [1e999999]}',
                b'{"events": [' + b"9" * 5000 + b"]}",
                b"\xef\xbb\xbf" + body,
                body + b"\x00",
                body + b" " * 1000,
            ]
        ), "body shape"
    if choice == 5:
        return body * rng.randrange(2, 64), "body repeated"
    if choice == 6:
        return body.replace(b'"', b"'", rng.randrange(1, 4)), "body quotes"
    if choice == 7:
        return body + b'{"events": []}', "body trailing"
    if choice == 8:
        big = rng.choice([1 << 16, 1 << 20, (1 << 20) + 1])
        return b'{"events": [], "x": "' + b"x" * big + b'"}', f"body {big} bytes"
    return body, "body unchanged"


# -- HTTP/1.1 --------------------------------------------------------------------


def _chunked(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    """``body`` in chunked framing, sometimes broken."""
    pieces: list[bytes] = []
    pos = 0
    while pos < len(body):
        size = rng.randrange(1, 512)
        pieces.append(body[pos : pos + size])
        pos += size
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    what = "chunked"
    op = rng.randrange(10)
    if op == 0:
        out = out.replace(b"\r\n", b"\n", rng.randrange(1, 4))
        what += " bare LF"
    elif op == 1:
        out = b"%x\r\n" % (len(body) + rng.choice([-1, 1, 100])) + body + b"\r\n0\r\n\r\n"
        what += " wrong size"
    elif op == 2:
        out = rng.choice([b"FFFFFFFFFFFFFFFFFFFF", b"-1", b"0x10", b" 10", b"1;a=b", b""]) + (
            b"\r\n" + body + b"\r\n0\r\n\r\n"
        )
        what += " odd size"
    elif op == 3:
        out = out[: -rng.randrange(1, 5)]
        what += " unterminated"
    elif op == 4:
        out = out[:-2] + b"X-Trailer: 1\r\nx-line-signature: AAAA\r\n\r\n"
        what += " trailers"
    elif op == 5:
        out = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body))) + b"0\r\n\r\n"
        what += " one byte a chunk"
    return out, what


def http1_input(rng: random.Random, bodies: list[bytes], secret: str) -> tuple[bytes, str]:
    """A signed POST of a real body, mutated in its start line, headers, framing or body."""
    body = rng.choice(bodies)
    notes = []
    if rng.random() < 0.5:
        body, what = mutate_body(rng, body)
        notes.append(what)
    signature = sign(secret.encode(), body)
    if rng.random() < 0.2:
        signature = rng.choice(
            ["", "A" * 44, signature[:-2] + "==", signature.lower(), "x" * 5000, signature + " "]
        )
        notes.append("signature")
    method, target, version = "POST", f"/webhook/{TENANT}", "HTTP/1.1"
    op = rng.randrange(6)
    if op == 0:
        method = rng.choice(["GET", "PUT", "HEAD", "OPTIONS", "TRACE", "CONNECT", "P0ST", "post"])
        notes.append(f"method {method}")
    elif op == 1:
        target = rng.choice(
            [
                "/webhook/",
                "/webhook/FUZZ",
                f"/webhook/{TENANT}?x=1",
                f"/webhook/{TENANT}/",
                f"/webhook/../webhook/{TENANT}",
                "/webhook/%66uzz",
                "*",
                f"https://{AUTHORITY}/webhook/{TENANT}",
                "/webhook/" + "a" * 70,
                "/" + "a" * 9000,
                "/bridge",
                "/healthz",
                "/metrics",
                "/webhook/fu\x00zz",
                "?webhook/fuzz",
                "",
                "#x",
                "//webhook/fuzz",
            ]
        )
        notes.append("target")
    elif op == 2:
        version = rng.choice(["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/9.9", "HTTP/1.1 x", ""])
        notes.append(f"version {version!r}")
    headers: list[tuple[bytes, bytes]] = [
        (b"Host", AUTHORITY.encode()),
        (b"Content-Type", b"application/json"),
        (b"x-line-signature", signature.encode()),
    ]
    framing = rng.choice(["length", "length", "length", "chunked", "both", "none"])
    if framing == "chunked":
        payload, what = _chunked(rng, body)
        headers.append((b"Transfer-Encoding", b"chunked"))
        notes.append(what)
    elif framing == "both":
        payload, what = _chunked(rng, body)
        headers += [
            (b"Content-Length", str(len(body)).encode()),
            (b"Transfer-Encoding", b"chunked"),
        ]
        notes.append("CL+TE " + what)
    elif framing == "length":
        payload = body
        headers.append((b"Content-Length", str(len(body)).encode()))
    else:
        payload = body
        notes.append("no length")
    for _ in range(rng.choice([0, 0, 1, 2, 4])):
        op = rng.randrange(10)
        if op == 0 and headers:
            del headers[rng.randrange(len(headers))]
            notes.append("header dropped")
        elif op == 1 and headers:
            headers.append(rng.choice(headers))
            notes.append("header repeated")
        elif op == 2:
            headers.append(
                (
                    b"Content-Length",
                    rng.choice([b"-1", b"+5", b" 5", b"5, 5", b"0x10", b"9" * 30, b"", b"1e3"]),
                )
            )
            notes.append("odd Content-Length")
        elif op == 3:
            headers.append(
                (
                    b"Transfer-Encoding",
                    rng.choice(
                        [
                            b"Chunked",
                            b"chunked, identity",
                            b"identity",
                            b"gzip, chunked",
                            b"xchunked",
                        ]
                    ),
                )
            )
            notes.append("odd Transfer-Encoding")
        elif op == 4:
            headers.append((b"X-Folded", b"a\r\n b"))
            notes.append("obs-fold")
        elif op == 5:
            headers.append((b"X-Big", b"b" * rng.choice([8000, 70000])))
            notes.append("big header")
        elif op == 6:
            headers += [(b"X-%d" % i, b"v") for i in range(rng.choice([100, 1000]))]
            notes.append("many headers")
        elif op == 7:
            headers.append((rng.choice([b"Bad Name", b"B\x00d", b"", b":path", b"X-Sp "]), b"v"))
            notes.append("bad header name")
        elif op == 8:
            headers.append((b"X-Bytes", rng.randbytes(16)))
            notes.append("binary header value")
        else:
            headers.append(
                (
                    b"Connection",
                    rng.choice([b"close", b"keep-alive", b"upgrade", b"Upgrade, HTTP2-Settings"]),
                )
            )
            notes.append("Connection")
    start_line = f"{method} {target} {version}".strip().encode("latin-1", "replace")
    data = (
        start_line
        + b"\r\n"
        + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
        + b"\r\n"
        + payload
    )
    if rng.random() < 0.3:
        data = mutate_bytes(rng, data, rng.randrange(1, 4))
        notes.append("bytes")
    if rng.random() < 0.1:
        data += request_bytes("GET", f"/webhook/{TENANT}", AUTHORITY, {})
        notes.append("pipelined")
    return data, ", ".join(notes) or "valid"


# -- HTTP/2 ----------------------------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def split_frames(data: bytes) -> list[bytes]:
    """HTTP/2 frames (9-byte header and payload each) from a byte string."""
    frames = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        frames.append(data[pos : pos + 9 + length])
        pos += 9 + length
    return frames


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One raw HTTP/2 frame."""
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream) + payload
    )


def _odd_frame(rng: random.Random) -> tuple[bytes, str]:
    """A frame that is wrong in one of the ways servers get wrong."""
    choice = rng.randrange(14)
    if choice == 0:
        return frame(0x6, 0, 0, rng.randbytes(rng.choice([0, 7, 9]))), "PING bad length"
    if choice == 1:
        return frame(
            0x8, 0, rng.choice([0, 1]), struct.pack(">I", rng.choice([0, 0x7FFFFFFF]))
        ), "WINDOW_UPDATE"
    if choice == 2:
        setting, value = rng.choice(
            [
                (0x2, 2),
                (0x4, 0x80000000),
                (0x5, 100),
                (0x5, 0xFFFFFF + 1),
                (0x1, 0),
                (0x99, 1),
                (0x3, 0),
                (0x8, 1),
            ]
        )
        return frame(0x4, 0, 0, struct.pack(">HI", setting, value)), f"SETTINGS {setting}={value}"
    if choice == 3:
        return frame(0x4, 0x1, 0, b"x"), "SETTINGS ACK with payload"
    if choice == 4:
        return frame(0x2, 0, 1, struct.pack(">IB", 1, 16)), "PRIORITY on itself"
    if choice == 5:
        return frame(
            0x3, 0, rng.choice([0, 1, 3, 99]), struct.pack(">I", rng.randrange(16))
        ), "RST_STREAM"
    if choice == 6:
        return frame(0x7, 0, 0, struct.pack(">II", 0, 0)), "GOAWAY"
    if choice == 7:
        return frame(
            0x9, rng.choice([0, 4]), 1, rng.randbytes(rng.randrange(64))
        ), "CONTINUATION alone"
    if choice == 8:
        return frame(
            0x5, 0x4, 1, struct.pack(">I", 2) + rng.randbytes(8)
        ), "PUSH_PROMISE from client"
    if choice == 9:
        return frame(0x0, 0x1, 0, b"data"), "DATA on stream 0"
    if choice == 10:
        return frame(
            0x1, 0x5, rng.choice([3, 2, 0x7FFFFFFF]), rng.randbytes(rng.randrange(1, 128))
        ), "HEADERS random HPACK"
    if choice == 11:
        return frame(0x0, 0x9, 1, bytes([200]) + b"x"), "DATA pad too long"
    if choice == 12:
        return frame(
            rng.randrange(0xA, 0x100),
            rng.randrange(256),
            rng.randrange(8),
            rng.randbytes(rng.randrange(32)),
        ), "unknown type"
    headers = rng.choice(
        [
            [(":method", "POST"), (":path", f"/webhook/{TENANT}")],
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", "/a"),
                (":path", "/b"),
                (":authority", AUTHORITY),
            ],
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", f"/webhook/{TENANT}"),
                (":authority", AUTHORITY),
                ("Upper", "x"),
            ],
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", f"/webhook/{TENANT}"),
                (":authority", AUTHORITY),
                ("connection", "keep-alive"),
            ],
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/bridge"),
                (":authority", AUTHORITY),
                (":protocol", "websocket"),
            ],
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", f"/webhook/{TENANT}"),
                (":authority", AUTHORITY),
                ("te", "gzip"),
            ],
            [
                ("x", "y"),
                (":method", "POST"),
                (":scheme", "https"),
                (":path", "/"),
                (":authority", AUTHORITY),
            ],
            [
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":path", "/bridge"),
                (":authority", AUTHORITY),
            ],
        ]
    )
    block = hpack.Encoder().encode([NeverIndexedHeaderTuple(k, v) for k, v in headers])
    return frame(0x1, 0x5, rng.choice([3, 5]), block), "HEADERS invalid"


def http2_input(rng: random.Random, bodies: list[bytes], secret: str) -> tuple[bytes, str]:
    """A valid h2 exchange (one to three signed POSTs), then frames mutated or reordered."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for stream in range(1, 2 * rng.randrange(1, 4), 2):
        body = rng.choice(bodies)
        if rng.random() < 0.3:
            body, _ = mutate_body(rng, body)
        # Within the connection's flow-control window: the server's grants are never read.
        body = body[: conn.outbound_flow_control_window]
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", AUTHORITY),
                (":path", f"/webhook/{TENANT}"),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("x-line-signature", sign(secret.encode(), body)),
            ],
        )
        for pos in range(0, max(1, len(body)), 16384):
            chunk = body[pos : pos + 16384]
            conn.send_data(stream, chunk, end_stream=pos + 16384 >= len(body))
    raw = conn.data_to_send()
    assert raw.startswith(_PREFACE)
    frames = split_frames(raw[len(_PREFACE) :])
    notes = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.randrange(9)
        i = rng.randrange(len(frames))
        f = bytearray(frames[i])
        if op == 0 and len(f) > 9:
            pos = rng.randrange(9, len(f))
            f[pos] ^= 1 << rng.randrange(8)
            notes.append("payload bit")
        elif op == 1:
            f[0:3] = rng.choice([0, 1, len(f) - 8, len(f) + 100, 0xFFFFFF]).to_bytes(3, "big")
            notes.append("length")
        elif op == 2:
            f[4] = rng.randrange(256)
            notes.append("flags")
        elif op == 3:
            f[3] = rng.randrange(256)
            notes.append("type")
        elif op == 4:
            f[5:9] = struct.pack(">I", rng.choice([0, 2, 0x7FFFFFFF, 0xFFFFFFFF, 1]))
            notes.append("stream id")
        elif op == 5:
            j = rng.randrange(len(frames))
            frames[i], frames[j] = frames[j], frames[i]
            notes.append("reordered")
            continue
        elif op == 6:
            frames.insert(i, bytes(f))
            notes.append("duplicated")
            continue
        elif op == 7 and len(frames) > 1:
            del frames[i]
            notes.append("dropped")
            continue
        else:
            odd, what = _odd_frame(rng)
            frames.insert(rng.randrange(len(frames) + 1), odd)
            notes.append(what)
            continue
        frames[i] = bytes(f)
    preface = _PREFACE if rng.random() > 0.02 else mutate_bytes(rng, _PREFACE)
    data = preface + b"".join(frames)
    if rng.random() < 0.1:
        data = mutate_bytes(rng, data, rng.randrange(1, 3))
        notes.append("bytes")
    return data, ", ".join(notes)


# -- WebSocket frames on an authenticated bridge ------------------------------------


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    key: bytes = b"\x11\x22\x33\x44",
) -> bytes:
    """One client WebSocket frame; ``length`` overrides the length the header declares."""
    declared = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | (opcode & 0xF)])
    mask_bit = 0x80 if masked else 0
    if declared < 126:
        head.append(mask_bit | declared)
    elif declared < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack(">H", declared)
    else:
        head.append(mask_bit | 127)
        head += struct.pack(">Q", declared)
    if masked:
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


def _ws_message(rng: random.Random) -> bytes:
    seq = rng.choice([1, 42, 10**17, 10**18, 0])
    return rng.choice(
        [
            json.dumps({"type": "ack", "id": f"d-{seq:012d}"}).encode(),
            json.dumps(
                {"type": "nack", "id": f"d-{seq:012d}", "reason": "r" * rng.choice([1, 600])}
            ).encode(),
            json.dumps(
                {"type": "ack", "ids": [f"d-{i:012d}" for i in range(rng.randrange(1, 300))]}
            ).encode(),
            json.dumps({"type": "hello", "protocol": 99}).encode(),
            json.dumps({"type": "webhook", "id": "d-1", "body": "{}"}).encode(),
            b'{"type": "ack"}',
            b'{"type": 1}',
            b"[]",
            b"not json",
            b'{"type": "ack", "id": "' + b"9" * 20000 + b'"}',
            b'{"type": "' + b"x" * 100 + b'"}',
        ]
    )


def ws_input(rng: random.Random) -> tuple[bytes, str]:
    """Frames for an open bridge connection: valid ones, then opcodes, masks, lengths,
    fragmentation and UTF-8 made wrong."""
    message = _ws_message(rng)
    op = rng.randrange(14)
    if op == 0:
        return ws_frame(1, message), "valid text"
    if op == 1:
        return ws_frame(rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), message), "reserved opcode"
    if op == 2:
        return ws_frame(1, message, rsv=rng.randrange(1, 8)), "RSV bits"
    if op == 3:
        return ws_frame(1, message, masked=False), "unmasked"
    if op == 4:
        return ws_frame(
            1, message[:10], length=rng.choice([126, 1 << 16, (1 << 63) - 1])
        ), "length beyond data"
    if op == 5:
        half = len(message) // 2
        return ws_frame(1, message[:half], fin=False) + ws_frame(0, message[half:]), "fragmented"
    if op == 6:
        return ws_frame(0, message), "continuation without start"
    if op == 7:
        half = len(message) // 2
        return (
            ws_frame(1, message[:half], fin=False)
            + ws_frame(9, b"p")
            + ws_frame(1, message[half:]),
            "new message inside a fragmented one",
        )
    if op == 8:
        return ws_frame(
            9, b"p" * rng.choice([126, 1000]), fin=rng.random() < 0.5
        ), "oversized or fragmented ping"
    if op == 9:
        bad = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"])
        return ws_frame(1, b'{"type": "ack", "id": "' + bad + b'"}'), "invalid UTF-8"
    if op == 10:
        code = rng.choice([0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535])
        reason = rng.choice([b"", b"bye", b"\xff\xfe"])
        payload = struct.pack(">H", code) + reason if rng.random() < 0.8 else b"\x03"
        return ws_frame(8, payload), f"close {code}"
    if op == 11:
        return ws_frame(2, rng.randbytes(rng.randrange(1, 2000))), "binary"
    if op == 12:
        return b"".join(
            ws_frame(1, _ws_message(rng)) for _ in range(rng.randrange(2, 200))
        ), "many frames"
    data = ws_frame(1, message)
    return mutate_bytes(rng, data, rng.randrange(1, 4)), "frame bytes"


def generate(seed: int, index: int, kinds: list[str], bodies: list[bytes], secret: str) -> Input:
    """Input ``index`` of the run with ``seed``: the same every time."""
    rng = random.Random(f"{seed}/{index}")
    kind = kinds[index % len(kinds)]
    if kind == "http1":
        data, what = http1_input(rng, bodies, secret)
    elif kind == "http2":
        data, what = http2_input(rng, bodies, secret)
    else:
        data, what = ws_input(rng)
    return Input(index, kind, (data,), what)


# -- sending -------------------------------------------------------------------------

_STATUS_LINE = re.compile(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ")


async def _read_all(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Read until EOF, a pause of IDLE after a first answer, or PER_INPUT in all."""
    buf = b""
    deadline = time.monotonic() + PER_INPUT
    eof = False
    while time.monotonic() < deadline:
        wait = min(deadline - time.monotonic(), IDLE if buf else PER_INPUT)
        try:
            async with asyncio.timeout(max(0.01, wait)):
                chunk = await reader.read(65536)
        except TimeoutError:
            if buf:
                break
            continue
        except (OSError, ssl.SSLError):
            eof = True
            break
        if not chunk:
            eof = True
            break
        buf += chunk
    return buf, eof


async def _close(writer: asyncio.StreamWriter) -> None:
    # A polite close (TLS close_notify): an abort would be a different input.
    writer.close()
    try:
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    except (OSError, ssl.SSLError, TimeoutError):
        writer.transport.abort()


def http2_statuses(data: bytes) -> list[str]:
    """The ``:status`` of every response in a server's HTTP/2 bytes; ``goaway`` for GOAWAYs."""
    out = []
    decoder = hpack.Decoder()
    block = b""
    for f in split_frames(data):
        kind, flags = f[3], f[4]
        payload = f[9:]
        if kind == 0x7:
            out.append("goaway")
        elif kind in (0x1, 0x9):
            if kind == 0x1 and flags & 0x8:  # PADDED
                payload = payload[1 : len(payload) - payload[0]]
            if kind == 0x1 and flags & 0x20:  # PRIORITY
                payload = payload[5:]
            block += payload
            if flags & 0x4:
                try:
                    headers = dict(decoder.decode(block, raw=True))
                except hpack.HPACKError:
                    out.append("hpack-error")
                    break
                block = b""
                if b":status" in headers:
                    out.append(headers[b":status"].decode())
    return out


class Runner:
    """Sends inputs to one relay and tallies what came back."""

    def __init__(self, target: Target, ws_tokens: list[str]) -> None:
        self.target = target
        self.ws_tokens = ws_tokens
        self.outcomes: Counter[str] = Counter()
        #: (index, kind, status) of every answer in SERVER_FAULTS.
        self.server_errors: list[tuple[int, str, str]] = []
        self.contexts = {"http1": target.tls("http/1.1"), "http2": target.tls("h2")}

    def _tally(self, item: Input, status: str) -> None:
        self.outcomes[f"{item.kind}:{status}"] += 1
        if status in SERVER_FAULTS:
            self.server_errors.append((item.index, item.kind, status))

    async def send(self, item: Input) -> list[str]:
        """Send one input on its own connection; the statuses (or close codes) it got."""
        source = SOURCES[item.index % len(SOURCES)]
        try:
            if item.kind == "ws":
                statuses = await self._send_ws(item, source)
            else:
                statuses = await self._send_http(item, source)
        except (
            OSError,
            ssl.SSLError,
            TimeoutError,
            asyncio.IncompleteReadError,
            ValueError,
        ) as exc:
            statuses = [f"connect-failed:{type(exc).__name__}"]
        for status in statuses:
            self._tally(item, status)
        return statuses

    async def _send_http(self, item: Input, source: str) -> list[str]:
        reader, writer = await open_tcp(self.target, source, tls=self.contexts[item.kind], within=5)
        try:
            for chunk in item.chunks:
                writer.write(chunk)
            await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        data, eof = await _read_all(reader)
        await _close(writer)
        if item.kind == "http1":
            statuses = [m.decode() for m in _STATUS_LINE.findall(data)]
        else:
            statuses = http2_statuses(data)
        if not statuses:
            statuses = ["closed" if eof else "no-answer"]
        return statuses

    async def _send_ws(self, item: Input, source: str) -> list[str]:
        token = self.ws_tokens[item.index % len(self.ws_tokens)]
        reader, writer = await open_tcp(self.target, source, tls=self.contexts["http1"], within=5)
        try:
            writer.write(
                request_bytes(
                    "GET",
                    "/bridge",
                    AUTHORITY,
                    {
                        "Upgrade": "websocket",
                        "Connection": "Upgrade",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version": "13",
                        "Authorization": f"Bearer {token}",
                    },
                )
            )
            response = await read_response(reader, within=5)
            if response.status != 101:
                return [f"upgrade-{response.status}"]
            await _read_ws_frame(reader)  # the hello
            for chunk in item.chunks:
                writer.write(chunk)
            await writer.drain()
            return [await _ws_outcome(reader)]
        finally:
            await _close(writer)


async def _read_ws_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (unmasked): opcode and payload."""
    async with asyncio.timeout(PER_INPUT):
        head = await reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", await reader.readexactly(8))[0]
        return head[0] & 0xF, await reader.readexactly(length)


async def _ws_outcome(reader: asyncio.StreamReader) -> str:
    """``close-CODE`` if the relay closed the WebSocket, ``eof`` if it dropped the
    connection, ``open`` if it kept it (frames ignored, as PROTOCOL.md §2 asks)."""
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                opcode, payload = await _read_ws_frame(reader)
        except TimeoutError:
            return "open"
        except (asyncio.IncompleteReadError, OSError, ssl.SSLError):
            return "eof"
        if opcode == 8:
            return f"close-{struct.unpack('>H', payload[:2])[0]}" if len(payload) >= 2 else "close"
    return "open"


# -- the run -------------------------------------------------------------------------


@dataclass
class Report:
    """What a fuzz run found."""

    seed: int
    inputs: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    #: The relay's open fds after each batch (connections it still holds).
    fds: list[int] = field(default_factory=list)
    error_lines: list[str] = field(default_factory=list)
    restarts: int = 0

    @property
    def ok(self) -> bool:
        """Whether every check held."""
        return not self.failures


def load_bodies(fixtures: Path) -> list[bytes]:
    """The real LINE bodies, byte for byte."""
    bodies = [p.read_bytes() for p in sorted(fixtures.rglob("*.json"))]
    if not bodies:
        raise SystemExit(f"no LINE bodies under {fixtures}")
    return bodies


def _error_events(path: Path, start: int, end: int, keep: int = 8) -> list[str]:
    """The distinct kinds of error-level (and non-JSON) lines in ``path[start:end]``: each
    line's event and the last line of its traceback, so a rare kind is not lost among a
    frequent one."""
    found: list[str] = []
    with path.open("rb") as fh:
        fh.seek(start)
        for raw in fh.read(end - start).splitlines():
            if raw.startswith(b"{") and not any(level in raw for level in ERROR_LEVELS):
                continue
            try:
                record = json.loads(raw)
                event = str(record.get("event", "")).splitlines()[0][:100]
                trace = str(record.get("exc", "")).strip().splitlines()
                kind = f"{event} / {trace[-1][:120]}" if trace else event
            except (ValueError, AttributeError, IndexError):
                kind = "not JSON: " + raw.decode(errors="replace")[:120]
            if kind not in found:
                found.append(kind)
                if len(found) >= keep:
                    break
    return found


FUZZ_CONFIG = "bridge_connect_burst = 1000000\nbridge_auth_burst = 1000000\n"


class Fuzz:
    """A relay, its tenants, the legitimate trickle, and the batches of inputs."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.kinds = args.kinds.split(",")
        self.bodies = load_bodies(Path(args.fixtures))
        self.secret = fuzz_secret(args.seed)
        # The fuzzer opens bridge connections far faster than any bridge, and
        # many with bad tokens: the relay's reconnect and lockout limits would
        # answer most of them 429 and leave their frames unfuzzed.
        config = Path(args.relay_config).read_text() if args.relay_config else FUZZ_CONFIG
        wrapper = ["taskset", "-c", SERVER_CORE] if args.pin else []
        self.relay = RelayProcess(work / "state", config=config, wrapper=wrapper)
        self.report = Report(args.seed)
        self.log_at = 0
        self.tokens: list[str] = []

    def sensitive(self, legit: Legit) -> set[str]:
        """Every secret and token of the run, and the legitimate webhooks' signatures."""
        return {self.secret, legit.secret, legit.token, *self.tokens, *legit.signatures.values()}

    def input(self, index: int) -> Input:
        """Input ``index`` of this run."""
        return generate(self.args.seed, index, self.kinds, self.bodies, self.secret)

    async def setup(self) -> tuple[Runner, Legit, list[asyncio.Task[None]]]:
        """Start the relay, add the tenants, start the legitimate trickle and the sinks."""
        await asyncio.to_thread(self.relay.start)
        target = Target("127.0.0.1", self.relay.port, str(self.relay.ca_file))
        fuzz_token = await asyncio.to_thread(self.relay.add_tenant, TENANT, self.secret)
        legit_secret = os.urandom(16).hex()
        legit_token = await asyncio.to_thread(self.relay.add_tenant, "legit", legit_secret)
        ws_tokens = await asyncio.gather(
            *(
                asyncio.to_thread(self.relay.add_tenant, f"fuzz-ws-{i}", os.urandom(16).hex())
                for i in range(self.args.ws_tenants)
            )
        )
        self.tokens = [fuzz_token, *ws_tokens]
        legit = Legit(target, "legit", legit_secret, legit_token, rate=self.args.legit_rate)
        legit.start()
        # Signed fuzz inputs that are valid get queued: a bridge takes them so the
        # tenant's queue never reaches its cap (and 503s).
        sink = asyncio.create_task(acking_bridge(target, fuzz_token, lambda _: None))
        return Runner(target, list(ws_tokens)), legit, [sink]

    async def check(self, legit: Legit, first: int, last: int, watch: ProcessWatch) -> None:
        """After inputs ``first..last``: alive, a legitimate webhook delivered, no error lines."""
        relay, report = self.relay, self.report

        def fail(check: str, detail: str) -> None:
            report.failures.append({"check": check, "inputs": [first, last], "detail": detail})
            print(
                f"FAIL seed={self.args.seed} inputs {first}..{last}: {check}: {detail}\n"
                f"     replay: python -m bench.fuzz --seed {self.args.seed} --kinds {self.args.kinds}"
                f" --replay {first}-{last}",
                flush=True,
            )

        alive = await self._healthz()
        if not alive:
            fail(
                "alive",
                "/healthz did not answer 200 (relay process "
                + ("exited)" if relay.proc and relay.proc.poll() is not None else "hangs)"),
            )
        else:
            before = len(legit.delivered)
            status = await legit.probe()
            if status != 200:
                fail("legitimate webhook", f"answered {status or 'nothing'}")
            else:
                deadline = time.monotonic() + 10
                while len(legit.lost()) and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                if legit.lost():
                    fail(
                        "legitimate webhook",
                        f"200 but not delivered within 10 s ({len(legit.delivered) - before} delivered)",
                    )
        await asyncio.sleep(0.15)  # the relay writes its access log every 0.1 s
        size = relay.log_file.stat().st_size
        log = scan_log(relay.log_file, self.log_at, size, self.sensitive(legit))
        if log["leaks"]:
            fail("leak", f"{log['leaks']} secrets, tokens or signatures in the relay's log")
        if log["error_lines"] or log["non_json_lines"]:
            events = _error_events(relay.log_file, self.log_at, size)
            report.error_lines.extend(e for e in events if e not in report.error_lines)
            fail(
                "log",
                f"{log['error_lines']} error-level and {log['non_json_lines']} non-JSON lines: {events}",
            )
        self.log_at = size
        now = watch.read()
        if now is not None:
            report.rss_kib.append(now[0])
            report.fds.append(now[1])
        if not alive:
            report.restarts += 1
            await asyncio.to_thread(self.relay.stop, 10.0)
            await asyncio.to_thread(self.relay.start)
            assert self.relay.proc is not None
            watch.pid = self.relay.proc.pid
            self.log_at = self.relay.log_file.stat().st_size

    async def _healthz(self) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.relay.admin_port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                status = (await read_response(reader, within=3)).status
                writer.close()
                if status == 200:
                    return True
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.2)
        return False

    async def run(self) -> Report:
        """The whole run (or the replay), then the final checks."""
        args, report = self.args, self.report
        runner, legit, sinks = await self.setup()
        assert self.relay.proc is not None
        watch = ProcessWatch(self.relay.proc.pid)
        started = time.monotonic()
        try:
            if args.replay:
                await self.replay(runner, legit, watch)
            else:
                await self.batches(runner, legit, watch)
            report.seconds = round(time.monotonic() - started, 1)
            report.outcomes = dict(sorted(runner.outcomes.items()))
            for index, kind, status in runner.server_errors:
                report.failures.append(
                    {
                        "check": "5xx",
                        "inputs": [index, index],
                        "detail": f"{kind} answered {status}",
                    }
                )
                print(
                    f"FAIL seed={args.seed} input {index} ({kind}) answered {status}; replay: "
                    f"python -m bench.fuzz --seed {args.seed} --kinds {args.kinds} --replay {index}",
                    flush=True,
                )
            self.check_rss()
        finally:
            await legit.stop()
            for task in sinks:
                task.cancel()
        return report

    async def batches(self, runner: Runner, legit: Legit, watch: ProcessWatch) -> None:
        """Inputs in batches of ``--batch``, ``--concurrency`` at a time, checks after each."""
        args = self.args
        limit = asyncio.Semaphore(args.concurrency)

        async def one(index: int) -> None:
            async with limit:
                await runner.send(self.input(index))

        end = args.start + args.inputs
        for first in range(args.start, end, args.batch):
            last = min(end, first + args.batch) - 1
            await asyncio.gather(*(one(i) for i in range(first, last + 1)))
            self.report.inputs += last - first + 1
            await self.check(legit, first, last, watch)
            if args.progress and (last + 1 - args.start) % (args.batch * 20) == 0:
                print(
                    f"  {last + 1 - args.start} inputs, {time.monotonic() - legit.samples[0].due:.0f} s, "
                    f"{len(self.report.failures)} failures",
                    flush=True,
                )

    async def replay(self, runner: Runner, legit: Legit, watch: ProcessWatch) -> None:
        """Inputs of ``--replay A[-B]`` one by one, each followed by the checks."""
        first, _, last = self.args.replay.partition("-")
        for index in range(int(first), int(last or first) + 1):
            item = self.input(index)
            statuses = await runner.send(item)
            self.report.inputs += 1
            print(f"input {index} ({item.kind}: {item.what}): {statuses}", flush=True)
            if self.args.show:
                shown = item.chunks[0][:2000]
                print("  " + repr(_redact(shown, self.secret, self.bodies)), flush=True)
            await self.check(legit, index, index, watch)

    def check_rss(self) -> None:
        """RSS must stay under ``--rss-limit-mib`` and, over a long run, level off.

        The relay's RSS climbs for the first few thousand inputs (large bodies and
        header blocks raise the allocator's high-water mark; measured: ~75 to
        ~215 MiB, flat after ~8,000 HTTP inputs), so growth is judged over the
        second half of a run of at least 20 batches only.
        """
        series = self.report.rss_kib
        if not series:
            return
        span = [self.args.start, self.args.start + self.report.inputs - 1]
        if series[-1] > self.args.rss_limit_mib * 1024:
            self.report.failures.append(
                {"check": "rss", "inputs": span, "detail": f"RSS {series[-1]} KiB at the end"}
            )
        if len(series) >= 20:
            middle = series[len(series) // 2]
            if series[-1] - middle > max(32 * 1024, middle * 15 // 100):
                self.report.failures.append(
                    {
                        "check": "rss",
                        "inputs": span,
                        "detail": f"RSS still growing: {middle} KiB half-way, {series[-1]} KiB at the end",
                    }
                )


def _redact(data: bytes, secret: str, bodies: list[bytes]) -> bytes:
    """``data`` with any signature under ``secret`` of a seed body replaced, for ``--show``."""
    out = data
    for body in bodies:
        out = out.replace(sign(secret.encode(), body).encode(), b"[signature]")
    return re.sub(rb"(x-line-signature: )[A-Za-z0-9+/=]{20,}", rb"\1[signature]", out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--inputs", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--start", type=int, default=0, help="index of the first input")
    parser.add_argument("--kinds", default=",".join(KINDS), help="any of http1,http2,ws")
    parser.add_argument("--batch", type=int, default=500, help="inputs between checks")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument(
        "--ws-tenants", type=int, default=8, help="tenants the ws inputs use in turn"
    )
    parser.add_argument(
        "--legit-rate", type=float, default=5.0, help="legitimate webhooks a second"
    )
    parser.add_argument("--replay", help="only these inputs: I or I-J")
    parser.add_argument("--show", action="store_true", help="with --replay: print each input")
    parser.add_argument("--fixtures", default=str(FIXTURES), help="real LINE bodies (JSON files)")
    parser.add_argument("--relay-config", help="a relay TOML config to pass through")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin to cores")
    parser.add_argument("--progress", action="store_true", help="a line every 20 batches")
    parser.add_argument("--rss-limit-mib", type=int, default=512, help="the relay's RSS at the end")
    parser.add_argument("--json", help="write the report to this file")
    args = parser.parse_args(argv)
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, print the summary; 0 when every check held."""
    args = parse_args(argv)
    if args.pin and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(CLIENT_CORE)})
    else:
        args.pin = False
    work = Path(tempfile.mkdtemp(prefix="linerelay-fuzz-"))
    print(
        f"fuzz seed={args.seed} inputs={args.inputs if not args.replay else args.replay} "
        f"kinds={args.kinds}; relay state and log in {work}",
        flush=True,
    )
    fuzz = Fuzz(args, work)
    try:
        report = asyncio.run(fuzz.run())
    finally:
        fuzz.relay.stop(10.0)
    summary = {
        "seed": report.seed,
        "inputs": report.inputs,
        "seconds": report.seconds,
        "inputs_per_second": round(report.inputs / report.seconds, 1) if report.seconds else None,
        "outcomes": report.outcomes,
        "rss_kib_first_last": [report.rss_kib[0], report.rss_kib[-1]] if report.rss_kib else None,
        "fds_first_last": [report.fds[0], report.fds[-1]] if report.fds else None,
        "restarts": report.restarts,
        "error_lines": report.error_lines[:20],
        "failures": report.failures,
        "ok": report.ok,
    }
    print(json.dumps(summary, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({**summary, "rss_kib": report.rss_kib, "fds": report.fds}, indent=1)
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
