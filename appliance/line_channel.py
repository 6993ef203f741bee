"""A channel's webhook settings in LINE's Messaging API: set the URL, read it, test it.

``linerelay tenant connect-line`` points a channel at its tenant's relay URL
and asks LINE to send it a verification webhook: the one check that sees the
relay from where LINE stands (its DNS, its TLS checks, its network). The
three calls (developers.line.biz, Messaging API reference, "Webhook"):

- ``PUT /v2/bot/channel/webhook/endpoint`` ``{"endpoint": URL}``: 200 ``{}``;
- ``GET /v2/bot/channel/webhook/endpoint``: ``{"endpoint", "active"}``;
- ``POST /v2/bot/channel/webhook/test`` (``{"endpoint": URL}`` optional, else the
  URL set): LINE posts ``{"destination": ..., "events": []}``, signed, to the
  URL and answers ``{"success", "timestamp", "statusCode", "reason", "detail"}``,
  ``statusCode`` being 0 or negative when no answer came.

Reading LINE's answers is pure (:func:`parse_test`, :func:`error_message`);
:class:`ChannelAPI` does the HTTP with httpx. The channel access token goes
only into the ``Authorization`` header, never into a message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from appliance.errors import LineAPIError

DEFAULT_API_BASE = "https://api.line.me"
ENDPOINT_PATH = "/v2/bot/channel/webhook/endpoint"
TEST_PATH = "/v2/bot/channel/webhook/test"
#: LINE answers the test only once the relay has answered LINE (or LINE gave up).
TIMEOUT_SECONDS = 30.0

#: What an operator can do about LINE's error statuses.
_HINTS = {
    401: "the channel access token is invalid or expired: issue a new one in the "
    "LINE Developers console",
    403: "the channel access token is not allowed to do this",
    429: "LINE's rate limit: try again in a minute",
}


@dataclass(frozen=True, slots=True)
class WebhookTest:
    """LINE's verdict on a webhook URL, as its test endpoint answers."""

    success: bool
    #: The relay's HTTP status, as LINE saw it; 0 or negative: no answer came.
    status_code: int
    #: LINE's reason, such as ``OK``, ``COULD_NOT_CONNECT``, ``ERROR_STATUS_CODE``.
    reason: str
    detail: str
    timestamp: str


def parse_test(body: object) -> WebhookTest:
    """LINE's test answer as a :class:`WebhookTest`; :class:`LineAPIError` if it is not one."""
    if not isinstance(body, dict):
        raise LineAPIError("LINE's webhook test answered something that is not a JSON object")
    status = body.get("statusCode")
    if not isinstance(status, int) or isinstance(status, bool):
        raise LineAPIError("LINE's webhook test answered without a statusCode")
    return WebhookTest(
        success=body.get("success") is True,
        status_code=status,
        reason=str(body.get("reason", "")),
        detail=str(body.get("detail", "")),
        timestamp=str(body.get("timestamp", "")),
    )


def error_message(what: str, status: int, body: bytes) -> str:
    """A sentence for LINE's error answer to ``what``: its status, its message
    and details (LINE's ``{"message", "details": [{"message", "property"}]}``),
    and what to do when the status says."""
    said = ""
    try:
        error: Any = json.loads(body)
    except ValueError:
        error = None
    if isinstance(error, dict):
        said = str(error.get("message", ""))
        details = error.get("details")
        if isinstance(details, list):
            notes = [
                ": ".join(str(d[k]) for k in ("property", "message") if k in d)
                for d in details
                if isinstance(d, dict)
            ]
            said = "; ".join(filter(None, [said, *notes]))
    message = f"LINE refused to {what}: HTTP {status}"
    if said:
        message += f" ({said})"
    if status in _HINTS:
        message += f"; {_HINTS[status]}"
    return message


class ChannelAPI:
    """The webhook calls of one channel, authenticated with its channel access token."""

    def __init__(
        self, access_token: str, api_base: str = DEFAULT_API_BASE, timeout: float = TIMEOUT_SECONDS
    ) -> None:
        self._client = httpx.Client(
            base_url=api_base.rstrip("/"),
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=timeout,
        )
        self.api_base = api_base

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def set_endpoint(self, url: str) -> None:
        """Make ``url`` the channel's webhook URL."""
        self._call("set the webhook URL", "PUT", ENDPOINT_PATH, {"endpoint": url})

    def endpoint(self) -> tuple[str, bool]:
        """The channel's webhook URL and whether webhooks are switched on."""
        body = self._call("read the webhook URL", "GET", ENDPOINT_PATH)
        if not isinstance(body, dict):
            raise LineAPIError("LINE answered the webhook URL with something unexpected")
        return str(body.get("endpoint", "")), body.get("active") is True

    def test(self) -> WebhookTest:
        """Ask LINE to send the channel's webhook URL a verification webhook."""
        return parse_test(self._call("test the webhook URL", "POST", TEST_PATH, {}))

    def _call(self, what: str, method: str, path: str, payload: object = None) -> object:
        try:
            response = self._client.request(method, path, json=payload)
        except httpx.HTTPError as exc:
            # httpx's messages name the URL and the failure, never a header.
            raise LineAPIError(
                f"cannot {what}: no answer from LINE's API at {self.api_base} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code != 200:
            raise LineAPIError(
                error_message(what, response.status_code, response.content),
                response.status_code,
            )
        if not response.content.strip():
            return {}  # LINE's PUT answers 200 with {}: an empty body says as much
        try:
            decoded: object = response.json()
        except ValueError as exc:
            raise LineAPIError(f"LINE answered the call to {what} with something not JSON") from exc
        return decoded
