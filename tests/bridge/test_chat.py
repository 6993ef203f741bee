"""The chat API client against a fake OpenAI-compatible server."""

from __future__ import annotations

import httpx
import pytest

from bridge.chat import ChatClient, ChatError, ChatSettings, build_request, read_answer
from tests.bridge.fakes import FakeChat


def settings(url: str, token: str = "", timeout: float = 5.0) -> ChatSettings:
    return ChatSettings(url, token, "test-model", "Be brief.", timeout)


def test_request_has_model_system_prompt_and_text() -> None:
    assert build_request(settings("http://x"), "hi") == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
    }


@pytest.mark.parametrize(
    "payload",
    [{}, {"choices": []}, {"choices": [{"message": {"content": "  "}}]}, [], {"choices": [{}]}],
)
def test_answers_without_content_are_errors(payload: object) -> None:
    with pytest.raises(ChatError):
        read_answer(payload)


@pytest.mark.integration
async def test_answer_comes_back_with_the_gateway_token() -> None:
    with FakeChat() as fake:
        async with httpx.AsyncClient() as http:
            chat = ChatClient(http, lambda: settings(fake.url, token="gw-1"))
            assert await chat.complete("ping") == "model says: ping"
        [request] = fake.requests()
    assert request.headers["authorization"] == "Bearer gw-1"
    assert request.body["model"] == "test-model"


@pytest.mark.integration
async def test_no_gateway_token_sends_no_authorization() -> None:
    with FakeChat() as fake:
        async with httpx.AsyncClient() as http:
            await ChatClient(http, lambda: settings(fake.url)).complete("ping")
        assert "authorization" not in fake.requests()[0].headers


@pytest.mark.integration
async def test_failing_chat_api_is_a_chat_error() -> None:
    with FakeChat() as fake:
        fake.status = 503
        async with httpx.AsyncClient() as http:
            with pytest.raises(ChatError, match="503"):
                await ChatClient(http, lambda: settings(fake.url)).complete("ping")


@pytest.mark.integration
async def test_slow_chat_api_times_out() -> None:
    with FakeChat() as fake:
        fake.delay = 2.0
        async with httpx.AsyncClient() as http:
            with pytest.raises(ChatError, match="within"):
                await ChatClient(http, lambda: settings(fake.url, timeout=0.3)).complete("ping")
