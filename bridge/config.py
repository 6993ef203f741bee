"""The bridge's one JSON config file: keys, validation, and watching it for edits.

The format is the original ``line_bridge.py`` file extended (PROTOCOL.md §4).
Every key is a field of :class:`BridgeConfig` with its documentation and rules
(appliance/settings.py, shared with the relay's config); docs/bridge-config.md
is generated from them (a test keeps the two in step). Validation is pure:
:func:`parse` takes the decoded JSON and returns a config or raises
:class:`BridgeConfigError` naming the key and the reason. :class:`ConfigFile`
re-reads the file when it changes and keeps the last good config when an edit
is broken.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from appliance.settings import (
    NOT_NEGATIVE,
    POSITIVE,
    REQUIRED,
    Rule,
    Settings,
    at_least,
    between,
    one_of,
    setting,
)

LOG_LEVELS = ("debug", "info", "warning", "error")

#: Keys whose value is a credential: never logged, never shown in a diff.
SECRET_KEYS = frozenset(
    {
        "relay_token",
        "channel_secret",
        "previous_channel_secret",
        "channel_access_token",
        "gateway_token",
    }
)

#: Keys that change the relay connection: a change reconnects.
CONNECTION_KEYS = ("relay_url", "relay_token", "ca_file", "ping_interval", "ping_timeout")

DEFAULT_APOLOGY = "Sorry, I cannot answer right now. Please try again in a little while."


class BridgeConfigError(ValueError):
    """The config file is unreadable or invalid; the message names the key and why."""


def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


HTTP_URL = Rule(_http_url, "must be an http:// or https:// URL")
LOADING_SECONDS = Rule(
    lambda value: value == 0 or (5 <= value <= 60 and value % 5 == 0),
    "must be 0 or a multiple of 5 from 5 to 60",
)


@dataclass(frozen=True)
class BridgeConfig(Settings):
    """Every setting of ``linerelay bridge``; see docs/bridge-config.md."""

    relay_token: str = setting(
        "",
        "The tenant's bridge token. Required unless relay_url carries it (/bridge/{token}); "
        "if both do, it must be the same token.",
    )
    channel_secret: str = setting(
        "", "The LINE channel secret, to verify signatures again.", REQUIRED
    )
    previous_channel_secret: str = setting(
        "",
        "After a channel secret rotation: the old secret, also accepted, so that webhooks "
        "the relay took under it (queued, or replayed later) still verify. Empty: none "
        "(docs/bridge.md, 'Rotating the channel secret').",
    )
    channel_access_token: str = setting("", "Bearer token for LINE's Messaging API.", REQUIRED)
    relay_url: str = setting(
        "",
        "wss://HOST/bridge (token sent as Authorization: Bearer) or wss://HOST/bridge/{token}.",
        REQUIRED,
    )
    openclaw_url: str = setting(
        "", "An OpenAI-compatible .../v1/chat/completions URL.", REQUIRED, HTTP_URL
    )
    gateway_token: str = setting("", "Bearer token for openclaw_url; empty sends none.")
    line_api_base: str = setting(
        "https://api.line.me", "Base URL of LINE's Messaging API.", HTTP_URL
    )
    ca_file: str = setting(
        "", "PEM CA bundle for the relay's certificate; empty: the system store."
    )
    model: str = setting("openclaw", "The `model` sent to the chat API.")
    system_prompt: str = setting("", "A system message put before the user's text; empty: none.")
    state_dir: str = setting(
        "",
        "Where the queue and status live; relative to the config file. Empty: "
        "$LINERELAY_STATE_DIR, else ./var (--state-dir overrides).",
    )
    concurrency: int = setting(4, "Events answered at the same time (1-64).", between(1, 64))
    reply_fallback_push: bool = setting(
        True, "When the reply token is expired or refused, answer with the push API instead."
    )
    apology_text: str = setting(
        DEFAULT_APOLOGY, "Sent when the chat API fails or times out; empty: send nothing."
    )
    chat_timeout: float = setting(
        60.0, "Seconds to wait for the chat API's whole answer.", POSITIVE
    )
    line_timeout: float = setting(
        10.0, "Seconds for one request to LINE's Messaging API.", POSITIVE
    )
    line_max_attempts: int = setting(
        5, "Tries of one LINE request when it gets 429, 5xx or no answer.", at_least(1)
    )
    loading_seconds: int = setting(
        20,
        "Seconds of LINE's loading animation (5-60, a multiple of 5); 0 turns it off.",
        LOADING_SECONDS,
    )
    dedupe_ttl: float = setting(
        7 * 86_400.0, "Seconds a webhookEventId is remembered to drop redeliveries.", POSITIVE
    )
    backoff_min: float = setting(
        5.0, "First reconnect delay, seconds; doubles up to backoff_max.", POSITIVE
    )
    backoff_max: float = setting(
        60.0, "Reconnect delay cap, seconds; a rejected token waits this long."
    )
    ping_interval: float = setting(20.0, "Seconds between WebSocket pings to the relay.", POSITIVE)
    ping_timeout: float = setting(
        10.0, "Seconds without a pong before the connection is dropped as dead.", POSITIVE
    )
    shutdown_grace: float = setting(
        20.0,
        "On SIGTERM, seconds in-flight answers may take before the bridge exits.",
        NOT_NEGATIVE,
    )
    log_level: str = setting("info", "debug, info, warning or error.", one_of(LOG_LEVELS))

    error = BridgeConfigError
    secret_keys = SECRET_KEYS

    def __post_init__(self) -> None:
        super().__post_init__()
        relay = urlsplit(self.relay_url)
        self.require(
            relay.scheme in ("ws", "wss"), "relay_url", "must start with wss:// (or ws://)"
        )
        self.require(bool(relay.hostname), "relay_url", "has no host")
        url_token = token_in_url(self.relay_url)
        self.require(
            bool(url_token or self.relay_token),
            "relay_token",
            "is required (or carry the token in relay_url as /bridge/{token})",
        )
        self.require(
            not (url_token and self.relay_token and url_token != self.relay_token),
            "relay_token",
            "differs from the token in relay_url; give one of them",
        )
        self.require(self.backoff_max >= self.backoff_min, "backoff_max", "must be >= backoff_min")

    @property
    def bridge_token(self) -> str:
        """The token the relay knows this bridge by, from relay_url or relay_token."""
        return token_in_url(self.relay_url) or self.relay_token


def token_in_url(relay_url: str) -> str:
    """The bridge token when ``relay_url`` is ``.../bridge/{token}``, else ``""``."""
    path = urlsplit(relay_url).path.rstrip("/")
    _, sep, tail = path.rpartition("/bridge/")
    if sep and tail and "/" not in tail:
        return tail
    return ""


def parse(values: object) -> BridgeConfig:
    """Validate decoded JSON ``values`` into a config; raises :class:`BridgeConfigError`."""
    if not isinstance(values, dict):
        raise BridgeConfigError("the config must be one JSON object")
    return BridgeConfig.build(values)


_DOCS_INTRO = """\
# Bridge configuration

<!-- Generated by `linerelay config --docs --bridge` from bridge/config.py; edit there. -->

`linerelay bridge --config FILE` reads one JSON object: the original
`line_bridge.py` file, extended (PROTOCOL.md §4; docs/bridge.md has the rest).
Unknown keys are refused with an error naming the key; values are type-checked
(a number where a number belongs, `true`/`false` for switches), and an error
about a credential never repeats its value. Durations are seconds (integers or
decimals). The bridge cannot start on a refused file (exit status 2).

The file is checked every second; a valid edit applies at once, a broken one is
refused and the last good config kept (docs/bridge.md, "Reloading"). Keys marked
*reconnect* apply by reconnecting to the relay at once; *restart* ones at the
next start.

"""


def render_docs() -> str:
    """docs/bridge-config.md, from the fields of :class:`BridgeConfig`."""
    return _DOCS_INTRO + BridgeConfig.docs_table(_reload)


def _reload(key: str) -> str:
    if key == "state_dir":
        return "restart"
    return "reconnect" if key in CONNECTION_KEYS else "yes"


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
