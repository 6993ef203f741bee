"""The bridge's one JSON config file: keys, validation, and watching it for edits.

The format is the original ``line_bridge.py`` file extended (PROTOCOL.md §4).
Every key is a field of :class:`BridgeConfig` with its documentation in the
field's metadata; docs/bridge.md lists them all (a test keeps the two in
step). Validation is pure: :func:`parse` takes the decoded JSON and returns a
config or raises :class:`BridgeConfigError` naming the key and the reason.
:class:`ConfigFile` re-reads the file when it changes and keeps the last good
config when an edit is broken.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOG_LEVELS = ("debug", "info", "warning", "error")

#: Keys without which the bridge cannot run; ``relay_token`` may instead ride in ``relay_url``.
REQUIRED = ("channel_secret", "channel_access_token", "relay_url", "openclaw_url")

#: Keys whose value is a credential: never logged, never shown in a diff.
SECRET_KEYS = frozenset({"relay_token", "channel_secret", "channel_access_token", "gateway_token"})

#: Keys that change the relay connection: a change reconnects.
CONNECTION_KEYS = ("relay_url", "relay_token", "ca_file", "ping_interval", "ping_timeout")

DEFAULT_APOLOGY = "Sorry, I cannot answer right now. Please try again in a little while."


class BridgeConfigError(ValueError):
    """The config file is unreadable or invalid; the message names the key and why."""


def _doc(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class BridgeConfig:
    """Every setting of ``linerelay bridge``; see docs/bridge.md."""

    relay_token: str = _doc(
        "", "The tenant's bridge token. Required unless relay_url carries it (/bridge/{token})."
    )
    channel_secret: str = _doc("", "Required. The LINE channel secret, to verify signatures again.")
    channel_access_token: str = _doc("", "Required. Bearer token for LINE's Messaging API.")
    relay_url: str = _doc(
        "", "Required. wss://HOST/bridge (token sent as a header) or wss://HOST/bridge/{token}."
    )
    openclaw_url: str = _doc("", "Required. An OpenAI-compatible .../v1/chat/completions URL.")
    gateway_token: str = _doc("", "Bearer token for openclaw_url; empty sends none.")
    line_api_base: str = _doc("https://api.line.me", "Base URL of LINE's Messaging API.")
    ca_file: str = _doc("", "PEM CA bundle for the relay's certificate; empty: the system store.")
    model: str = _doc("openclaw", "The `model` sent to the chat API.")
    system_prompt: str = _doc("", "A system message put before the user's text; empty: none.")
    state_dir: str = _doc(
        "",
        "Where the queue and status live; relative to the config file. Empty: "
        "$LINERELAY_STATE_DIR, else ./var (--state-dir overrides). Restart to change.",
    )
    concurrency: int = _doc(4, "Events answered at the same time (1-64).")
    reply_fallback_push: bool = _doc(
        True, "When the reply token is expired or refused, answer with the push API instead."
    )
    apology_text: str = _doc(
        DEFAULT_APOLOGY, "Sent when the chat API fails or times out; empty: send nothing."
    )
    chat_timeout: float = _doc(60.0, "Seconds to wait for the chat API's answer.")
    line_timeout: float = _doc(10.0, "Seconds for one request to LINE's Messaging API.")
    line_max_attempts: int = _doc(
        5, "Tries of one LINE request when it gets 429, 5xx or no answer."
    )
    loading_seconds: int = _doc(
        20, "Seconds of LINE's loading animation (5-60, a multiple of 5); 0 turns it off."
    )
    dedupe_ttl: float = _doc(
        7 * 86_400.0, "Seconds a webhookEventId is remembered to drop redeliveries."
    )
    backoff_min: float = _doc(5.0, "First reconnect delay, seconds; doubles up to backoff_max.")
    backoff_max: float = _doc(60.0, "Reconnect delay cap, seconds; a rejected token waits this.")
    ping_interval: float = _doc(20.0, "Seconds between WebSocket pings to the relay.")
    ping_timeout: float = _doc(10.0, "Seconds without a pong before the connection is dropped.")
    shutdown_grace: float = _doc(
        20.0, "On SIGTERM, seconds in-flight answers may take before the bridge exits."
    )
    log_level: str = _doc("info", "debug, info, warning or error.")

    def __post_init__(self) -> None:
        for key in REQUIRED:
            _check(bool(getattr(self, key)), key, "is required")
        relay = urlsplit(self.relay_url)
        _check(relay.scheme in ("ws", "wss"), "relay_url", "must start with wss:// (or ws://)")
        _check(bool(relay.hostname), "relay_url", "has no host")
        url_token = token_in_url(self.relay_url)
        _check(
            bool(url_token or self.relay_token),
            "relay_token",
            "is required (or carry the token in relay_url as /bridge/{token})",
        )
        _check(
            not (url_token and self.relay_token and url_token != self.relay_token),
            "relay_token",
            "differs from the token in relay_url; give one of them",
        )
        for key in ("openclaw_url", "line_api_base"):
            parts = urlsplit(getattr(self, key))
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            _check(ok, key, "must be an http:// or https:// URL")
        _check(self.log_level in LOG_LEVELS, "log_level", f"must be one of {LOG_LEVELS}")
        _check(1 <= self.concurrency <= 64, "concurrency", "must be 1-64")
        _check(
            self.loading_seconds == 0
            or (5 <= self.loading_seconds <= 60 and self.loading_seconds % 5 == 0),
            "loading_seconds",
            "must be 0 or a multiple of 5 from 5 to 60",
        )
        _check(self.line_max_attempts >= 1, "line_max_attempts", "must be at least 1")
        for key in (
            "chat_timeout",
            "line_timeout",
            "dedupe_ttl",
            "backoff_min",
            "ping_interval",
            "ping_timeout",
        ):
            _check(getattr(self, key) > 0, key, "must be positive")
        _check(self.shutdown_grace >= 0, "shutdown_grace", "must not be negative")
        _check(self.backoff_max >= self.backoff_min, "backoff_max", "must be >= backoff_min")

    @property
    def bridge_token(self) -> str:
        """The token the relay knows this bridge by, from relay_url or relay_token."""
        return token_in_url(self.relay_url) or self.relay_token

    def changed_keys(self, other: BridgeConfig) -> list[str]:
        """Names of the keys whose values differ between ``self`` and ``other``."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def token_in_url(relay_url: str) -> str:
    """The bridge token when ``relay_url`` is ``.../bridge/{token}``, else ``""``."""
    path = urlsplit(relay_url).path.rstrip("/")
    _, sep, tail = path.rpartition("/bridge/")
    if sep and tail and "/" not in tail:
        return tail
    return ""


