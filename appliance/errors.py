"""The relay's error classes and the one table mapping them to HTTP answers.

Handlers raise these; :func:`response_for` is the only place that decides the
status and body. No error body carries request data, so none can echo a
signature, a secret or a token.
"""

from __future__ import annotations

from typing import ClassVar


class RelayError(Exception):
    """Base class: an expected failure with a fixed status and public error code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"


class InvalidSignature(RelayError):
    """The x-line-signature header is missing or does not match the body."""

    status = 401
    code = "invalid_signature"


class InvalidToken(RelayError):
    """A bridge upgrade without a valid bridge token."""

    status = 401
    code = "invalid_token"


class MalformedBody(RelayError):
    """The body is not UTF-8 JSON, not an object, or ``events`` is not an array."""

    status = 400
    code = "malformed_body"


class MalformedRequest(RelayError):
    """An HTTP/1 request that cannot be parsed, its connection closed after the answer.

    That includes Content-Length with Transfer-Encoding (RFC 9112 §6.3): where
    the body ends is ambiguous, the shape of request smuggling.
    """

    status = 400
    code = "malformed_request"


class HeadersTooLarge(RelayError):
    """An HTTP/1 request's head (request line and headers) over its limit; the
    connection is closed after the answer."""

    status = 431
    code = "headers_too_large"


class UnknownTenant(RelayError):
    """No tenant has this id."""

    status = 404
    code = "unknown_tenant"


class UnknownWebhook(RelayError, LookupError):
    """No stored webhook has this delivery id (never one, or pruned since).

    ``delivery_id`` is the first unknown id asked for, ``delivery_ids`` every one.
    """

    status = 404
    code = "unknown_webhook"

    def __init__(self, delivery_ids: str | tuple[str, ...]) -> None:
        ids = (delivery_ids,) if isinstance(delivery_ids, str) else tuple(delivery_ids)
        super().__init__(f"no webhook {', '.join(ids)} (unknown, or pruned)")
        self.delivery_ids = ids
        self.delivery_id = ids[0]


class QueuedWebhooks(RelayError):
    """A purge would erase webhooks no bridge has taken yet, and was not told to."""

    status = 409
    code = "queued_webhooks"

    def __init__(self, tenant: str, queued: int) -> None:
        super().__init__(
            f"tenant {tenant} has {queued} queued webhooks no bridge has taken yet; "
            "purging erases them too"
        )
        self.tenant = tenant
        self.queued = queued


class NotFound(RelayError):
    """No such path on this listener."""

    status = 404
    code = "not_found"


class MethodNotAllowed(RelayError):
    """The webhook path takes POST only."""

    status = 405
    code = "method_not_allowed"


class BodyTooLarge(RelayError):
    """The body is over the configured limit.

    ``unread`` says whether the rest of the body is still on its way (the
    answer goes out first, and the rest is drained after it), and
    ``hopeless`` whether it is too large to be worth draining (the
    connection is closed instead).
    """

    status = 413
    code = "body_too_large"

    def __init__(self, unread: bool = False, hopeless: bool = False) -> None:
        super().__init__("body over the limit")
        self.unread = unread
        self.hopeless = hopeless


class BodyTimeout(RelayError):
    """The body did not arrive within the read deadline."""

    status = 408
    code = "body_timeout"


class TooManyRequests(RelayError):
    """A bridge upgrade refused for a while: its address failed to authenticate too
    often, or its tenant reconnects too often. ``retry_after`` is in seconds."""

    status = 429
    code = "too_many_requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class AdminTokenRequired(RelayError):
    """An admin path asked for without the admin token or a console login (PROTOCOL.md §7)."""

    status = 401
    code = "unauthorized"


class CsrfRejected(RelayError):
    """A console form post without its session's CSRF token, or sent from another site."""

    status = 403
    code = "forbidden"


class Overloaded(RelayError):
    """The store could not commit before the acknowledgement deadline, or the queue is full."""

    status = 503
    code = "overloaded"


class QueueFull(Overloaded):
    """The tenant's queue is at its cap; LINE should retry later."""


class StoreError(Exception):
    """The store failed to commit (disk full, I/O error); the webhook was not kept."""


class ConfigError(ValueError):
    """A config file or environment override is invalid; the message says which key and why."""


class StateDirError(ValueError):
    """The state directory is missing or unusable; the message says which and why."""


class TenantError(ValueError):
    """A tenant command got bad input (invalid id, duplicate, unknown, empty secret)."""


class LineAPIError(Exception):
    """LINE's Messaging API refused a call or could not be reached.

    ``status`` is LINE's HTTP status, or None when no answer came. The message
    says what LINE said; it never holds the channel access token.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


#: Seconds LINE is asked to wait before retrying a 503.
RETRY_AFTER_SECONDS = 1


def response_for(error: RelayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for ``error`` (PROTOCOL.md §1's table)."""
    headers = [(b"content-type", b"application/json")]
    if isinstance(error, Overloaded):
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    if isinstance(error, TooManyRequests):
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if isinstance(error, InvalidToken | AdminTokenRequired):
        headers.append((b"www-authenticate", b"Bearer"))
    if isinstance(error, MalformedRequest | HeadersTooLarge):
        headers.append((b"connection", b"close"))
    if isinstance(error, MethodNotAllowed):
        headers.append((b"allow", b"POST"))
    body = b'{"error": "' + error.code.encode() + b'"}'
    return error.status, headers, body
