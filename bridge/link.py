"""The link to the relay: one outbound WebSocket, kept up whatever happens.

Connects to ``relay_url`` with the bridge token as ``Authorization: Bearer``
(or in the URL when ``relay_url`` carries it), pings every
``ping_interval`` seconds and drops a connection that misses a pong for
``ping_timeout`` seconds (a half-open connection). Every failure (refused,
DNS, TLS, closed, timed out) waits a delay from :class:`bridge.backoff.Backoff`
and tries again; a successful ``hello`` resets the schedule. A 401 is a
rejected token: logged as such and retried at the cap, never hammered. So is
a connection the relay closes with 4401 (the token was revoked: rotated, or
its grace after a rotation ended) or 4404 (the tenant was removed): each is
logged at error level, once per close, saying what the operator must do.

The link offers protocol 2 (the ``linerelay.v2`` subprotocol) and speaks
whichever protocol the relay selects: a relay that selects none is an older
one and gets protocol 1 exactly as before (bridge/wire.py). The webhooks of a
frame (one ``webhook``, or a protocol 2 ``webhooks`` batch) go to the
``intake`` callback together; it returns once they are durably queued, in one
commit, or could not be. The link then acks in one frame everything that
commit made durable (protocol 1: one ack per webhook) and nacks, one by one,
what it could not take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from appliance.protocol import FrameError, Hello, Webhook, Webhooks, decode
from bridge.backoff import Backoff
from bridge.config import BridgeConfig, token_in_url
from bridge.status import BridgeStatus
from bridge.wire import OFFER, IntakeResult, delivered, negotiated, replies

log = logging.getLogger(__name__)

#: Largest frame accepted from the relay. A protocol 2 batch holds up to the relay's
#: ``bridge_window_bytes`` of bodies (4 MiB by default, or one body of up to 1 MiB going
#: alone), and JSON escaping can double them; a frame over this would be refused, the
#: connection closed and the same batch sent again, so the room is generous.
MAX_FRAME_BYTES = 32 * 1024 * 1024
#: Seconds allowed for TCP, TLS and the upgrade together.
OPEN_TIMEOUT = 20.0
USER_AGENT = "linerelay-bridge/1"
#: Close codes of the relay (appliance/hub.py) that no reconnect can cure, and what
#: the operator is told: each is an error line, then a wait of backoff_max.
REVOKED = {
    4401: "token revoked: the relay closed the connection (4401) because this bridge's "
    "token was rotated; put the new token (from `linerelay tenant rotate-token`) in "
    "relay_token",
    4404: "tenant removed: the relay closed the connection (4404) because this bridge's "
    "tenant no longer exists",
}


#: Queues a frame's webhooks in one commit; returns one result per webhook, in order.
Intake = Callable[[Sequence[Webhook]], Awaitable[list[IntakeResult]]]


def connect_headers(config: BridgeConfig) -> dict[str, str]:
    """Headers of the upgrade request: the token as Bearer unless the URL carries it."""
    if token_in_url(config.relay_url):
        return {}
    return {"Authorization": f"Bearer {config.relay_token}"}


def ssl_context(config: BridgeConfig) -> ssl.SSLContext | None:
    """Certificate-verifying TLS for ``wss://`` (``ca_file`` when given), none for ``ws://``."""
    if not config.relay_url.startswith("wss:"):
        return None
    return ssl.create_default_context(cafile=config.ca_file or None)


