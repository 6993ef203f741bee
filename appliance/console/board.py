"""The bridges every relay process serves, for a console any of them answers.

On the Redis store one relay may be several processes (``linerelay serve
--workers N``, several nodes; PROTOCOL.md §6). A tenant's bridge is served by
the one process holding its lease, while a console's poll is answered by
whichever process accepts it: drawn from that process's hub alone, the page
would show the bridge on some polls and "no bridge" on others. So while a
console is open, each process posts the facts of the bridges it serves to the
board, and the process drawing a page reads every post.

The board costs nothing while nobody looks: a reader marks it *watched* for
:data:`WATCH_SECONDS`, and a process posts (one Redis write a housekeeping
round) only while it is watched. The first read after a quiet spell waits one
round for the posts to come in, so a console's first page is complete too.

:class:`LocalBoard` is the board of one process (the SQLite store): there is
nobody to tell. :class:`RedisBoard` keeps the posts in Redis, each with a
lifetime of a few rounds, so a process that dies drops off the board by
itself. :func:`encode` and :func:`decode` are the posts' wire form.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.config import RelayConfig

#: A console's read keeps the board watched this long (a console polls every 2 s).
WATCH_SECONDS = 10.0
#: A post outlives this many housekeeping rounds, then its process is taken for gone.
POST_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class BridgeFacts:
    """What the process serving a tenant's active bridge knows of it, at ``taken_at``."""

    #: The process serving it, as the console names it (:func:`process_name`).
    served_by: str
    taken_at: float  # Unix seconds
    connected_at: float  # Unix seconds
    protocol: int
    peer: str
    in_flight: int
    window: int
    last_ack_at: float | None  # Unix seconds; None before the first ack
    acks: int
    redeliveries: int
    #: Older connections of the tenant standing by on the same process.
    standby: int


class BoardError(Exception):
    """The board could not be read or written (Redis unreachable, a malformed post); the
    console then shows this process's bridges alone and says so."""


_FIELDS = frozenset(f.name for f in fields(BridgeFacts))


def encode(bridges: Mapping[str, BridgeFacts]) -> str:
    """One process's post: its bridges by tenant, as JSON."""
    return json.dumps({tenant: asdict(facts) for tenant, facts in bridges.items()})


def decode(text: str | bytes) -> dict[str, BridgeFacts]:
    """A post back as facts by tenant; raises :class:`BoardError` if it is not one."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        return {str(tenant): _facts(entry) for tenant, entry in data.items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise BoardError(f"a malformed bridge post: {exc}") from exc


def _facts(entry: Any) -> BridgeFacts:
    if not isinstance(entry, dict) or entry.keys() != _FIELDS:
        raise TypeError("not the fields of a bridge")
    for name in ("served_by", "peer"):
        if not isinstance(entry[name], str):
            raise TypeError(f"{name} is not a string")
    for name in ("protocol", "in_flight", "window", "acks", "redeliveries", "standby"):
        if not isinstance(entry[name], int) or isinstance(entry[name], bool):
            raise TypeError(f"{name} is not an integer")
    for name in ("taken_at", "connected_at", "last_ack_at"):
        value = entry[name]
        if value is None and name == "last_ack_at":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{name} is not a time")
    return BridgeFacts(**entry)


def merged(posts: list[dict[str, BridgeFacts]]) -> dict[str, BridgeFacts]:
    """Every post's bridges; where two processes post one tenant (a take-over within
    a post's lifetime), the newer connection, which is the active one (PROTOCOL.md §2)."""
    bridges: dict[str, BridgeFacts] = {}
    for post in posts:
        for tenant, facts in post.items():
            known = bridges.get(tenant)
            if known is None or facts.connected_at > known.connected_at:
                bridges[tenant] = facts
    return bridges


def process_name(worker: int | None) -> str:
    """How the console names this process: its host, worker number and pid."""
    host = socket.gethostname()
    seat = f" worker {worker}" if worker is not None else ""
    return f"{host}{seat} (pid {os.getpid()})"


