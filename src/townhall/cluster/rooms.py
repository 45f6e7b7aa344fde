"""The NATS adapters of a takeover: each room's copy in the cluster, the loop that takes
over the Spaces of a node that is gone, and where the program's numbering stands.

The decisions are ``takeover.py``'s; here are only the key-value bucket, the stream
lookups and the timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from townhall.cluster.config import ClusterConfig
from townhall.cluster.jetstream import lease_bucket
from townhall.cluster.leases import Lease, LeaseTable, default_node_url, encode_lease
from townhall.cluster.takeover import (
    CopyConflict,
    ResumeDecision,
    SpaceCopy,
    Verdict,
    after_copy_conflict,
    copy_verdict,
    decode_copy,
    encode_copy,
    lease_verdict,
    resume_verdict,
)
from townhall.cluster.wire import PART, PROGRAM_STREAM, WireError, program_subject
from townhall.config import ServerConfig

log = logging.getLogger(__name__)

ROOMS_BUCKET = "townhall_rooms"
# A copy that failed to reach the cluster is tried again after this.
_RETRY_DELAY_S = 0.25


def node_identity(config: ServerConfig) -> tuple[str, str]:
    """This node's name in the leases and the URL other nodes reach its control plane at."""
    url = config.cluster.node_url or default_node_url(config.host, config.control_port)
    return config.cluster.node_name or url, url


def _key(space_id: str) -> str:
    return f"space.{space_id}"


async def rooms_bucket(nc: Client, config: ClusterConfig) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(ROOMS_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=ROOMS_BUCKET,
            history=1,
            ttl=config.heads_retention_s,
            replicas=config.stream_replicas,
            storage=StorageType.FILE,
            max_value_size=config.max_room_copy_bytes,
        )


async def last_part_seq(js: JetStreamContext, space_id: str) -> int | None:
    """The number of the last part the program stream has of ``space_id`` (None: none)."""
    try:
        msg = await js.get_last_msg(PROGRAM_STREAM, program_subject(space_id, PART))
    except NotFoundError:
        return None
    try:
        return int((msg.headers or {})["Townhall-Seq"])
    except (KeyError, ValueError):
        return None


async def read_copy(rooms: KeyValue, space_id: str) -> SpaceCopy | None:
    """The cluster's copy of ``space_id`` (None: none, or unreadable)."""
    try:
        entry = await rooms.get(_key(space_id))
    except NotFoundError:  # the key-value errors for a missing key derive from it
        return None
    if not entry.value:
        return None
    try:
        return decode_copy(entry.value)
    except WireError as exc:
        log.error("space %s: its room copy is unreadable: %s", space_id, exc)
        return None


async def read_space_copy(nc: Client, config: ClusterConfig, space_id: str) -> SpaceCopy | None:
    """The cluster's copy of ``space_id`` (None: none, or unreadable)."""
    return await read_copy(await rooms_bucket(nc, config), space_id)


async def resume_decisions(
    nc: Client, config: ServerConfig, table: LeaseTable, space_ids: list[str]
) -> list[tuple[str, ResumeDecision, SpaceCopy | None]]:
    """For each Space this node's journal says is live, whether it may resume it (see
    ``takeover.resume_verdict``), with the cluster's copy of it. ``table`` holds the
    cluster's leases already."""
    rooms = await rooms_bucket(nc, config.cluster)
    node, _ = node_identity(config)
    now, out = time.time(), []
    for space_id in space_ids:
        copy = await read_copy(rooms, space_id)
        holder, lapsed = table.holder(space_id, now), table.lapsed(space_id, now)
        out.append((space_id, resume_verdict(space_id, holder, lapsed, copy, node), copy))
    return out


async def claim_lease(nc: Client, config: ServerConfig, table: LeaseTable, space_id: str) -> bool:
    """Create this node's lease on ``space_id`` if none exists (atomic: one node wins)."""
    node, node_url = node_identity(config)
    mine = Lease(space_id, node, node_url, time.time())
    leases = await lease_bucket(nc, config.cluster)
    try:
        await leases.create(_key(space_id), encode_lease(mine))
    except KeyWrongLastSequenceError:
        return False
    table.put(mine)
    return True


