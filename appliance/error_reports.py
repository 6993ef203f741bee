"""Optional error reports to Sentry (``sentry_dsn``), with nothing sensitive in them.

Off by default: with no DSN, :func:`start` returns at once and ``sentry_sdk``
is never imported. With one, every relay process reports its unexpected
exceptions: whatever reaches a log line with a traceback (``log.exception``,
asyncio's handler for errors no task caught, Hypercorn's for an app that
raised, an exception that ends the process). Error lines without an
exception (a reload refused, a certificate kept) are the operator's business
and stay in the logs and alerts; :func:`before_send` drops them.

What a report may carry is decided here, in one pure function,
:func:`scrub`, run on every event before it leaves the process:

- no request bodies, cookies, query strings or environment, and only headers
  that cannot hold a credential (sentry-sdk's request integrations are off
  anyway: ``auto_enabling_integrations=False``);
- no local variables of stack frames (``include_local_variables=False``, and
  any ``vars`` that appear are removed): a frame of the ingress holds the
  body, its signature and the tenant's secret;
- the value of any key that names a credential (secret, token, signature,
  authorization, password, cookie, DSN, body) replaced by ``[redacted]``;
- in every string: bridge tokens (``lrb_...``, ``/bridge/{token}`` paths), the
  admin token (``lra_...``), ``Bearer`` credentials, ``x-line-signature``
  values and anything shaped like a signature (44 characters of base64),
  webhook bodies (JSON with ``"events"``), and every channel secret the relay
  knows (current and previous, matched by value: a secret has no shape to
  recognise).

Breadcrumbs (the log lines before the error) are part of the event and are
scrubbed with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from appliance import logs, version
from appliance.errors import ConfigError

REDACTED = logs.REDACTED
#: Keys whose values are credentials or personal data, wherever they appear.
_SENSITIVE_KEY = re.compile(
    r"(?i)secret|token|signature|authori[sz]ation|password|passwd|cookie|dsn|credential|"
    r"api[_-]?key|^body$"
)
#: Parts of a request event that are never sent.
_REQUEST_DROPPED = ("data", "cookies", "query_string", "env")
#: A bridge token (``lrb_``, appliance.tenants.new_token) or the admin token (``lra_``,
#: appliance.console.sessions.new_admin_token): the prefix, then URL-safe base64.
_TOKEN = re.compile(r"lr[ab]_[A-Za-z0-9_-]+")
#: A base64 SHA-256 digest: what an x-line-signature is, wherever it turns up.
_SIGNATURE_SHAPE = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])")
#: A LINE webhook body (or its repr): JSON with an events array.
_WEBHOOK_BODY = re.compile(r"""["']events["']\s*:\s*\[""")
#: Runs of the characters a channel secret (32 hex digits, from LINE) is made of: each
#: is looked up among the known secrets, so a report costs one pass over its text
#: whatever the number of tenants. Secrets of other characters are searched for whole.
_SECRET_CANDIDATE = re.compile(r"[A-Za-z0-9_-]{8,}")

Event = dict[str, Any]
SecretSource = Callable[[], Iterable[bytes]]


def scrub(event: Event, secrets: Collection[str] = ()) -> Event:
    """``event`` with everything sensitive removed (the rules: this module's docstring).

    ``secrets`` are values to redact wherever they occur (the tenants' channel
    secrets). Returns a new event; ``event`` is not changed.
    """
    known = _Known(
        frozenset(s for s in secrets if _SECRET_CANDIDATE.fullmatch(s)),
        tuple(s for s in secrets if s and not _SECRET_CANDIDATE.fullmatch(s)),
    )
    cleaned: Event = _clean(event, known)
    request = cleaned.get("request")
    if isinstance(request, dict):
        for key in _REQUEST_DROPPED:
            request.pop(key, None)
    return cleaned


def before_send(event: Event, secrets: Collection[str] = ()) -> Event | None:
    """What is sent of ``event``: nothing unless it reports an exception, else :func:`scrub`."""
    if not _reports_exception(event):
        return None
    return scrub(event, secrets)


def start(dsn: str, secrets: SecretSource) -> bool:
    """Send this process's unexpected exceptions to the Sentry project of ``dsn``;
    False (and nothing imported) when ``dsn`` is empty. :class:`ConfigError`
    when sentry-sdk is not installed.

    ``secrets`` gives the channel secrets to redact, read at each event (the
    tenants change while the relay runs).
    """
    if not dsn:
        return False
    try:
        # Only when configured: sentry-sdk costs a third of a start-up.
        import sentry_sdk  # noqa: PLC0415
        from sentry_sdk.integrations.logging import LoggingIntegration  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            "sentry_dsn: sentry-sdk is not installed (pip install 'linerelay[sentry]')"
        ) from exc

    def hook(event: Event, _hint: dict[str, Any]) -> Event | None:
        return before_send(event, _as_text(secrets()))

    sentry_sdk.init(
        dsn=dsn,
        release=f"linerelay@{version()}",
        before_send=hook,  # type: ignore[arg-type]  # sentry's Event is a TypedDict
        include_local_variables=False,
        max_request_body_size="never",
        send_default_pii=False,
        # Only what is listed: no framework integration wraps the hot path.
        auto_enabling_integrations=False,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
    )
    return True


def _reports_exception(event: Event) -> bool:
    exception = event.get("exception")
    return isinstance(exception, dict) and bool(exception.get("values"))


def _as_text(values: Iterable[bytes]) -> set[str]:
    return {value.decode("utf-8", "replace") for value in values if value}


@dataclass(frozen=True, slots=True)
class _Known:
    """The secrets to redact: ``words`` found as whole runs, ``others`` searched for."""

    words: frozenset[str]
    others: tuple[str, ...]


def _clean(value: Any, secrets: _Known) -> Any:
    if isinstance(value, dict):
        cleaned = {}
        for key, item in value.items():
            if key == "vars":
                continue  # a stack frame's local variables
            if isinstance(key, str) and _SENSITIVE_KEY.search(key) and item not in (None, ""):
                cleaned[key] = REDACTED
            else:
                cleaned[key] = _clean(item, secrets)
        return cleaned
    if isinstance(value, list | tuple):
        return [_clean(item, secrets) for item in value]
    if isinstance(value, bytes | bytearray):
        return _clean_text(bytes(value).decode("utf-8", "replace"), secrets)
    if isinstance(value, str):
        return _clean_text(value, secrets)
    return value


def _clean_text(text: str, secrets: _Known) -> str:
    if _WEBHOOK_BODY.search(text):
        return f"{REDACTED} (a webhook body)"
    text = logs.redact(text)
    text = _TOKEN.sub(REDACTED, text)
    text = _SIGNATURE_SHAPE.sub(REDACTED, text)
    if secrets.words:
        text = _SECRET_CANDIDATE.sub(
            lambda match: REDACTED if match.group() in secrets.words else match.group(), text
        )
    for secret in secrets.others:
        text = text.replace(secret, REDACTED)
    return text
