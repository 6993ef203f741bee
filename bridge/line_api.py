"""LINE's Messaging API: reply, push and the loading animation, over httpx.

Pure parts first: :func:`split_text` cuts an answer to LINE's 5,000
characters per text message (counted in UTF-16 code units, as LINE counts),
:func:`batches` groups messages five to a request, and :func:`retry_delay`
is the retry policy (429 and 5xx retried with exponential backoff honouring
``Retry-After``; other 4xx never retried). :class:`LineApi` is the thin
asynchronous layer over them.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

MAX_TEXT_UNITS = 5000
MAX_MESSAGES_PER_REQUEST = 5
#: Longest wait between two tries of one request, whatever Retry-After says.
MAX_RETRY_WAIT = 60.0
#: A break this close to the limit is preferred over a hard cut mid-word.
_SOFT_BREAK_WINDOW = 500


class LineApiError(Exception):
    """LINE refused a request, or it could not be delivered after every try."""

    def __init__(self, status: int | None, message: str, uncertain: bool = False) -> None:
        """``status`` is None when no answer came; ``uncertain``: LINE may have acted on it."""
        super().__init__(f"LINE API {status or 'unreachable'}: {message}")
        self.status = status
        self.message = message
        self.uncertain = uncertain


class ReplyTokenRejected(LineApiError):
    """The reply token is expired, already used or unknown (400 "Invalid reply token")."""


def units(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (an emoji outside the BMP counts twice)."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT_UNITS) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` UTF-16 units, at a line break or space if one is near."""
    pieces: list[str] = []
    rest = text
    while units(rest) > limit:
        cut = _cut_index(rest, limit)
        soft = max(rest.rfind("\n", 0, cut), rest.rfind(" ", 0, cut))
        if soft > 0 and units(rest[:soft]) > limit - _SOFT_BREAK_WINDOW:
            cut = soft + 1
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def _cut_index(text: str, limit: int) -> int:
    """The largest index whose prefix fits ``limit`` units, never splitting a character."""
    total = 0
    for i, char in enumerate(text):
        total += 2 if ord(char) > 0xFFFF else 1
        if total > limit:
            return i
    return len(text)


def text_messages(text: str) -> list[dict[str, Any]]:
    """LINE text message objects for ``text``, split to the size limit."""
    return [{"type": "text", "text": piece} for piece in split_text(text)]


def batches(
    messages: Sequence[dict[str, Any]], size: int = MAX_MESSAGES_PER_REQUEST
) -> Iterator[list[dict[str, Any]]]:
    """``messages`` in requests of at most ``size`` messages."""
    for start in range(0, len(messages), size):
        yield list(messages[start : start + size])


def retry_delay(
    status: int | None, retry_after: str | None, attempt: int, now: float | None = None
) -> float | None:
    """Seconds to wait before try ``attempt + 1``, or ``None`` if the failure is final.

    ``status`` is None for a transport failure (no answer). ``Retry-After``
    may be seconds or an HTTP date; it is honoured up to :data:`MAX_RETRY_WAIT`.
    """
    if status is not None and status != 429 and status < 500:
        return None
    backoff = min(MAX_RETRY_WAIT, 0.5 * 2.0 ** min(attempt - 1, 10))
    if retry_after:
        wait = _parse_retry_after(retry_after, time.time() if now is None else now)
        if wait is not None:
            return min(MAX_RETRY_WAIT, max(0.0, wait))
    return backoff


def _parse_retry_after(value: str, now: float) -> float | None:
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - now


@dataclass(frozen=True, slots=True)
class LineSettings:
    """What :class:`LineApi` reads from the current config on every request."""

    base_url: str
    access_token: str
    timeout: float
    max_attempts: int


class LineApi:
    """Reply, push and loading animation against ``settings().base_url``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Callable[[], LineSettings],
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        """``settings`` is called per request, so a reloaded access token is used at once."""
        self._client = client
        self._settings = settings
        self._sleep = sleep

    async def reply(self, reply_token: str, messages: list[dict[str, Any]]) -> None:
        """Answer with the Reply API; raises :class:`ReplyTokenRejected` for a bad token."""
        await self._post(
            "/v2/bot/message/reply", {"replyToken": reply_token, "messages": messages}, {}
        )

    async def push(self, to: str, messages: list[dict[str, Any]], retry_key: str) -> None:
        """Send with the Push API; ``retry_key`` makes retries (and restarts) idempotent."""
        await self._post(
            "/v2/bot/message/push",
            {"to": to, "messages": messages},
            {"X-Line-Retry-Key": retry_key},
        )

    async def start_loading(self, chat_id: str, seconds: int) -> None:
        """Show the loading animation in a one-on-one chat."""
        await self._post(
            "/v2/bot/chat/loading/start", {"chatId": chat_id, "loadingSeconds": seconds}, {}
        )

    async def _post(self, path: str, payload: dict[str, Any], headers: dict[str, str]) -> None:
        settings = self._settings()
        url = settings.base_url.rstrip("/") + path
        auth = {"Authorization": f"Bearer {settings.access_token}", **headers}
        uncertain = False
        attempt = 0
        while True:
            attempt += 1
            status: int | None
            retry_after = None
            try:
                response = await self._client.post(
                    url, json=payload, headers=auth, timeout=settings.timeout
                )
            except httpx.TransportError as exc:
                status, message = None, type(exc).__name__
                # Only a failure before the request left could not have reached LINE.
                uncertain = uncertain or not isinstance(
                    exc, httpx.ConnectError | httpx.ConnectTimeout
                )
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return
                if status == 409 and "X-Line-Retry-Key" in headers:
                    # LINE already accepted a request with this retry key: it was delivered.
                    return
                message = _error_message(response)
                retry_after = response.headers.get("retry-after")
                uncertain = uncertain or status >= 500
                if status == 400 and "reply token" in message.lower():
                    raise ReplyTokenRejected(status, message, uncertain)
            delay = retry_delay(status, retry_after, attempt)
            if delay is None or attempt >= settings.max_attempts:
                log.warning(
                    "LINE API request failed",
                    extra={
                        "path": path,
                        "status": status,
                        "reason": message[:200],
                        "attempts": attempt,
                    },
                )
                raise LineApiError(status, message, uncertain)
            log.info(
                "LINE API retry",
                extra={"path": path, "status": status, "attempt": attempt, "wait": round(delay, 2)},
            )
            await self._sleep(delay)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.text[:200]
