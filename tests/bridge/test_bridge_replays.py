"""A real ``linerelay bridge`` answers an operator's replay once, though it saw its events.

The relay is tests/support/fake_relay.py (so a replay can be delivered twice on
purpose, as a relay that lost the ack would); LINE and the chat model are
tests/bridge/fakes.py. tests/integration/test_webhooks_cli.py replays through
the real relay to a real bridge.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.bridge.fakes import FakeChat, FakeLine, Recorded
from tests.bridge.harness import BridgeProcess, assert_no_secrets, new_user, text_body, wait_for
from tests.bridge.test_bridge_protocols import config_for
from tests.support.fake_relay import FakeRelay

pytestmark = pytest.mark.integration


def answers_to(line: FakeLine, user: str, reply_token: str) -> list[Recorded]:
    """Replies (by token) and pushes (to ``user``) LINE accepted."""
    return [
        r
        for r in line.delivered()
        if (r.path == FakeLine.REPLY and r.body["replyToken"] == reply_token)
        or (r.path == FakeLine.PUSH and r.body["to"] == user)
    ]


@pytest.mark.parametrize("protocol_2", [False, True])
def test_a_replay_of_a_seen_event_is_answered_again_and_never_twice(
    fake_line: FakeLine, healthy_chat: FakeChat, tmp_path: Path, protocol_2: bool
) -> None:
    secret, token = secrets.token_hex(16), "lrb_" + secrets.token_urlsafe(32)
    user, reply_token = new_user(), "rt-replay-" + secrets.token_hex(4)
    body = text_body("replay me", reply_token=reply_token, user=user)
    with FakeRelay("replay-shop", token, protocol_2=protocol_2) as relay:
        original = relay.queue(body, secret)
        bridge = BridgeProcess(
            tmp_path / "bridge", config_for(relay, secret, fake_line, healthy_chat)
        )
        bridge.start()
        try:
            wait_for(lambda: len(answers_to(fake_line, user, reply_token)) == 1, what="answer 1")
            replay = relay.queue(body, secret, replay=True)
            relay.flush()
            # Its reply token was used: the second answer goes by push.
            wait_for(lambda: len(answers_to(fake_line, user, reply_token)) == 2, what="answer 2")
            wait_for(lambda: replay not in relay.unacked(), what="the replay's ack")
            known = bridge.counter("known_bodies")
            relay.again(replay)  # the same replay once more: its ack was lost
            bridge.wait_counter("known_bodies", known + 1)
            relay.again(original)  # and LINE's original again: long answered
            bridge.wait_counter("known_bodies", known + 2)
            assert relay.unacked() == []
            assert bridge.counter("replays") == 1
            told = [
                e
                for e in bridge.log_events()
                if e.get("event") == "replay of an already seen event: processing it again"
            ]
            assert [(e["delivery"], e["seen_events"]) for e in told] == [(replay, 1)]
        finally:
            assert bridge.stop() == 0
    # Known bodies queue no job: two answers, no more.
    answers = answers_to(fake_line, user, reply_token)
    assert [a.path for a in answers] == [FakeLine.REPLY, FakeLine.PUSH]
    assert_no_secrets(bridge, token, secret)