def documented_keys() -> dict[str, str]:
    """Each config key and its documentation, in declaration order."""
    return {f.name: f.metadata["doc"] for f in dataclasses.fields(BridgeConfig)}


def parse(values: object) -> BridgeConfig:
    """Validate decoded JSON ``values`` into a config; raises :class:`BridgeConfigError`."""
    if not isinstance(values, dict):
        raise BridgeConfigError("the config must be one JSON object")
    fields = {f.name: f for f in dataclasses.fields(BridgeConfig)}
    for key in values:
        if key not in fields:
            raise BridgeConfigError(f"unknown config key {key!r}")
    missing = [key for key in REQUIRED if key not in values]
    if missing:
        raise BridgeConfigError(f"missing required key(s): {', '.join(missing)}")
    typed = {key: _coerce(key, fields[key].type, value) for key, value in values.items()}
    return BridgeConfig(**typed)


def load(path: Path) -> BridgeConfig:
    """Read and validate the config file at ``path``."""
    return parse(_read_json(path))


def _read_json(path: Path) -> object:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise BridgeConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise BridgeConfigError(f"config {path} is not UTF-8") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        # The decoder's message has line and column but never the offending value.
        raise BridgeConfigError(f"config {path} is not valid JSON: {exc}") from exc


def resolve_state_dir(
    config: BridgeConfig, config_path: Path, override: str | None, default: str
) -> Path:
    """The state directory: ``override`` (``--state-dir``), else the ``state_dir`` key
    (relative to the config file), else ``default`` ($LINERELAY_STATE_DIR or ./var,
    as for every linerelay command)."""
    if override:
        return Path(override).resolve()
    if config.state_dir:
        return (config_path.resolve().parent / config.state_dir).resolve()
    return Path(default).resolve()


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """Check a JSON value against the field's type; ints are accepted where floats are."""
    ok = False
    match kind:
        case "str":
            ok = isinstance(value, str)
        case "bool":
            ok = isinstance(value, bool)
        case "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        case "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok:
                value = float(value)
    if not ok:
        shown = "(hidden)" if key in SECRET_KEYS else json.dumps(value)[:60]
        raise BridgeConfigError(f"{key}: {shown} is not a {kind}")
    return value


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise BridgeConfigError(f"{key}: {why}")


@dataclass(frozen=True)
class _Fingerprint:
    inode: int
    size: int
    mtime_ns: int


class ConfigFile:
    """The config file on disk and the last good config read from it.

    :meth:`poll` compares the file's inode, size and modification time with
    the last read, so an in-place edit and an atomic rename are both seen.
    A broken edit raises once (with the reason) and leaves :attr:`current`
    as it was; the same broken content is not reported again.
    """

    def __init__(self, path: Path) -> None:
        """Load ``path``; raises :class:`BridgeConfigError` when it is not a valid config."""
        self.path = path
        self._seen = self._fingerprint()
        self.current = load(path)

    def _fingerprint(self) -> _Fingerprint | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return _Fingerprint(st.st_ino, st.st_size, st.st_mtime_ns)

    def poll(self) -> BridgeConfig | None:
        """A new config if the file changed and is valid; ``None`` if unchanged.

        Raises :class:`BridgeConfigError` when the file changed to something
        invalid; :attr:`current` keeps the last good config.
        """
        seen = self._fingerprint()
        if seen == self._seen:
            return None
        self._seen = seen
        config = load(self.path)
        if config == self.current:
            return None
        self.current = config
        return config