class Board(abc.ABC):
    """Where relay processes post the bridges they serve, and consoles read them."""

    #: Whether other processes may post here (the console then names who serves a bridge).
    shared: bool = False

    def __init__(self, name: str) -> None:
        #: This process's name on the board (:func:`process_name`).
        self.name = name

    @abc.abstractmethod
    async def watched(self) -> bool:
        """Whether a console read the board lately (only then is posting worth it)."""

    @abc.abstractmethod
    async def post(self, bridges: Mapping[str, BridgeFacts]) -> None:
        """Post this process's bridges, replacing its last post."""

    @abc.abstractmethod
    async def read(self) -> dict[str, BridgeFacts]:
        """The bridges in every other process's live post, by tenant (:func:`merged`);
        marks the board watched."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of what the board holds open."""


class LocalBoard(Board):
    """One process's board: nobody else posts, so there is nothing to read."""

    async def watched(self) -> bool:
        """Never: the console reads this process's own hub."""
        return False

    async def post(self, bridges: Mapping[str, BridgeFacts]) -> None:
        """Nothing to tell."""

    async def read(self) -> dict[str, BridgeFacts]:
        """No other process's bridges."""
        return {}

    async def close(self) -> None:
        """Nothing is held open."""


class RedisBoard(Board):
    """The board in Redis, shared by every process on the same Redis (and key prefix).

    Keys: ``console:watched`` (set by readers, with a lifetime of
    :data:`WATCH_SECONDS`); ``console:posts``, a sorted set of process names
    scored by when their post ends; ``console:post:NAME``, a process's post,
    which ends by itself as well.
    """

    shared = True

    def __init__(self, url: str, name: str, round_seconds: float, prefix: str) -> None:
        # Imported here: SQLite users never load redis-py.
        from redis.asyncio import Redis  # noqa: PLC0415
        from redis.exceptions import RedisError  # noqa: PLC0415

        super().__init__(name)
        self._errors = (RedisError, OSError)
        self.round_seconds = round_seconds
        self._redis: Redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(("console", *parts))

    @property
    def lifetime(self) -> float:
        """Seconds a post lives unrenewed."""
        return POST_ROUNDS * self.round_seconds

    @property
    def first_round(self) -> float:
        """Seconds from the start of watching until every process has posted."""
        return 1.5 * self.round_seconds

    async def watched(self) -> bool:
        """Whether a console read the board in the last :data:`WATCH_SECONDS`."""
        try:
            return bool(await self._redis.exists(self._key("watched")))
        except self._errors as exc:
            raise BoardError(f"Redis: {exc}") from exc

    async def post(self, bridges: Mapping[str, BridgeFacts]) -> None:
        """Replace this process's post; it ends by itself after :attr:`lifetime`."""
        ends = int((time.time() + self.lifetime) * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(
                    self._key("post", self.name), encode(bridges), px=int(self.lifetime * 1000)
                )
                pipe.zadd(self._key("posts"), {self.name: ends})
                await pipe.execute()
        except self._errors as exc:
            raise BoardError(f"Redis: {exc}") from exc

    async def read(self) -> dict[str, BridgeFacts]:
        """Every other process's live post; after a quiet spell, waits a round for the
        processes to post."""
        watched, keep = self._key("watched"), int(WATCH_SECONDS * 1000)
        try:
            # The key holds when the watching began: the first reader sets it, the
            # others (any process) only keep it alive.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(watched, str(time.time()), px=keep, nx=True)
                pipe.get(watched)
                pipe.pexpire(watched, keep)
                _, since, _ = await pipe.execute()
            # Nobody posted while nobody looked: every process gets a round to post.
            wait = float(since or 0) + self.first_round - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now = int(time.time() * 1000)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(self._key("posts"), "-inf", now)
                pipe.zrange(self._key("posts"), 0, -1)
                _, names = await pipe.execute()
            # This process's own bridges are read from its hub, as they are now.
            others = [n.decode() for n in names if n.decode() != self.name]
            if not others:
                return {}
            texts = await self._redis.mget([self._key("post", n) for n in others])
        except self._errors as exc:
            raise BoardError(f"Redis: {exc}") from exc
        return merged([decode(text) for text in texts if text is not None])

    async def close(self) -> None:
        """Close the Redis connections."""
        await self._redis.aclose()


def create_board(config: RelayConfig, worker: int | None) -> Board:
    """The board for the config's store: Redis's shared one, or this process's own;
    ``worker`` is this process's number under ``--workers``."""
    name = process_name(worker)
    if config.store == "redis":
        from appliance.store.redis import PREFIX  # noqa: PLC0415 (redis-py only if used)

        return RedisBoard(config.redis_url, name, config.tenant_poll_interval, PREFIX)
    return LocalBoard(process_name(worker))
