"""Fixtures for the bridge's process tests: a relay and the fakes, shared per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bridge.fakes import FakeChat, FakeLine
from tests.support.relay import RelayProcess


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One real relay for every scenario of a module."""
    relay = RelayProcess(tmp_path_factory.mktemp("relay") / "state").start()
    try:
        yield relay
    finally:
        relay.kill()  # its graceful stop is the relay's own tests' business, and takes seconds


@pytest.fixture(scope="module")
def fake_line() -> Iterator[FakeLine]:
    """A fake LINE Messaging API shared by a module's scenarios."""
    with FakeLine() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_chat() -> Iterator[FakeChat]:
    """A fake chat API shared by a module's scenarios; healthy at the start of each test."""
    with FakeChat() as fake:
        yield fake


@pytest.fixture
def healthy_chat(fake_chat: FakeChat) -> Iterator[FakeChat]:
    """``fake_chat``, answering promptly; restored after the test whatever it changed."""
    fake_chat.status, fake_chat.delay = 200, 0.0
    yield fake_chat
    fake_chat.status, fake_chat.delay = 200, 0.0