class Link:
    """Keeps the WebSocket to the relay and feeds webhook frames to ``intake``."""

    def __init__(
        self,
        config: Callable[[], BridgeConfig],
        intake: Intake,
        status: BridgeStatus,
        backoff: Backoff,
    ) -> None:
        """``config`` is read at each connection attempt, so reloads take effect on reconnect."""
        self._config = config
        self._intake = intake
        self._status = status
        self._backoff = backoff
        self._kick = asyncio.Event()

    def reconnect(self) -> None:
        """Drop the current connection (or cut a backoff wait short) and connect again."""
        self._kick.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Connect, serve, and reconnect until ``stopping`` is set."""
        stop_wait = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                self._kick.clear()
                session = asyncio.ensure_future(self._session())
                kick_wait = asyncio.ensure_future(self._kick.wait())
                await asyncio.wait(
                    {session, stop_wait, kick_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                kick_wait.cancel()
                if not session.done():
                    # Stopping or reconfigured: unacked webhooks come back on the next connection.
                    session.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await session
                    if stopping.is_set():
                        break
                    log.info("reconnecting to the relay with the new config")
                    continue
                try:
                    delay = session.result()
                except Exception:
                    # A bug must cost a reconnect, never the link itself.
                    log.exception("relay session failed unexpectedly")
                    self._fail("backoff", "relay session failed unexpectedly")
                    delay = self._backoff.next_delay()
                if stopping.is_set():
                    break
                if self._status.connection != "rejected":
                    self._status.connection = "backoff"
                log.info("waiting before reconnecting", extra={"wait_seconds": round(delay, 2)})
                kick_wait = asyncio.ensure_future(self._kick.wait())
                await asyncio.wait(
                    {stop_wait, kick_wait}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                kick_wait.cancel()
        finally:
            stop_wait.cancel()
            self._status.connected_since = None

    async def _session(self) -> float:
        """One connection, from attempt to close; returns the delay before the next attempt."""
        config = self._config()
        self._backoff.configure(config.backoff_min, config.backoff_max)
        self._status.connection = "connecting"
        try:
            async with connect(
                config.relay_url,
                additional_headers=connect_headers(config),
                ssl=ssl_context(config),
                proxy=None,
                open_timeout=OPEN_TIMEOUT,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
                # A dead peer will not complete the closing handshake: do not wait long for it.
                close_timeout=min(5.0, config.ping_timeout),
                max_size=MAX_FRAME_BYTES,
                user_agent_header=USER_AGENT,
                subprotocols=list(OFFER),
            ) as ws:
                protocol = negotiated(ws.subprotocol)
                self._status.protocol = protocol
                log.info(
                    "connected to the relay",
                    extra={"url": config.relay_url, "protocol": protocol},
                )
                async for message in ws:
                    await self._on_message(ws, message, protocol)
            reason = "the relay closed the connection"
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code == 401:
                log.error(
                    "the relay rejected the bridge token (HTTP 401): check relay_token",
                    extra={"url": config.relay_url, "security": True},
                )
                self._fail("rejected", "relay rejected the bridge token (HTTP 401)")
                return self._backoff.at_cap()
            reason = f"the relay refused the upgrade with HTTP {code}"
            wait = _retry_after(exc.response.headers.get("Retry-After"))
            if code == 429 and wait is not None:
                # Too many attempts (PROTOCOL.md §2): come back when the relay says, not sooner.
                self._fail("backoff", reason)
                log.warning("relay connection down", extra={"reason": reason, "retry_after": wait})
                return max(wait, self._backoff.next_delay())
        except ConnectionClosed as exc:
            closed = exc.rcvd.code if exc.rcvd else None
            if closed in REVOKED:
                log.error(REVOKED[closed], extra={"url": config.relay_url, "security": True})
                self._fail("rejected", REVOKED[closed].partition(":")[0] + f" ({closed})")
                # Reconnecting cannot help until the config changes, which reconnects at once.
                return self._backoff.at_cap()
            reason = f"connection lost ({closed or 'no close frame'})"
        except ssl.SSLError as exc:
            reason = f"TLS failure: {exc.reason or type(exc).__name__}"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            reason = f"cannot connect: {type(exc).__name__}: {exc}"
        self._fail("backoff", reason)
        log.warning("relay connection down", extra={"reason": reason, "url": config.relay_url})
        return self._backoff.next_delay()

    def _fail(self, state: str, reason: str) -> None:
        self._status.connection = state
        self._status.connected_since = None
        self._status.error(reason)

    async def _on_message(self, ws: ClientConnection, message: str | bytes, protocol: int) -> None:
        try:
            frame = decode(message)
        except FrameError as exc:
            self._status.count("bad_frames")
            log.warning("unreadable frame from the relay", extra={"why": str(exc)})
            return
        match frame:
            case Hello():
                if frame.protocol != protocol:
                    log.warning(
                        "the relay's hello names another protocol than the one negotiated",
                        extra={"relay": frame.protocol, "negotiated": protocol},
                    )
                self._backoff.reset()
                self._status.connection = "connected"
                self._status.tenant = frame.tenant
                self._status.connected_since = time.time()
                self._status.count("hellos")
                log.info(
                    "relay said hello",
                    extra={
                        "tenant": frame.tenant,
                        "window": frame.window,
                        "protocol": frame.protocol,
                    },
                )
            case Webhook() | Webhooks():
                webhooks = delivered(frame)
                if not webhooks:
                    return
                results = await self._intake(webhooks)
                ack_frames, nack_frames = replies(webhooks, results, protocol)
                for text in (*ack_frames, *nack_frames):
                    await ws.send(text)
                self._status.count("acked", len(webhooks) - len(nack_frames))
                self._status.count("nacked", len(nack_frames))
                self._status.count("ack_frames", len(ack_frames))
            case _:
                log.debug("frame ignored", extra={"frame_type": type(frame).__name__})


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the relay sends whole seconds), if it is one."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