class RoomCopier:
    """Writes each Space's copy to the cluster, the newest only, never blocking the
    caller: ``copy`` keeps it (at most ``max_pending_copy_spaces`` Spaces waiting, the
    oldest dropped and counted), one task writes them, retrying until the cluster takes
    each; a copy that failed waits behind the other Spaces' copies.

    Every write is conditional on the revision this node last wrote or saw, so a node
    whose writes stalled while another node took its Space over cannot overwrite the new
    holder's copy with its older room: ``holds`` says whether this node holds a Space's
    lease now (see ``takeover.after_copy_conflict``)."""

    def __init__(self, config: ClusterConfig, node: str = "",
                 holds: Callable[[str], bool] = lambda _space: True) -> None:  # fmt: skip
        self.config = config
        self.node = node
        self.holds = holds
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._pending: OrderedDict[str, SpaceCopy] = OrderedDict()
        # The revision of each Space's copy this node last wrote or saw (one per pending
        # or written Space, forgotten with the Space: see ``forget``).
        self._revisions: OrderedDict[str, int] = OrderedDict()
        self._max_bytes = config.max_room_copy_bytes
        self._ready = asyncio.Event()
        self._progress = asyncio.Event()  # set each time a pending copy is done with
        self._task: asyncio.Task[None] | None = None

    def start(self, kv: KeyValue, max_payload_bytes: int | None = None) -> None:
        if max_payload_bytes is not None:
            # A copy the servers refuse (over their max_payload) would be retried forever.
            self._max_bytes = min(self.config.max_room_copy_bytes, max_payload_bytes)
        self._task = asyncio.get_running_loop().create_task(self._write(kv), name="room-copies")

    def copy(self, copy: SpaceCopy) -> None:
        self._pending.pop(copy.space.id, None)
        self._pending[copy.space.id] = copy
        while len(self._pending) > self.config.max_pending_copy_spaces:
            space_id, _ = self._pending.popitem(last=False)
            self._revisions.pop(space_id, None)
            self.dropped += 1
        self._ready.set()

    def forget(self, space_id: str) -> None:
        """Write nothing more of ``space_id``: another node holds it now, or it ended."""
        self._pending.pop(space_id, None)
        self._revisions.pop(space_id, None)
        self._progress.set()

    async def _write(self, kv: KeyValue) -> None:
        while True:
            if not self._pending:
                self._ready.clear()
                await self._ready.wait()
                continue
            space_id, copy = next(iter(self._pending.items()))
            data = encode_copy(copy)
            if len(data) > self._max_bytes:
                log.error("space %s: its room copy (%d bytes) is over %d bytes "
                          "(max_room_copy_bytes, or the servers' max_payload); the cluster "
                          "keeps its last copy that fitted", space_id, len(data),
                          self._max_bytes)  # fmt: skip
                self._done(space_id, copy)
                continue
            try:
                written = await self._put(kv, space_id, data)
            except (NatsError, TimeoutError) as exc:
                self.failures += 1
                if self.failures % 20 == 1:
                    log.warning("space %s: room copy not written (%s); retrying", space_id, exc)
                if self._pending.get(space_id) is copy:
                    self._pending.move_to_end(space_id)  # the other Spaces' copies first
                await asyncio.sleep(_RETRY_DELAY_S)
                continue
            if written:
                self.written += 1
                self._done(space_id, copy)

    async def _put(self, kv: KeyValue, space_id: str, data: bytes) -> bool:
        """Write one copy, conditionally; False: the cluster's copy changed under this
        node, and the copy is to be tried again (or was dropped)."""
        key, revision = _key(space_id), self._revisions.get(space_id)
        try:
            if revision is None:
                self._remember(space_id, await kv.create(key, data))
            else:
                self._remember(space_id, await kv.update(key, data, last=revision))
            return True
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
            current = decode_copy(entry.value).node if entry.value else None
        except NotFoundError:
            entry, current = None, None
        except WireError:
            current = self.node  # unreadable: this node's copy replaces it
        match after_copy_conflict(current, self.node, self.holds(space_id)):
            case CopyConflict.CREATE:
                self._revisions.pop(space_id, None)
            case CopyConflict.OVERWRITE:
                assert entry is not None and entry.revision is not None
                self._remember(space_id, entry.revision)
            case CopyConflict.DROP:
                log.error("space %s: node %s holds it and wrote its copy; this node's older "
                          "room is not copied", space_id, current)  # fmt: skip
                self.forget(space_id)
        return False

    def _remember(self, space_id: str, revision: int) -> None:
        self._revisions.pop(space_id, None)
        self._revisions[space_id] = revision
        while len(self._revisions) > self.config.max_leases:
            self._revisions.popitem(last=False)

    def _done(self, space_id: str, copy: SpaceCopy) -> None:
        if self._pending.get(space_id) is copy:  # not replaced by a newer one meanwhile
            del self._pending[space_id]
        self._progress.set()

    async def settled(self, space_id: str, timeout_s: float) -> bool:
        """Wait until the newest copy of ``space_id`` given to ``copy`` is in the cluster
        (True), or ``timeout_s`` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while space_id in self._pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class TakeoverWatch:
    """Looks for lapsed leases every ``takeover_check_s`` and takes their Spaces over:
    the lease is created in the cluster (one node wins), then ``adopt`` makes the Space
    this node's (True) or gives the lease back (False)."""

    def __init__(
        self,
        config: ServerConfig,
        table: LeaseTable,
        knows: Callable[[str], bool],
        adopt: Callable[[SpaceCopy], bool],
    ) -> None:
        self.config = config.cluster
        self.node, self.node_url = node_identity(config)
        self.table = table
        self.knows = knows
        self.adopt = adopt
        # Lapsed leases already looked at and left, so each is read from the cluster once.
        self._settled: OrderedDict[tuple[str, float], None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def start(self, leases: KeyValue, rooms: KeyValue) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch(leases, rooms), name="takeover")

    async def _watch(self, leases: KeyValue, rooms: KeyValue) -> None:
        while True:
            await asyncio.sleep(self.config.takeover_check_s)
            for lease in self.table.lapsed_leases(time.time()):
                if (lease.space_id, lease.at_unix_s) in self._settled:
                    continue
                try:
                    await self._consider(lease, leases, rooms)
                except (NatsError, TimeoutError) as exc:
                    log.warning("space %s: takeover check failed (%s)", lease.space_id, exc)
                except Exception:  # one Space's fault must not end every takeover
                    log.exception("space %s: takeover check failed", lease.space_id)
                    self._settle(lease)

    async def _consider(self, lease: Lease, leases: KeyValue, rooms: KeyValue) -> None:
        space_id, now = lease.space_id, time.time()
        by_lease = lease_verdict(
            space_id,
            self.table.holder(space_id, now),
            self.table.lapsed(space_id, now),
            self.node,
            self.knows(space_id),
            now,
            self.config.lease_s,
            self.config.takeover_grace_s,
        )
        if by_lease.verdict is Verdict.WAIT:
            return
        if by_lease.verdict is Verdict.LEAVE:
            self._settle(lease)
            return
        copy = await self._copy(rooms, space_id)
        by_copy = copy_verdict(space_id, copy)
        if by_copy.verdict is not Verdict.TAKE or copy is None:
            log.info("space %s: not taken over: %s", space_id, by_copy.why)
            self._settle(lease)
            return
        mine = Lease(space_id, self.node, self.node_url, time.time())
        try:
            # Atomic: only while no lease exists (the lapsed one aged out of the bucket),
            # so of two nodes trying at once one wins.
            await leases.create(_key(space_id), encode_lease(mine))
        except KeyWrongLastSequenceError:
            # Another node took it, or the lapsed lease has not aged out yet: the next
            # look tells which (a new holder's lease arrives in the table).
            log.info("space %s: its lease is still in the cluster", space_id)
            return
        log.warning("space %s: taking it over: %s", space_id, by_lease.why)
        self.table.put(mine)
        if not self.adopt(copy):
            with contextlib.suppress(NatsError, TimeoutError):
                await leases.delete(_key(space_id))
            self._settle(lease)

    async def _copy(self, rooms: KeyValue, space_id: str) -> SpaceCopy | None:
        return await read_copy(rooms, space_id)

    def _settle(self, lease: Lease) -> None:
        self._settled[(lease.space_id, lease.at_unix_s)] = None
        while len(self._settled) > self.config.max_leases:
            self._settled.popitem(last=False)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def start_takeover(
    nc: Client, config: ServerConfig, table: LeaseTable, knows: Callable[[str], bool],
    adopt: Callable[[SpaceCopy], bool],
) -> tuple[RoomCopier, TakeoverWatch | None]:  # fmt: skip
    """The copier of this node's rooms, and (if it takes over Spaces) the watch."""
    rooms = await rooms_bucket(nc, config.cluster)
    node, _ = node_identity(config)

    def holds(space_id: str) -> bool:
        holder = table.holder(space_id, time.time())
        return holder is not None and holder.node == node

    copier = RoomCopier(config.cluster, node, holds)
    copier.start(rooms, nc.max_payload)
    if not config.cluster.take_over_spaces:
        return copier, None
    if not config.cluster.token_secret:
        # The links and tokens of a Space made on another node would not verify here.
        log.warning("this node takes over no Space: cluster.token_secret is not set "
                    "(every origin node must share it)")  # fmt: skip
        return copier, None
    watch = TakeoverWatch(config, table, knows, adopt)
    watch.start(await lease_bucket(nc, config.cluster), rooms)
    return copier, watch
