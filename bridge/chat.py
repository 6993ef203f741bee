"""The chat model: an OpenAI-compatible ``/v1/chat/completions`` endpoint over httpx.

One request per question, with a timeout; any failure (no answer, an error
status, a malformed or empty answer) is a :class:`ChatError`, which the
worker turns into the configured apology rather than silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


class ChatError(Exception):
    """The chat API did not produce an answer; the message says why (never a credential)."""


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """What :class:`ChatClient` reads from the current config on every request."""

    url: str
    gateway_token: str
    model: str
    system_prompt: str
    timeout: float


def build_request(settings: ChatSettings, text: str) -> dict[str, Any]:
    """The JSON body asking the model about ``text``."""
    messages = []
    if settings.system_prompt:
        messages.append({"role": "system", "content": settings.system_prompt})
    messages.append({"role": "user", "content": text})
    return {"model": settings.model, "messages": messages}


def read_answer(payload: object) -> str:
    """The assistant's text from a chat completion; raises :class:`ChatError` if there is none."""
    try:
        content = payload["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError) as exc:
        raise ChatError("the chat API's answer has no choices[0].message.content") from exc
    if not isinstance(content, str) or not content.strip():
        raise ChatError("the chat API answered with empty content")
    return content.strip()


class ChatClient:
    """Asks the configured chat API."""

    def __init__(self, client: httpx.AsyncClient, settings: Callable[[], ChatSettings]) -> None:
        """``settings`` is called per request, so a reloaded URL, model or token is used at once."""
        self._client = client
        self._settings = settings

    async def complete(self, text: str) -> str:
        """The model's answer to ``text``."""
        settings = self._settings()
        headers = {}
        if settings.gateway_token:
            headers["Authorization"] = f"Bearer {settings.gateway_token}"
        try:
            # httpx's timeout bounds each phase; the outer one bounds the whole answer.
            async with asyncio.timeout(settings.timeout):
                response = await self._client.post(
                    settings.url,
                    json=build_request(settings, text),
                    headers=headers,
                    timeout=settings.timeout,
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ChatError(f"the chat API did not answer within {settings.timeout:g} s") from exc
        except httpx.TransportError as exc:
            raise ChatError(f"the chat API is unreachable ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise ChatError(f"the chat API answered HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise ChatError("the chat API's answer is not JSON") from exc
        return read_answer(payload)
