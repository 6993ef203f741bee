"""The two peers the relay is measured against, as importable ASGI apps.

- ``bare``: the smallest ASGI app that reads a body and answers 200 on
  Hypercorn: the stack's ceiling.
- ``fastapi_app``: what a user would pick: FastAPI with line-bot-sdk's
  ``WebhookParser`` (verify + parse), served by uvicorn.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.webhook import WebhookParser

from bench.common import SECRET


async def bare(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Read the body, answer ``{}``."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


fastapi_app = FastAPI()
_parser = WebhookParser(SECRET)


@fastapi_app.post("/webhook/{tenant}")
async def webhook(tenant: str, request: Request) -> dict[str, str]:
    """Verify and parse as line-bot-sdk's examples do."""
    body = (await request.body()).decode("utf-8")
    try:
        _parser.parse(body, request.headers.get("x-line-signature", ""))
    except InvalidSignatureError as exc:
        raise HTTPException(status_code=401) from exc
    return {}
