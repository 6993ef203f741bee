"""A :class:`SQLiteStore` in a process of its own, driven over stdin and stdout.

``python store_server.py``, then one JSON object a line each way: first
``[DB, CLOCK, QUEUE_CAP, DEDUPE_WINDOW, MAX_BATCH]`` (so that a process can be
started ahead of time and wait, imports done, until it is needed), then requests. Each request has a number ``n``, and its answer carries
it: answers come when the store has answered (an append once its batch is
durable), so several requests may be out at once and answers may overtake
each other, as on the relay's event loop. The property test
(tests/appliance/test_store_properties.py) kills this process with SIGKILL to
crash the store at any point: a real process death, with SQLite's files left
as they are, which an in-process store cannot imitate.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from appliance.errors import QueueFull
from appliance.store import Delivery, Limits
from appliance.store.sqlite import SQLiteStore


class Clock:
    """The store's clock, set by the test (seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def answer(n: int, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"n": n, **fields}) + "\n")
    sys.stdout.flush()


def row(d: Delivery) -> dict[str, Any]:
    return {
        "seq": d.seq,
        "id": d.id,
        "tenant": d.tenant,
        "body": d.body.hex(),
        "signature": d.signature,
        "received_at": d.received_at,
        "attempts": d.attempts,
    }


async def serve(store: SQLiteStore, clock: Clock) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def later(n: int, coro: Any, shape: Any) -> None:
        try:
            result = shape(await coro)
        except Exception as exc:  # the test fails on it, at once and saying why
            answer(n, error=repr(exc))
        else:
            answer(n, result=result)

    def spawn(n: int, coro: Any, shape: Any = lambda r: r) -> None:
        task = loop.create_task(later(n, coro, shape))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    answer(0, ready=True)
    while line := await reader.readline():
        req = json.loads(line)
        n, op = req["n"], req["op"]
        if op == "clock":
            clock.now = req["now"]
            answer(n)
        elif op == "append":
            try:
                future = store.append(
                    req["tenant"], bytes.fromhex(req["body"]), req["signature"], req["at"]
                )
            except QueueFull:
                answer(n, full=True)
                continue

            def done(f: asyncio.Future[Delivery | None], n: int = n) -> None:
                if f.exception() is not None:
                    answer(n, error=repr(f.exception()))
                else:
                    result = f.result()
                    answer(n, delivery=row(result) if result is not None else None)

            future.add_done_callback(done)
        elif op == "ack":
            store.ack(req["tenant"], req["seq"])
            answer(n)
        elif op == "mark_sent":
            store.mark_sent(req["seqs"])
            answer(n)
        elif op == "pending":
            spawn(
                n,
                store.pending(req["tenant"], req["after"], req["limit"], req["max_bytes"]),
                lambda rows: [row(d) for d in rows],
            )
        elif op == "expire":
            spawn(
                n,
                store.expire(req["older_than"]),
                lambda rows: [[e.seq, e.id, e.tenant, e.received_at] for e in rows],
            )
        elif op == "prune":
            spawn(n, store.prune(req["delivered_before"], req["expired_before"]))
        elif op == "purge":
            spawn(n, store.purge(req["tenant"], req["before"]))
        elif op == "snapshot":
            # Every tenant's queue, read in one batch after everything sent before it.
            tenants = req["tenants"]
            pages = asyncio.gather(*(store.pending(t, 0, 1 << 30) for t in tenants))
            spawn(
                n,
                pages,
                lambda pages, tenants=tenants: {
                    "pending": {
                        t: [row(d) for d in p] for t, p in zip(tenants, pages, strict=True)
                    },
                    "depth": {t: store.depth(t) for t in tenants},
                    "depths": store.depths(),
                },
            )
        elif op == "close":
            await asyncio.gather(*tasks)
            await store.close()
            answer(n)
            return
        else:
            raise ValueError(f"unknown op {op!r}")
        # Let a task just spawned submit its operation before the next request's.
        await asyncio.sleep(0)


def first_line() -> bytes:
    """The opening line, read byte by byte so that nothing after it is buffered here."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            sys.exit(0)  # a spare process that was never needed
        line += byte
    return line


async def main() -> None:
    path, now, cap, window, batch = json.loads(first_line())
    clock = Clock(float(now))
    limits = Limits(queue_cap=int(cap), dedupe_window=float(window), max_batch=int(batch))
    store = SQLiteStore(Path(path), limits, clock=clock)
    await store.open()
    await serve(store, clock)


if __name__ == "__main__":
    asyncio.run(main())
