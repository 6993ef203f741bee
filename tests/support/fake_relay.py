"""A relay's bridge endpoint and nothing more, to test bridges against either protocol.

:class:`FakeRelay` is a small real WebSocket server (python-websockets'
threaded server, plain ``ws://`` on 127.0.0.1) holding webhooks for one
tenant. ``protocol_2=False`` makes it a relay from before protocol 2: it
selects no subprotocol whatever the bridge offers and speaks protocol 1
(one ``webhook`` frame each, acks by ``id``). ``protocol_2=True`` selects
``linerelay.v2`` when offered, as the real relay does, and then sends what
it holds as one ``webhooks`` batch.

Each connection is greeted and given every webhook not yet acked
(``attempt`` raised on a reconnect); :meth:`FakeRelay.flush` sends the open
connection what was queued since, and :meth:`FakeRelay.drop` closes it, so
the bridge reconnects and gets again what it did not ack. Everything a
bridge sends is recorded; acks take webhooks off the queue, nacks do not
(they come back at the next connection). Enough of PROTOCOL.md §2 to see
what a bridge says on the wire, which the real relay does not show.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from appliance.protocol import SUBPROTOCOL_V2, Ack, Hello, Webhook, Webhooks, decode, encode
from appliance.signature import sign

WINDOW = 64


@dataclass
class Session:
    """One bridge connection as the fake relay saw it."""

    offered: list[str]
    selected: str | None
    protocol: int
    ws: ServerConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)


class FakeRelay:
    """A one-tenant bridge endpoint speaking protocol 1 only, or protocols 1 and 2."""

    def __init__(self, tenant: str, token: str, *, protocol_2: bool) -> None:
        self.tenant = tenant
        self.token = token
        self.protocol_2 = protocol_2
        self.sessions: list[Session] = []
        self._queued: list[Webhook] = []
        # Every webhook ever queued, by id, as last sent.
        self._every: dict[str, Webhook] = {}
        self._lock = threading.Lock()
        self._server: Server | None = None

    def __enter__(self) -> FakeRelay:
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_token,
            # None: no Sec-WebSocket-Protocol in the answer, whatever was offered.
            subprotocols=[Subprotocol(SUBPROTOCOL_V2)] if self.protocol_2 else None,
            compression=None,
            max_size=None,
        )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.shutdown()

    @property
    def url(self) -> str:
        """The bridge URL (token as a Bearer header)."""
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/bridge"

    def queue(self, body: bytes, secret: str, *, replay: bool = False) -> str:
        """Hold ``body``, signed with ``secret``, for the next connection; returns its id.

        ``replay``: an operator's replay (``"replay": true``, PROTOCOL.md §7).
        """
        with self._lock:
            delivery = f"d-{len(self._every) + 1:012d}"
            hook = Webhook(
                delivery,
                self.tenant,
                body.decode("utf-8"),
                sign(secret.encode(), body),
                received_at=1763800000000 + len(self._every),
                attempt=0,
                replay=replay,
            )
            self._queued.append(hook)
            self._every[delivery] = hook
        return delivery

    def again(self, delivery: str) -> None:
        """Send webhook ``delivery`` once more on the open connection, acked or not
        (attempt raised), as a relay that lost the bridge's ack would."""
        with self._lock:
            hook = self._every[delivery]
            hook = self._every[delivery] = dataclasses.replace(hook, attempt=hook.attempt + 1)
            session = self.sessions[-1]
        self._send(session, [hook])

    def flush(self) -> None:
        """Send the open connection the webhooks queued since it was given any."""
        with self._lock:
            session = self.sessions[-1]
            fresh = [hook for hook in self._queued if hook.id not in session.sent]
        self._send(session, fresh)

    def drop(self) -> None:
        """Close the open connection, as a relay going away would."""
        self.sessions[-1].ws.close()

    def unacked(self) -> list[str]:
        """Ids of the webhooks no bridge has acked yet."""
        with self._lock:
            return [hook.id for hook in self._queued]

    def received(self) -> list[dict[str, Any]]:
        """Every frame bridges sent, in order, over all connections."""
        with self._lock:
            return [frame for session in self.sessions for frame in session.received]

    def _check_token(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return ws.respond(HTTPStatus.UNAUTHORIZED, "invalid token\n")
        return None

    def _handle(self, ws: ServerConnection) -> None:
        protocol = 2 if ws.subprotocol == SUBPROTOCOL_V2 else 1
        offered = ws.request.headers.get_all("Sec-WebSocket-Protocol") if ws.request else []
        session = Session(offered, ws.subprotocol, protocol, ws)
        with self._lock:
            self.sessions.append(session)
            # Every webhook not acked goes again, attempt raised: at least once.
            self._queued = [dataclasses.replace(h, attempt=h.attempt + 1) for h in self._queued]
            self._every.update((h.id, h) for h in self._queued)
            pending = list(self._queued)
        try:
            ws.send(encode(Hello(self.tenant, WINDOW, protocol), protocol))
            self._send(session, pending)
            for text in ws:
                with self._lock:
                    session.received.append(json.loads(text))
                    frame = decode(text)
                    if isinstance(frame, Ack):
                        self._queued = [h for h in self._queued if h.id not in frame.ids]
        except ConnectionClosed:
            return

    def _send(self, session: Session, hooks: list[Webhook]) -> None:
        """``hooks`` on ``session``: one batch in protocol 2, one frame each in protocol 1."""
        session.sent.update(hook.id for hook in hooks)
        if session.protocol == 2 and hooks:
            session.ws.send(encode(Webhooks(tuple(hooks)), 2))
        elif hooks:
            for hook in hooks:
                session.ws.send(encode(hook))
