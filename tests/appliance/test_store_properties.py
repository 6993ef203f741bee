"""The SQLite store under any interleaving of its operations, restarts and crashes,
checked against a model after every step.

The store runs in a process of its own (tests/support/store_server.py) on a
real file in a temporary directory, so that a **crash** is a real process
death: SIGKILL at any point, between two requests or in the middle of a burst
of them (inside a transaction, between its commit and its fsync, or while
answering), leaving SQLite's WAL and shared-memory files exactly as a kill -9
or an OOM kill would. An in-process imitation cannot do that: closing the
connection is a clean SQLite close (it checkpoints and removes the WAL), and
closing its file descriptors under a live connection leaves the process's
POSIX locks and SQLite's own lock bookkeeping inconsistent. What a kill -9
does not model is the loss of the page cache: a power cut is the appliance
image's test (PROTOCOL.md §5).

Operations: appends (two tenants, retries of the same body, other spellings
of the same signature, the queue cap reached), bursts of appends and acks sent
without waiting (as concurrent requests are), pending reads (pages after a
seq, limits, byte limits), mark_sent, acks (repeated, of other tenants' rows,
of unknown rows), expire, prune (as the relay calls it: acked or expired
longer ago than the dedupe window), purge, time passing, a clean restart, and a
crash.

Properties checked after every step, against the model and against the file
itself (a read-only connection of the test's own):

- Every append answered with a delivery (the relay's 200) is in the file,
  queued, acked or expired, until prune or purge deletes it: never lost,
  across restarts and crashes. Appends never answered may or may not be there.
- ``pending`` is per-tenant FIFO in the order of append; a page holds exactly
  the model's unacked rows after a seq, within its limits.
- Nothing acked is pending again, and a committed ack survives a crash.
- ``depth(t)`` and ``depths()`` equal the model's unacked counts.
- A retry (same tenant, bytes and decoded signature) within the dedupe window
  is stored once, also across restarts and crashes; after the window it is new.
- Attempts count every mark_sent.
- An acked or expired row keeps when that happened (its retention's start);
  prune deletes exactly the rows whose retention ended.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import json
import os
import select
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.support.properties import examples

SERVER = Path(__file__).resolve().parents[1] / "support" / "store_server.py"
TENANTS = ("a", "b")
WINDOW = 10  # dedupe window, seconds
BODIES = [b'{"events":[' + b"1," * k + b"1]}" for k in (0, 20, 150)]
_DIGEST = bytes(range(32))
_SIG = base64.b64encode(_DIGEST).decode()
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: A signature, another spelling of the same digest, another digest, and not base64.
SIGNATURES = [
    _SIG,
    _SIG[:-2] + _ALPHABET[_ALPHABET.index(_SIG[-2]) ^ 0b01] + "=",
    base64.b64encode(bytes(32)).decode(),
    "not base64!",
]
STATES = {0: "queued", 1: "acked", 2: "expired"}


def identity(tenant: str, body: bytes, signature: str) -> tuple[str, bytes, bytes]:
    """What makes two appends the same retry: tenant, bytes, the decoded signature."""
    try:
        claimed = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        claimed = signature.encode()
    return tenant, body, claimed


@dataclass
class Row:
    seq: int
    id: str
    tenant: str
    body: bytes
    signature: str
    received_at: int
    attempts: int = 0
    state: str = "queued"
    order: int = 0  # when it was appended, among all appends
    since: int | None = None  # when (ms) it was acked or expired

    def wire(self) -> dict[str, Any]:
        """The row as the store process reports it."""
        return {
            "seq": self.seq,
            "id": self.id,
            "tenant": self.tenant,
            "body": self.body.hex(),
            "signature": self.signature,
            "received_at": self.received_at,
            "attempts": self.attempts,
        }


_spare: subprocess.Popen[bytes] | None = None
_exiting: list[subprocess.Popen[bytes]] = []


def started() -> subprocess.Popen[bytes]:
    """A store process, imports done, waiting for its file: one is always started
    ahead, so that restarts and crashes do not wait for Python to start."""
    global _spare  # noqa: PLW0603
    _exiting[:] = [p for p in _exiting if p.poll() is None]
    ready = _spare or _start()
    _spare = _start()
    return ready


@atexit.register
def _stop_spare() -> None:
    for closed in _exiting:
        closed.wait(timeout=10)
    if _spare is not None and _spare.stdin is not None:
        _spare.stdin.close()  # it exits when its first line never comes
        _spare.wait(timeout=10)
        if _spare.stdout is not None:
            _spare.stdout.close()


def _start() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(SERVER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,
    )


class StoreProcess:
    """The client side of tests/support/store_server.py."""

    def __init__(self, path: Path, now: int, cap: int, batch: int) -> None:
        self.proc = started()
        self.buffer = b""
        self.answers: dict[int, dict[str, Any]] = {}
        self.n = 0
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([str(path), now, cap, WINDOW, batch]).encode() + b"\n")
        self.wait(0)

    def send(self, op: str, **fields: Any) -> int:
        self.n += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"n": self.n, "op": op, **fields}) + "\n").encode())
        return self.n

    def wait(self, n: int, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while n not in self.answers:
            self.read_one(deadline)
        return self.answers.pop(n)

    def read_one(self, deadline: float) -> int:
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, "the store process did not answer"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                assert chunk, f"the store process died (exit {self.proc.wait()})"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer = json.loads(line)
        self.answers[answer["n"]] = answer
        return int(answer["n"])

    def call(self, op: str, **fields: Any) -> Any:
        answer = self.wait(self.send(op, **fields))
        assert "error" not in answer, answer["error"]
        return answer.get("result")

    def close(self) -> None:
        self.call("close")  # answered once the store is closed and its file durable
        self._release()
        _exiting.append(self.proc)  # Python's own shutdown is not waited for

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no close, no checkpoint, no flush of anything
        self.proc.wait(timeout=30)
        self._release()

    def _release(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


OPS = st.one_of(
    st.tuples(
        st.just("append"),
        st.sampled_from(TENANTS),
        st.integers(0, len(BODIES) - 1),
        st.integers(0, len(SIGNATURES) - 1),
    ),
    st.tuples(st.just("ack"), st.sampled_from(TENANTS), st.integers(0, 50)),
    st.tuples(st.just("mark"), st.just(""), st.integers(0, 50)),
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="store-props-")
        self.path = Path(self.tmp.name) / "store.db"
        self.clock = 1_700_000_000
        self.cap = 2
        self.batch = 512
        self.proc: StoreProcess | None = None
        self.rows: dict[int, Row] = {}
        self.recent: dict[tuple[str, bytes, bytes], int] = {}  # identity -> accepted at
        self.appended = 0
        self.appended_at_start = 0
        self.max_seq = 0

    @initialize(cap=st.sampled_from([2, 4]), batch=st.sampled_from([1, 2, 512]))
    def start(self, cap: int, batch: int) -> None:
        self.cap, self.batch = cap, batch
        self.proc = StoreProcess(self.path, self.clock, cap, batch)

    def teardown(self) -> None:
        try:
            if self.proc is not None:
                self.proc.kill()
        finally:
            self.tmp.cleanup()

    @property
    def store(self) -> StoreProcess:
        assert self.proc is not None
        return self.proc

    # -- the model ---------------------------------------------------------------

    def queued(self, tenant: str) -> list[Row]:
        return [
            r for _, r in sorted(self.rows.items()) if r.tenant == tenant and r.state == "queued"
        ]

    def outcomes(self, ident: tuple[str, bytes, bytes], depth: int, slack: int) -> set[str]:
        """What an append may answer: "none" (a retry), "full" or "delivery".

        ``slack``: acks sent in the same burst that will change nothing; until their
        batch commits the store counts them off the depth, so the cap may admit more.
        """
        when = self.recent.get(ident)
        if when is not None and self.clock - when < WINDOW:
            return {"none"}
        either = {"none"} if when is not None and self.clock - when == WINDOW else set()
        if depth - slack >= self.cap:
            return {"full"} | either
        if depth >= self.cap:
            return {"full", "delivery"} | either
        return {"delivery"} | either

    def accept(self, answer: dict[str, Any], order: int) -> None:
        """A delivery answered: the relay's 200. Record it; it must never be lost."""
        d = answer["delivery"]
        assert d["seq"] > self.max_seq, "a row id was reused"
        assert d["id"].startswith("d-")
        assert len(d["id"]) == 26
        assert d["attempts"] == 0
        self.max_seq = d["seq"]
        row = Row(
            d["seq"],
            d["id"],
            d["tenant"],
            bytes.fromhex(d["body"]),
            d["signature"],
            d["received_at"],
            order=order,
        )
        self.rows[row.seq] = row
        self.recent[identity(row.tenant, row.body, row.signature)] = self.clock

    def kind(self, answer: dict[str, Any]) -> str:
        assert "error" not in answer, answer["error"]
        if answer.get("full"):
            return "full"
        return "none" if answer["delivery"] is None else "delivery"

    def seq_for(self, pick: int) -> int:
        """A row's seq by index, or a seq no row has."""
        seqs = sorted(self.rows)
        return seqs[pick % len(seqs)] if seqs and pick < 45 else self.max_seq + 1000 + pick

    def restarted(self) -> None:
        """What the store remembers after opening: recent digests from the rows in the file.

        (Restarts and crashes wait for an append after the last one: a process start
        costs more than any other step, and a restart of an unchanged store adds little.)
        """
        self.appended_at_start = self.appended
        since = (self.clock - WINDOW) * 1000
        self.recent = {}
        for row in sorted(self.rows.values(), key=lambda r: r.received_at):
            if row.received_at >= since:
                self.recent[identity(row.tenant, row.body, row.signature)] = row.received_at // 1000

    def file_rows(self) -> dict[int, dict[str, Any]]:
        """Every row in the store's file, read on a connection of the test's own."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            found = db.execute(
                "SELECT seq, id, tenant, body, signature, received_at, attempts, state, "
                "coalesce(acked_at, expired_at) FROM webhooks"
            ).fetchall()
        finally:
            db.close()
        return {
            seq: {
                "id": wire_id,
                "tenant": tenant,
                "body": bytes(body),
                "signature": signature,
                "received_at": received_at,
                "attempts": attempts,
                "state": STATES[state],
                "since": since,
            }
            for seq, wire_id, tenant, body, signature, received_at, attempts, state, since in found
        }

    # -- appends -------------------------------------------------------------------

    def append_fields(self, tenant: str, body: int, signature: int) -> dict[str, Any]:
        return {
            "tenant": tenant,
            "body": BODIES[body].hex(),
            "signature": SIGNATURES[signature],
            "at": self.clock * 1000,
        }

    @rule(
        tenant=st.sampled_from(TENANTS),
        body=st.integers(0, len(BODIES) - 1),
        signature=st.integers(0, len(SIGNATURES) - 1),
    )
    def append(self, tenant: str, body: int, signature: int) -> None:
        """One append, waited for (a webhook request)."""
        ident = identity(tenant, BODIES[body], SIGNATURES[signature])
        expected = self.outcomes(ident, len(self.queued(tenant)), 0)
        answer = self.store.wait(
            self.store.send("append", **self.append_fields(tenant, body, signature))
        )
        got = self.kind(answer)
        assert got in expected, f"append answered {got}, expected one of {expected}"
        self.appended += 1
        if got == "delivery":
            self.accept(answer, self.appended)

    def send_burst(self, ops: list[Any]) -> list[tuple[int, Any]]:
        """Send ``ops`` without waiting; the request numbers and what each was."""
        sent: list[tuple[int, Any]] = []
        for op in ops:
            if op[0] == "append":
                _, tenant, body, signature = op
                sent.append(
                    (self.store.send("append", **self.append_fields(tenant, body, signature)), op)
                )
            elif op[0] == "ack":
                _, tenant, pick = op
                sent.append(
                    (
                        self.store.send("ack", tenant=tenant, seq=self.seq_for(pick)),
                        (*op, self.seq_for(pick)),
                    )
                )
            else:
                _, _, pick = op
                seqs = [self.seq_for(pick), self.seq_for(pick + 1), self.seq_for(pick)]
                sent.append((self.store.send("mark_sent", seqs=seqs), ("mark", seqs)))
        return sent

    @rule(ops=st.lists(OPS, min_size=1, max_size=8))
    def burst(self, ops: list[Any]) -> None:
        """Appends, acks and attempt marks sent without waiting, as concurrent requests
        and bridge frames reach the store; then every answer is checked in the order the
        store took them (it decides each append when it arrives)."""
        sent = self.send_burst(ops)
        answers = {n: self.store.wait(n) for n, _ in sent}
        writing: set[tuple[str, bytes, bytes]] = set()
        slack: Counter[str] = Counter()
        for n, op in sent:
            if op[0] == "append":
                _, tenant, body, signature = op
                ident = identity(tenant, BODIES[body], SIGNATURES[signature])
                if ident in writing:
                    expected = {"none"}  # follows the first copy, still being written
                else:
                    expected = self.outcomes(ident, len(self.queued(tenant)), slack[tenant])
                got = self.kind(answers[n])
                assert got in expected, f"burst append answered {got}, expected {expected}"
                self.appended += 1
                if got == "delivery":
                    writing.add(ident)
                    self.accept(answers[n], self.appended)
            elif op[0] == "ack":
                _, tenant, _, seq = op
                row = self.rows.get(seq)
                if row is not None and row.tenant == tenant and row.state == "queued":
                    row.state, row.since = "acked", self.clock * 1000
                else:
                    slack[tenant] += 1  # a repeat or a stranger's row: changes nothing
            else:
                for seq in op[1]:
                    if seq in self.rows:
                        self.rows[seq].attempts += 1

    @precondition(lambda self: self.appended > self.appended_at_start)
    @rule(ops=st.lists(OPS, min_size=1, max_size=8), data=st.data())
    def crash_during_burst(self, ops: list[Any], data: st.DataObject) -> None:
        """A burst, and SIGKILL after some of its answers (maybe none): mid-transaction,
        between commit and fsync, or while answering. Then the store opens again."""
        sent = self.send_burst(ops)
        answers: dict[int, dict[str, Any]] = {}
        for _ in range(data.draw(st.integers(0, len(sent)), label="answers before the kill")):
            n = self.store.read_one(time.monotonic() + 10)
            answers[n] = self.store.answers.pop(n)
        self.store.kill()
        self.proc = StoreProcess(self.path, self.clock, self.cap, self.batch)
        # Reconcile with the file: what was answered must be there; the rest may be.
        found = self.file_rows()
        unanswered: dict[tuple[str, bytes, str], int] = {}
        maybe_acked: set[int] = set()
        maybe_marked: Counter[int] = Counter()
        for n, op in sent:
            self.appended += 1
            if op[0] == "append":
                _, tenant, body, signature = op
                if n in answers and self.kind(answers[n]) == "delivery":
                    self.accept(answers[n], self.appended)
                elif n not in answers:
                    unanswered.setdefault(
                        (tenant, BODIES[body], SIGNATURES[signature]), self.appended
                    )
            elif op[0] == "ack":
                maybe_acked.add(op[3])
            else:
                maybe_marked.update(op[1])
        for seq, row in self.rows.items():
            assert seq in found, f"row {seq} was answered and is gone after a crash"
            on_file = found[seq]
            if on_file["state"] != row.state:
                assert row.state == "queued", f"row {seq} was {row.state}, now {on_file['state']}"
                assert on_file["state"] == "acked"
                assert seq in maybe_acked, f"row {seq} acked by nobody"
                row.state, row.since = "acked", self.clock * 1000
            assert row.attempts <= on_file["attempts"] <= row.attempts + maybe_marked[seq]
            row.attempts = on_file["attempts"]
        for seq, on_file in sorted(found.items()):
            if seq in self.rows:
                continue
            key = (on_file["tenant"], on_file["body"], on_file["signature"])
            assert key in unanswered, f"row {seq} in the file was never appended"
            assert on_file["state"] == "queued"
            assert seq > self.max_seq
            self.max_seq = seq
            assert on_file["since"] is None
            fields = {k: v for k, v in on_file.items() if k not in ("state", "since")}
            self.rows[seq] = Row(seq=seq, order=unanswered.pop(key), **fields)
        self.restarted()

    # -- reads and bridge-side writes ---------------------------------------------------

    @rule(
        tenant=st.sampled_from(TENANTS),
        after=st.integers(0, 6),
        limit=st.sampled_from([1, 2, 5, 1000]),
        max_bytes=st.sampled_from([None, 1, 100, 400, 10_000]),
    )
    def pending(self, tenant: str, after: int, limit: int, max_bytes: int | None) -> None:
        """A page of a tenant's queue: the model's unacked rows after a seq, oldest first,
        at most ``limit``, ending with the row that takes it to ``max_bytes`` or past."""
        queued = self.queued(tenant)
        start = queued[after - 1].seq if 0 < after <= len(queued) else 0
        page: list[dict[str, Any]] = []
        total = 0
        for row in [r for r in queued if r.seq > start][:limit]:
            if max_bytes is not None and total >= max_bytes:
                break
            total += len(row.body)
            page.append(row.wire())
        got = self.store.call(
            "pending", tenant=tenant, after=start, limit=limit, max_bytes=max_bytes
        )
        assert got == page

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4))
    def mark_sent(self, picks: list[int]) -> None:
        seqs = [self.seq_for(p) for p in picks]
        self.store.call("mark_sent", seqs=seqs)
        for seq in seqs:
            if seq in self.rows:
                self.rows[seq].attempts += 1

    @rule(tenant=st.sampled_from(TENANTS), pick=st.integers(0, 50), times=st.integers(1, 3))
    def ack(self, tenant: str, pick: int, times: int) -> None:
        """Acks, repeated, of the tenant's rows, other tenants' rows or unknown ones."""
        seq = self.seq_for(pick)
        for _ in range(times):
            self.store.call("ack", tenant=tenant, seq=seq)
        row = self.rows.get(seq)
        if row is not None and row.tenant == tenant and row.state == "queued":
            row.state, row.since = "acked", self.clock * 1000

    @rule(age=st.sampled_from([0, 3, WINDOW, 2 * WINDOW]))
    def expire(self, age: int) -> None:
        older_than = (self.clock - age) * 1000
        expected = []
        for seq, row in sorted(self.rows.items()):
            if row.state == "queued" and row.received_at < older_than:
                row.state, row.since = "expired", self.clock * 1000
                expected.append([seq, row.id, row.tenant, row.received_at])
        assert sorted(self.store.call("expire", older_than=older_than)) == expected

    @rule(extra=st.sampled_from([0, 1, 5, 30]), longer=st.sampled_from([0, 10]))
    def prune(self, extra: int, longer: int) -> None:
        """Prune as the relay does: delivered rows acked longer ago than their retention
        (at least the dedupe window), expired ones expired longer ago than theirs."""
        delivered_before = (self.clock - WINDOW - extra) * 1000
        expired_before = delivered_before - longer * 1000
        doomed = [
            seq
            for seq, r in self.rows.items()
            if r.since is not None
            and (
                (r.state == "acked" and r.since < delivered_before)
                or (r.state == "expired" and r.since < expired_before)
            )
        ]
        pruned = self.store.call(
            "prune", delivered_before=delivered_before, expired_before=expired_before
        )
        assert pruned == len(doomed)
        for seq in doomed:
            del self.rows[seq]

    @rule(tenant=st.sampled_from(TENANTS), age=st.sampled_from([None, 0, 5, 20]))
    def purge(self, tenant: str, age: int | None) -> None:
        before = None if age is None else (self.clock - age) * 1000
        doomed = [
            seq
            for seq, r in self.rows.items()
            if r.tenant == tenant and (before is None or r.received_at < before)
        ]
        unacked = sum(self.rows[seq].state == "queued" for seq in doomed)
        assert self.store.call("purge", tenant=tenant, before=before) == unacked
        for seq in doomed:
            del self.rows[seq]

    @rule(seconds=st.sampled_from([1, 4, WINDOW, WINDOW + 1]))
    def tick(self, seconds: int) -> None:
        self.clock += seconds
        self.store.call("clock", now=self.clock)

    # -- restarts and crashes ---------------------------------------------------------

    @precondition(lambda self: self.appended > self.appended_at_start)
    @rule()
    def restart(self) -> None:
        """A clean stop (close: pending writes finished, WAL checkpointed), and a start."""
        self.store.close()
        self.proc = StoreProcess(self.path, self.clock, self.cap, self.batch)
        self.restarted()

    @precondition(lambda self: self.appended > self.appended_at_start)
    @rule()
    def crash(self) -> None:
        """kill -9 between requests, and a start."""
        self.store.kill()
        self.proc = StoreProcess(self.path, self.clock, self.cap, self.batch)
        self.restarted()

    # -- invariants ------------------------------------------------------------------

    @precondition(lambda self: self.proc is not None)
    @invariant()
    def the_store_is_the_model(self) -> None:
        snapshot = self.store.call("snapshot", tenants=list(TENANTS))
        found = self.file_rows()
        model = {
            seq: {
                "id": r.id,
                "tenant": r.tenant,
                "body": r.body,
                "signature": r.signature,
                "received_at": r.received_at,
                "attempts": r.attempts,
                "state": r.state,
                "since": r.since,
            }
            for seq, r in self.rows.items()
        }
        lost = sorted(set(model) - set(found))
        assert not lost, f"answered rows lost: {lost}"
        assert found == model
        for tenant in TENANTS:
            queued = self.queued(tenant)
            assert snapshot["pending"][tenant] == [r.wire() for r in queued]
            orders = [r.order for _, r in sorted(self.rows.items()) if r.tenant == tenant]
            assert orders == sorted(orders), "rows of a tenant out of the order of append"
            assert snapshot["depth"][tenant] == len(queued)
        assert snapshot["depths"] == {t: len(self.queued(t)) for t in TENANTS if self.queued(t)}


StoreMachine.TestCase.settings = examples(30, stateful_step_count=25)
test_store_state_machine = StoreMachine.TestCase
