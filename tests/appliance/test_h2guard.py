from __future__ import annotations

import h2.config
import h2.connection
import h2.errors

from appliance.h2guard import PREFACE, H2Guard


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


def open_and_reset(conn: h2.connection.H2Connection, count: int) -> bytes:
    for _ in range(count):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":path", "/webhook/t"),
                (":scheme", "https"),
                (":authority", "x"),
            ],
        )
        conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
    return conn.data_to_send()


def guard(max_streams: int = 1000, burst: float = 10, interval: float = 1.0) -> H2Guard:
    return H2Guard(max_streams, burst, interval, now=0.0)


def test_ordinary_requests_pass_untouched() -> None:
    conn = client()
    for _ in range(50):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":path", "/webhook/t"),
                (":scheme", "https"),
                (":authority", "x"),
            ],
        )
        conn.send_data(stream, b'{"events":[]}', end_stream=True)
    data = conn.data_to_send()
    watch = guard()
    assert watch.feed(data, 0.0) == len(data)
    assert watch.tripped is None
    assert watch.streams == 50


def test_resets_past_the_burst_trip_the_guard() -> None:
    conn = client()
    data = open_and_reset(conn, 11)
    watch = guard(burst=10)
    allowed = watch.feed(data, 0.0)
    assert watch.tripped == "rapid_reset"
    # Everything before the eleventh RST_STREAM may pass, nothing after it.
    assert 0 < allowed < len(data)
    assert watch.feed(b"more", 0.0) == 0


def test_resets_at_the_steady_rate_are_allowed() -> None:
    conn = client()
    watch = guard(burst=2, interval=1.0)
    now = 0.0
    for _ in range(20):
        data = open_and_reset(conn, 1)
        assert watch.feed(data, now) == len(data)
        now += 1.0
    assert watch.tripped is None


def test_streams_past_the_limit_trip_the_guard() -> None:
    conn = client()
    for _ in range(6):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream, [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "x")]
        )
    watch = guard(max_streams=5)
    watch.feed(conn.data_to_send(), 0.0)
    assert watch.tripped == "too_many_streams"


def test_frames_split_across_reads_are_counted_once() -> None:
    conn = client()
    data = open_and_reset(conn, 11)
    watch = guard(burst=10)
    for i in range(len(data)):
        watch.feed(data[i : i + 1], 0.0)
    assert watch.tripped == "rapid_reset"
    assert watch.streams == 11


def test_payloads_are_skipped_not_parsed() -> None:
    conn = client()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream, [(":method", "POST"), (":path", "/"), (":scheme", "https"), (":authority", "x")]
    )
    # A body made of bytes that would look like RST_STREAM frame headers if parsed.
    fake_resets = (b"\x00\x00\x04\x03\x00\x00\x00\x00\x01" + b"\x00" * 4) * 100
    conn.send_data(stream, fake_resets, end_stream=True)
    watch = guard(burst=1)
    data = conn.data_to_send()
    assert watch.feed(data, 0.0) == len(data)
    assert watch.tripped is None


def test_a_stream_that_is_not_http2_is_left_alone() -> None:
    watch = guard(burst=0)
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    assert watch.feed(data, 0.0) == len(data)
    assert watch.tripped is None


def test_the_preface_may_arrive_in_pieces() -> None:
    watch = guard()
    assert watch.feed(PREFACE[:5], 0.0) == 5
    assert watch.feed(PREFACE[5:], 0.0) == len(PREFACE) - 5
    assert watch.tripped is None
