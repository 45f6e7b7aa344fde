"""The NATS JetStream adapter: the streams, the origin's publisher, an edge's follower."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from townhall.cluster.config import ClusterConfig
from townhall.cluster.leases import (
    Lease,
    LeaseTable,
    Renewal,
    after_conflict,
    decode_lease,
    encode_lease,
)
from townhall.cluster.wire import (
    HEADS_STREAM,
    HEADS_SUBJECTS,
    PROGRAM_STREAM,
    PROGRAM_SUBJECTS,
    ProgramDecoder,
    ProgramEncoder,
    WireError,
    WireMessage,
)
from townhall.feed import FeedMessage

log = logging.getLogger(__name__)

LEASES_BUCKET = "townhall_stages"

# A retried publish waits this long first: long enough for a cluster to elect a new
# stream leader after losing a server.
_RETRY_DELAY_S = 0.25


async def connect(config: ClusterConfig, name: str) -> Client:
    """A connection that keeps reconnecting (to any server of the cluster) for good."""
    return await nats.connect(
        servers=config.servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
    )


async def ensure_streams(js: JetStreamContext, config: ClusterConfig) -> None:
    """Create (or bring to this configuration) the program and heads streams."""
    common = StreamConfig(
        storage=StorageType.FILE,
        num_replicas=config.stream_replicas,
        duplicate_window=min(120.0, config.program_retention_s),
    )
    wanted = [
        common.evolve(
            name=PROGRAM_STREAM, subjects=[PROGRAM_SUBJECTS], max_age=config.program_retention_s
        ),
        common.evolve(
            name=HEADS_STREAM,
            subjects=[HEADS_SUBJECTS],
            max_age=config.heads_retention_s,
            max_msgs_per_subject=1,
        ),
    ]
    for stream in wanted:
        try:
            await js.add_stream(stream)
        except BadRequestError:
            await js.update_stream(stream)  # it exists with older settings


class JetStreamPublisher:
    """A ``FeedSink`` that publishes the program to JetStream, in order, never blocking.

    ``publish`` (on the stage's clock) only encodes and queues; one task sends the queue
    in order and waits for each acknowledgement, retrying a message until the cluster
    takes it. The queue is bounded: while the cluster is unreachable the oldest messages
    are dropped and counted, and the origin's own listeners hear nothing of it.
    """

    def __init__(self, config: ClusterConfig, parts_per_segment: int) -> None:
        self.config = config
        self.encoder = ProgramEncoder(parts_per_segment)
        self.published = 0
        self.dropped = 0
        self.retries = 0
        # Spaces another node took over: their program is that node's to publish. At
        # most ``max_fenced_spaces``, the oldest forgotten (its stage here closed long ago).
        self.fenced: OrderedDict[str, None] = OrderedDict()
        self._queue: deque[WireMessage] = deque()
        self._ready = asyncio.Event()
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connection(self) -> Client:
        assert self._nc is not None, "start() first"
        return self._nc

    async def start(self) -> None:
        self._nc = await connect(self.config, "townhall-origin")
        js = self._nc.jetstream(timeout=self.config.publish_timeout_s)
        await ensure_streams(js, self.config)
        self._task = asyncio.get_running_loop().create_task(self._send(js), name="jetstream")

    def fence(self, space_id: str) -> None:
        """Publish nothing more of ``space_id``: another node holds it now (its lease)."""
        self.fenced[space_id] = None
        self.fenced.move_to_end(space_id)
        while len(self.fenced) > self.config.max_fenced_spaces:
            self.fenced.popitem(last=False)

    def unfence(self, space_id: str) -> None:
        """Publish ``space_id`` again: this node holds it again (it took it back over)."""
        self.fenced.pop(space_id, None)

    def publish(self, msg: FeedMessage) -> None:
        if msg.space_id in self.fenced:
            return
        for wire in self.encoder.encode(msg, time.time()):
            if len(self._queue) >= self.config.max_pending_messages:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(wire)
        self._ready.set()

    async def _send(self, js: JetStreamContext) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            wire = self._queue[0]
            try:
                await js.publish(wire.subject, wire.payload, headers=wire.headers or None)
            except (NatsError, TimeoutError) as exc:
                self.retries += 1
                if self.retries % 20 == 1:
                    log.warning("JetStream publish of %s failed (%s); retrying", wire.subject,
                                exc)  # fmt: skip
                await asyncio.sleep(_RETRY_DELAY_S)
                continue
            if self._queue and self._queue[0] is wire:
                self._queue.popleft()
            self.published += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._nc is not None:
            await self._nc.close()


class ProgramFollower:
    """An edge's subscription to the program: first the heads of every Space, then the
    program's history (what the stream keeps), then live, each handed to ``deliver`` as feed
    messages in order. ``caught_up`` is set once the history has been delivered."""

    def __init__(self, config: ClusterConfig, deliver: Callable[[FeedMessage], None]) -> None:
        self.config = config
        self.deliver = deliver
        self.decoder = ProgramDecoder()
        self.caught_up = asyncio.Event()
        self.received = 0
        self.rejected = 0
        self._nc: Client | None = None

    async def start(self) -> None:
        self._nc = await connect(self.config, "townhall-edge")
        js = self._nc.jetstream()
        await ensure_streams(js, self.config)
        heads_done = asyncio.Event()
        heads = await js.subscribe(
            HEADS_SUBJECTS,
            stream=HEADS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            cb=self._on_message(heads_done),
        )
        if (await js.stream_info(HEADS_STREAM)).state.messages == 0:
            heads_done.set()
        await self._wait(heads_done)
        # From here on the program stream carries every head too, in order with the parts.
        await heads.unsubscribe()
        # All of it: the stream keeps only ``program_retention_s``. (A start time would be
        # cheaper, but the client's ordered consumer cannot resume from one after a
        # server is lost: it keeps the time beside the sequence it resumes from.)
        await js.subscribe(
            PROGRAM_SUBJECTS,
            stream=PROGRAM_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            idle_heartbeat=self.config.edge_heartbeat_s,
            cb=self._on_message(self.caught_up),
        )
        if (await js.stream_info(PROGRAM_STREAM)).state.messages == 0:
            self.caught_up.set()
        await self._wait(self.caught_up)

    async def _wait(self, event: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(event.wait(), self.config.edge_bootstrap_timeout_s)
        except TimeoutError:
            log.warning("the cluster's history did not arrive in %.0f s; serving anyway",
                        self.config.edge_bootstrap_timeout_s)  # fmt: skip
            event.set()

    def _on_message(self, done: asyncio.Event) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            self.received += 1
            wire = WireMessage(msg.subject, msg.data, dict(msg.headers or {}))
            try:
                feed = self.decoder.decode(wire, time.monotonic(), time.time())
            except WireError as exc:
                self.rejected += 1
                log.warning("dropped a message on %s: %s", msg.subject, exc)
                feed = []
            for item in feed:
                self.deliver(item)
            if msg.metadata.num_pending == 0:
                done.set()

        return on_message

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


async def lease_bucket(nc: Client, config: ClusterConfig) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(LEASES_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=LEASES_BUCKET,
            ttl=config.lease_s,
            history=1,
            replicas=config.stream_replicas,
            storage=StorageType.MEMORY,
        )


class LeaseKeeper:
    """Renews this node's lease on each Space whose stage it runs; drops the ones it
    closed. ``holding`` says which Spaces those are (the hub's open stages).

    Every write is conditional on the revision this node last wrote, so a node whose
    renewals stalled cannot overwrite the lease of a node that took its Space over: it
    finds the other node's lease instead, stops renewing, and calls ``lost``."""

    def __init__(
        self, nc: Client, config: ClusterConfig, node: str, control_url: str,
        holding: Callable[[], Iterable[str]],
        lost: Callable[[str, Lease], None] = lambda _space, _holder: None,
    ) -> None:  # fmt: skip
        self.nc, self.config, self.node, self.control_url = nc, config, node, control_url
        self.holding = holding
        self.lost = lost
        self._held: set[str] = set()
        self._revisions: dict[str, int] = {}
        self._lost: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        kv = await lease_bucket(self.nc, self.config)
        self._task = asyncio.get_running_loop().create_task(self._renew(kv), name="leases")

    async def _renew(self, kv: KeyValue) -> None:
        while True:
            now = set(self.holding())
            for space_id in now - self._lost:
                try:
                    await self._renew_one(kv, space_id)
                except (NatsError, TimeoutError):
                    pass  # the cluster unreachable: renewed at the next turn
                except Exception:  # one Space's fault must not let every lease lapse
                    log.exception("space %s: its lease was not renewed", space_id)
            for space_id in self._held - now:
                revision = self._revisions.pop(space_id, None)
                if space_id in self._lost or revision is None:
                    continue
                try:
                    await kv.delete(_lease_key(space_id), last=revision)
                except (NatsError, TimeoutError):
                    pass  # it lapses by itself
                except Exception:
                    log.exception("space %s: its lease was not deleted", space_id)
            self._lost &= now
            self._held = now
            await asyncio.sleep(self.config.lease_s / 3)

    async def _renew_one(self, kv: KeyValue, space_id: str) -> None:
        key = _lease_key(space_id)
        value = encode_lease(Lease(space_id, self.node, self.control_url, time.time()))
        revision = self._revisions.get(space_id)
        try:
            if revision is None:
                self._revisions[space_id] = await kv.create(key, value)
            else:
                self._revisions[space_id] = await kv.update(key, value, last=revision)
            return
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
            current = decode_lease(entry.value) if entry.value else None
        except (NotFoundError, WireError):
            current, entry = None, None
        match after_conflict(current, self.node):
            case Renewal.CREATE:
                self._revisions.pop(space_id, None)
            case Renewal.OURS:
                assert entry is not None and entry.revision is not None
                self._revisions[space_id] = entry.revision
            case Renewal.LOST:
                assert current is not None
                self._lost.add(space_id)
                self._revisions.pop(space_id, None)
                log.error("space %s: node %s holds its lease now; this node stops "
                          "renewing it", space_id, current.node)  # fmt: skip
                self.lost(space_id, current)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class LeaseFollower:
    """A control node's view of every lease in the cluster, kept in ``table``."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.table = LeaseTable(config.lease_s, config.max_leases)
        # Set once every lease the cluster had at the start is in the table.
        self.loaded = asyncio.Event()
        # Called with a Space whose lease its holder deleted (its stage closed there).
        self.deleted: Callable[[str], None] = lambda _space: None
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connection(self) -> Client:
        assert self._nc is not None, "start() first"
        return self._nc

    async def start(self) -> None:
        """Follow the leases; return once the cluster's current ones are in the table
        (or after ``edge_bootstrap_timeout_s``, with what arrived)."""
        self._nc = await connect(self.config, "townhall-control")
        kv = await lease_bucket(self._nc, self.config)
        watcher = await kv.watchall()
        self._task = asyncio.get_running_loop().create_task(self._follow(watcher), name="leases")
        try:
            await asyncio.wait_for(self.loaded.wait(), self.config.edge_bootstrap_timeout_s)
        except TimeoutError:
            log.warning("the cluster's leases did not arrive in %.0f s; going on",
                        self.config.edge_bootstrap_timeout_s)  # fmt: skip

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                self.loaded.set()  # the end of the initial values
                continue
            space_id = entry.key.removeprefix("space.")
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.table.drop(space_id)
                try:
                    self.deleted(space_id)
                except Exception:  # one Space's fault must not end the following
                    log.exception("space %s: its deleted lease was not handled", space_id)
                continue
            with contextlib.suppress(WireError):
                self.table.put(decode_lease(entry.value))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._nc is not None:
            await self._nc.close()


def _lease_key(space_id: str) -> str:
    return f"space.{space_id}"
