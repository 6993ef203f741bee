"""A bridge's side of the protocol (PROTOCOL.md §2), without I/O.

A bridge offers protocol 2 on the upgrade (:data:`OFFER`, the ``linerelay.v2``
subprotocol); :func:`negotiated` reads the relay's choice: protocol 2 when it
selected ``linerelay.v2``, protocol 1 when it selected nothing (a relay from
before protocol 2). :func:`delivered` gives the webhooks a frame hands over,
whichever protocol carried them, and :func:`replies` the frames that answer
them: in protocol 2 one ``ack`` naming every webhook taken, in protocol 1 an
``ack`` per webhook exactly as before.

The simulated bridges of the load test and the benchmarks use this module
too, so they speak what ``linerelay bridge`` speaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from websockets.typing import Subprotocol

from appliance.protocol import SUBPROTOCOL_V2, Ack, Frame, Nack, Webhook, Webhooks, encode

#: The subprotocols a bridge offers on the upgrade; offering none asks for protocol 1.
OFFER = (Subprotocol(SUBPROTOCOL_V2),)

#: Most ids one protocol 2 ack names: the relay's default window, about 8 KiB of the
#: relay's 16 KiB frame limit. A relay configured with a larger window gets a batch's
#: acks in several frames rather than one it would refuse (and then redeliver, forever).
MAX_ACK_IDS = 256


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """Whether a webhook is safely queued (ack) or not (nack with ``reason``)."""

    ok: bool
    reason: str = ""


def offer(protocol: int) -> list[Subprotocol] | None:
    """The subprotocols to offer for ``protocol``: none for 1, :data:`OFFER` for 2."""
    if protocol not in (1, 2):
        raise ValueError(f"no such protocol: {protocol}")
    return list(OFFER) if protocol == 2 else None


def negotiated(subprotocol: str | None) -> int:
    """The protocol a connection speaks, from the subprotocol the relay selected."""
    return 2 if subprotocol == SUBPROTOCOL_V2 else 1


def delivered(frame: Frame) -> tuple[Webhook, ...]:
    """The webhooks ``frame`` hands over: one ``webhook``, a batch's items, or none."""
    if isinstance(frame, Webhook):
        return (frame,)
    if isinstance(frame, Webhooks):
        return frame.items
    return ()


def acks(ids: Sequence[str], protocol: int) -> list[str]:
    """The ack frames for ``ids``: in protocol 2 one naming them all (up to
    :data:`MAX_ACK_IDS` a frame), in protocol 1 one each."""
    if protocol >= 2:
        return [
            encode(Ack(tuple(ids[start : start + MAX_ACK_IDS])), protocol)
            for start in range(0, len(ids), MAX_ACK_IDS)
        ]
    return [encode(Ack((delivery_id,))) for delivery_id in ids]


def replies(
    webhooks: Sequence[Webhook], results: Sequence[IntakeResult], protocol: int
) -> tuple[list[str], list[str]]:
    """The ack frames and the nack frames answering ``webhooks``, given what intake
    made of each (same order).

    The acks are :func:`acks` of every webhook taken (protocol 2: one frame); each
    webhook not taken gets its own ``nack``. The acks go out first, so the relay's
    window reopens at once.
    """
    if len(webhooks) != len(results):
        raise ValueError(f"{len(results)} results for {len(webhooks)} webhooks")
    pairs = list(zip(webhooks, results, strict=True))
    taken = [hook.id for hook, result in pairs if result.ok]
    refused = [
        encode(Nack(hook.id, result.reason), protocol) for hook, result in pairs if not result.ok
    ]
    return acks(taken, protocol), refused
