"""The durable queue on a real SQLite file: dedupe decisions, claiming, recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.inbox import MAX_STARTS, Body, Inbox, InboxError, Incoming, Taken

TTL = 3600.0


def items(*keys: str, chat: str = "U1") -> list[Incoming]:
    return [Incoming(i, key, chat, f'{{"n": {i}}}') for i, key in enumerate(keys)]


def take(inbox: Inbox, digest: str, events: list[Incoming], now: float) -> Taken:
    """Queue one body on its own."""
    (taken,) = inbox.take([Body(digest, events)], TTL, now=now)
    return taken


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    box = Inbox(tmp_path / "inbox.sqlite3")
    yield box
    box.close()


def test_new_events_are_queued(inbox: Inbox) -> None:
    taken = take(inbox, "d1", items("id:a", "id:b"), now=100)
    assert (taken.queued, taken.duplicates, taken.known_body) == (2, 0, False)
    assert inbox.depth() == 2


def test_same_event_id_from_another_body_is_a_duplicate(inbox: Inbox) -> None:
    take(inbox, "d1", items("id:a"), now=100)
    taken = take(inbox, "d2", items("id:a"), now=101)
    assert (taken.queued, taken.duplicates) == (0, 1)
    assert inbox.depth() == 1


def test_same_body_again_adds_nothing(inbox: Inbox) -> None:
    take(inbox, "d1", items("id:a"), now=100)
    assert take(inbox, "d1", items("id:a"), now=101).known_body


def test_events_sharing_an_id_inside_one_body_are_all_kept(inbox: Inbox) -> None:
    taken = take(inbox, "d1", items(*["id:same"] * 28), now=100)
    assert taken.queued == 28


def test_dedupe_forgets_after_the_ttl(inbox: Inbox) -> None:
    take(inbox, "d1", items("id:a"), now=100)
    assert take(inbox, "d2", items("id:a"), now=100 + TTL + 1).queued == 1
    assert inbox.prune(now=100 + 3 * TTL) >= 2


def test_dedupe_survives_reopening_the_file(tmp_path: Path) -> None:
    first = Inbox(tmp_path / "q.sqlite3")
    take(first, "d1", items("id:a"), now=100)
    first.close()
    second = Inbox(tmp_path / "q.sqlite3")
    assert take(second, "d2", items("id:a"), now=101).duplicates == 1
    second.close()


def test_claim_runs_one_job_per_chat_in_order(inbox: Inbox) -> None:
    take(inbox, "d1", items("id:a", "id:b", chat="U1"), now=100)
    take(inbox, "d2", items("id:c", chat="U2"), now=100)
    first = inbox.claim(set())
    assert first is not None
    assert first.index == 0
    assert first.chat == "U1"
    second = inbox.claim({"U1"})
    assert second is not None
    assert second.chat == "U2"
    assert inbox.claim({"U1", "U2"}) is None
    inbox.finish(first.id)
    third = inbox.claim({"U2"})
    assert third is not None
    assert (third.chat, third.index) == ("U1", 1)


def test_running_jobs_resume_after_a_crash_with_their_answer(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    first = Inbox(path)
    take(first, "d1", items("id:a"), now=100)
    job = first.claim(set())
    assert job is not None
    first.save_answer(job.id, "the answer")
    first.mark_reply_attempted(job.id)
    first.close()  # as good as a kill: nothing else was written
    second = Inbox(path)
    assert second.claim(set()) is None
    assert second.recover() == 1
    again = second.claim(set())
    assert again is not None
    assert again.answer == "the answer"
    assert again.reply_attempted
    assert again.retry_key == job.retry_key
    second.close()


def test_a_job_that_keeps_killing_the_process_is_given_up(inbox: Inbox) -> None:
    take(inbox, "d1", items("id:a"), now=100)
    for _ in range(MAX_STARTS):
        assert inbox.claim(set()) is not None
        inbox.recover()
    assert inbox.claim(set()) is None
    assert inbox.failed() == 1
    assert inbox.depth() == 0


def test_a_batch_is_one_commit_deciding_dedupe_body_by_body_in_order(inbox: Inbox) -> None:
    taken = inbox.take(
        [
            Body("d1", items("id:a", "id:b")),
            Body("d2", items("id:b", "id:c")),  # id:b is a duplicate of d1's
            Body("d1", items("id:a", "id:b")),  # the same bytes again: a redelivery
        ],
        TTL,
        now=100,
    )
    assert [(t.queued, t.duplicates, t.known_body) for t in taken] == [
        (2, 0, False),
        (1, 1, False),
        (0, 0, True),
    ]
    assert inbox.depth() == 3


def test_a_batch_whose_commit_fails_queues_none_of_its_bodies(inbox: Inbox) -> None:
    # Two events claiming the same position of one body break a constraint mid-batch.
    broken = [Incoming(0, "id:x", "U1", "{}"), Incoming(0, "id:y", "U1", "{}")]
    with pytest.raises(InboxError):
        inbox.take([Body("d1", items("id:a")), Body("d2", broken)], TTL, now=100)
    assert inbox.depth() == 0
    # Nothing of the first body was remembered either: it is new when it comes again.
    assert take(inbox, "d1", items("id:a"), now=101).queued == 1


def replay(inbox: Inbox, digest: str, events: list[Incoming], now: float) -> Taken:
    """Queue one replayed body (its digest names its delivery, as intake makes it)."""
    (taken,) = inbox.take([Body(digest, events, replay=True)], TTL, now=now)
    return taken


def test_a_replay_of_seen_events_is_queued_again_and_says_so(inbox: Inbox) -> None:
    take(inbox, "d1", items("id:a", "id:b"), now=100)
    taken = replay(inbox, "d1:replay:r1", items("id:a", "id:b"), now=101)
    assert (taken.queued, taken.duplicates, taken.seen, taken.known_body) == (2, 0, 2, False)
    assert inbox.depth() == 4


def test_the_same_replay_delivered_twice_is_queued_once(inbox: Inbox) -> None:
    take(inbox, "d1", items("id:a"), now=100)
    replay(inbox, "d1:replay:r1", items("id:a"), now=101)
    again = replay(inbox, "d1:replay:r1", items("id:a"), now=102)
    assert (again.queued, again.known_body) == (0, True)
    # Another replay of the same webhook is another request to process it.
    assert replay(inbox, "d1:replay:r2", items("id:a"), now=103).queued == 1
    assert inbox.depth() == 3


def test_line_redelivering_a_replayed_event_is_still_a_duplicate(inbox: Inbox) -> None:
    replay(inbox, "d1:replay:r1", items("id:new"), now=100)  # never seen before the replay
    taken = take(inbox, "d2", items("id:new"), now=101)
    assert (taken.queued, taken.duplicates) == (0, 1)
    take(inbox, "d3", items("id:b"), now=102)
    replay(inbox, "d3:replay:r2", items("id:b"), now=103)
    assert take(inbox, "d4", items("id:b"), now=104).duplicates == 1
