"""Hostile clients for the siege benchmark, each bounded in count and time.

An attack runs in its own process (``python -m benchmarks.harness.attacks '<json>'``),
so its sockets count against its own file-descriptor limit and its event loop never
competes with the measuring process's threads; the benchmark stops it by pid. It prints
one JSON line when its time is up: what it managed (connections opened, still open at
the end, responses by status).

Every attacker targets 127.0.0.1 only and binds its own 127.x.y.z source addresses
(``source_address``): a "range of addresses" is what a botnet looks like to per-address
limits, one address is what a single laptop looks like.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 5.0
CONNECT_CONCURRENCY = 256
# Source-address blocks (the second octet): attackers and legitimate clients never
# share an address, so per-address limits can tell them apart.
BLOCKS = {
    "idle-spread": 11,
    "slowloris": 12,
    "big-headers": 13,
    "get-flood": 14,
    "replay-flood": 15,
    "junk-ws": 16,
    "offer-flood": 17,
    "forged-sids": 18,
    "reactions": 19,
    "hands": 20,
}
ONE_ADDRESS = "127.9.9.9"


def source_address(block: int, i: int) -> str:
    """The ``i``-th loopback address of ``block``: 127.block.y.z, z never 0 or 255."""
    return f"127.{block}.{(i // 254) % 256}.{i % 254 + 1}"


@dataclass(frozen=True)
class AttackOrder:
    """What one attacker process does: ``attack`` for ``seconds`` against the ports."""

    attack: str
    seconds: float
    control_port: int
    audience_port: int
    space_id: str
    hls_path: str = ""
    token: str = ""
    count: int = 0
    one_address: bool = False
    shard: int = 0  # several processes split one attack: their addresses differ


@dataclass
class Outcome:
    attack: str
    opened: int = 0
    failed: int = 0
    open_at_end: int = 0
    requests: int = 0
    bytes_sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["statuses"], out["errors"] = dict(self.statuses), dict(self.errors.most_common(5))
        return out


def _err(out: Outcome, exc: BaseException) -> None:
    out.errors[type(exc).__name__] += 1


# -- raw TCP --------------------------------------------------------------------------


async def _connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(HOST, port, local_addr=(source, 0)), CONNECT_TIMEOUT_S
    )


async def _open_many(
    out: Outcome, port: int, sources: Callable[[int], str], n: int, deadline: float
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> None:
        if time.monotonic() > deadline:
            return
        async with gate:
            try:
                held.append(await _connect(port, sources(i)))
                out.opened += 1
            except (OSError, TimeoutError) as exc:
                out.failed += 1
                _err(out, exc)

    await asyncio.gather(*(one(i) for i in range(n)))
    return held


def _still_open(held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    return sum(1 for r, w in held if not r.at_eof() and not w.is_closing())


async def _drain_reads(reader: asyncio.StreamReader) -> None:
    """Read and drop whatever the server says (a 431, a close) so EOF is noticed."""
    with contextlib.suppress(OSError):
        while await reader.read(65_536):
            pass


async def idle(o: AttackOrder, deadline: float) -> Outcome:
    """TCP connections to the control port that never send a byte."""
    out = Outcome(o.attack)
    block = BLOCKS["idle-spread"]

    def src(i: int) -> str:
        return ONE_ADDRESS if o.one_address else source_address(block, o.shard * o.count + i)

    held = await _open_many(out, o.control_port, src, o.count, deadline)
    readers = [asyncio.create_task(_drain_reads(r)) for r, _ in held]
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    out.open_at_end = _still_open(held)
    for t in readers:
        t.cancel()
    for _, w in held:
        w.transport.abort()
    return out


async def slowloris(o: AttackOrder, deadline: float) -> Outcome:
    """Request heads that never end: one header line every 2 s, half on each port."""
    out = Outcome(o.attack)
    block = BLOCKS["slowloris"]
    half = o.count // 2
    held = await _open_many(out, o.control_port, lambda i: source_address(block, i), half, deadline)
    held += await _open_many(
        out, o.audience_port, lambda i: source_address(block, half + i), o.count - half, deadline
    )
    readers = [asyncio.create_task(_drain_reads(r)) for r, _ in held]
    for _, w in held:
        w.write(f"GET /api/spaces/{o.space_id} HTTP/1.1\r\nHost: {HOST}\r\n".encode())
    n = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        for _, w in held:
            if not w.is_closing():
                with contextlib.suppress(OSError):
                    w.write(f"X-Slow-{n}: {n}\r\n".encode())
                    out.bytes_sent += 16
        n += 1
    out.open_at_end = _still_open(held)
    for t in readers:
        t.cancel()
    for _, w in held:
        w.transport.abort()
    return out


BIG_HEADER_BYTES = 20 * 1024 * 1024
CHUNK_BYTES = 65_536


async def big_headers(o: AttackOrder, deadline: float) -> Outcome:
    """``count`` connections each sending a 20 MB request head that never ends."""
    out = Outcome(o.attack)
    block = BLOCKS["big-headers"]
    held = await _open_many(
        out, o.control_port, lambda i: source_address(block, i), o.count, deadline
    )
    chunk = b"a" * CHUNK_BYTES

    async def push(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        reading = asyncio.create_task(_drain_reads(reader))
        w.write(f"GET /api/spaces/{o.space_id} HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ".encode())
        sent = 0
        try:
            while sent < BIG_HEADER_BYTES and time.monotonic() < deadline and not reader.at_eof():
                w.write(chunk)
                await asyncio.wait_for(w.drain(), max(0.1, deadline - time.monotonic()))
                sent += len(chunk)
        except (OSError, TimeoutError) as exc:
            _err(out, exc)
        out.bytes_sent += sent
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        reading.cancel()

    await asyncio.gather(*(push(r, w) for r, w in held))
    out.open_at_end = _still_open(held)
    for _, w in held:
        w.transport.abort()
    return out


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _keep_alive_loop(
    out: Outcome, port: int, source: str, target: Callable[[], str], deadline: float
) -> None:
    """GET ``target()`` over and over on one keep-alive connection (reconnecting)."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await _connect(port, source)
            out.opened += 1
        except (OSError, TimeoutError) as exc:
            out.failed += 1
            _err(out, exc)
            await asyncio.sleep(0.2)
            continue
        try:
            while time.monotonic() < deadline:
                writer.write(f"GET {target()} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                status, _ = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_S)
                out.requests += 1
                out.statuses[str(status)] += 1
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            _err(out, exc)
        finally:
            writer.transport.abort()


async def _keep_alive_flood(
    o: AttackOrder, port: int, target: Callable[[], str], deadline: float
) -> Outcome:
    """``count`` keep-alive connections, each from its own address, asking for ``target()``
    again and again until the deadline."""
    out = Outcome(o.attack)
    block = BLOCKS[o.attack]
    await asyncio.gather(
        *(
            _keep_alive_loop(out, port, source_address(block, i), target, deadline)
            for i in range(o.count)
        )
    )
    return out


async def get_flood(o: AttackOrder, deadline: float) -> Outcome:
    """``count`` keep-alive connections hammering the control API's public GET."""
    path = f"/api/spaces/{o.space_id}"
    return await _keep_alive_flood(o, o.control_port, lambda: path, deadline)


async def replay_flood(o: AttackOrder, deadline: float) -> Outcome:
    """``count`` connections downloading the live Space's growing replay, again and again."""
    path = f"/replay/{o.space_id}.ogg"
    return await _keep_alive_flood(o, o.audience_port, lambda: path, deadline)


async def forged_sids(o: AttackOrder, deadline: float) -> Outcome:
    """Playlist polls each with a fresh random ``?sid=``: sessions the server never issued."""
    rng = random.Random(o.shard)

    def target() -> str:
        return f"{o.hls_path}?sid={rng.getrandbits(64):016x}"

    return await _keep_alive_flood(o, o.audience_port, target, deadline)


# -- the stage WebSocket ------------------------------------------------------------------

WS_HELD = 200
WS_HUGE_BYTES = 10 * 1024 * 1024


async def junk_ws(o: AttackOrder, deadline: float) -> Outcome:
    """Many stage WebSockets on one token, and binary, oversized and junk frames."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    out = Outcome(o.attack)
    block = BLOCKS["junk-ws"]
    url = f"ws://{HOST}:{o.control_port}/api/spaces/{o.space_id}/ws?token={o.token}"
    held: list[Any] = []

    async def open_one(i: int) -> Any:
        try:
            ws = await asyncio.wait_for(
                connect(url, max_size=None, local_addr=(source_address(block, i), 0)),
                CONNECT_TIMEOUT_S,
            )
            out.opened += 1
            return ws
        except (OSError, TimeoutError, WebSocketException) as exc:
            out.failed += 1
            _err(out, exc)
            return None

    gate = asyncio.Semaphore(32)

    async def held_one(i: int) -> None:
        async with gate:
            if (ws := await open_one(i)) is not None:
                held.append(ws)

    await asyncio.gather(*(held_one(i) for i in range(min(o.count, WS_HELD))))
    rng = random.Random(o.shard)
    frames: list[Callable[[Any], Awaitable[None]]] = [
        lambda ws: ws.send(rng.randbytes(rng.randint(1, 4096))),  # binary
        lambda ws: ws.send("x" * WS_HUGE_BYTES),  # oversize text
        lambda ws: ws.send(rng.randbytes(256).decode("latin-1")),  # junk text
        lambda ws: ws.send(iter(["frag", "mented", "x" * 70_000])),  # fragmented
        lambda ws: ws.send('{"type": "command", "command": "end"}'),
    ]
    i = WS_HELD
    while time.monotonic() < deadline:
        ws = await open_one(i)
        i += 1
        if ws is None:
            await asyncio.sleep(0.1)
            continue
        try:
            for _ in range(3):
                await asyncio.wait_for(rng.choice(frames)(ws), REQUEST_TIMEOUT_S)
                out.bytes_sent += 1
            await asyncio.wait_for(ws.recv(), 0.5)
        except (OSError, TimeoutError, WebSocketException) as exc:
            _err(out, exc)
        code = ws.close_code
        out.statuses[f"close {code}" if code is not None else "open"] += 1
        ws.transport.abort()
    out.open_at_end = sum(1 for ws in held if ws.close_code is None)
    for ws in held:
        ws.transport.abort()  # a server that ignores closing frames must not hold us
    return out


# -- the API with tokens ------------------------------------------------------------------

OFFER_WAVE = 100
MAX_OFFERS = 300


async def _offer_sdp() -> str:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _client(source: str, port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}",
        transport=httpx.AsyncHTTPTransport(local_address=source),
        timeout=REQUEST_TIMEOUT_S,
    )


async def _post(
    out: Outcome, client: httpx.AsyncClient, path: str, token: str, body: object
) -> httpx.Response | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = await client.post(path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        _err(out, exc)
        return None
    out.requests += 1
    out.statuses[str(resp.status_code)] += 1
    return resp


async def offer_flood(o: AttackOrder, deadline: float) -> Outcome:
    """Waves of ``OFFER_WAVE`` concurrent SDP offers on one speaker token."""
    out = Outcome(o.attack)
    sdp = await asyncio.wait_for(_offer_sdp(), SETUP_TIMEOUT_S)
    ready()
    deadline = time.monotonic() + o.seconds
    path = f"/api/spaces/{o.space_id}/stage/offer"
    body = {"sdp": sdp, "type": "offer"}
    async with _client(source_address(BLOCKS["offer-flood"], 0), o.control_port) as client:
        while time.monotonic() < deadline and out.requests < MAX_OFFERS:
            wave = [_post(out, client, path, o.token, body) for _ in range(OFFER_WAVE)]
            answered = await _bounded(wave, max(0.1, deadline - time.monotonic()), out)
            out.opened += sum(1 for r in answered if r is not None)
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    return out


SETUP_TIMEOUT_S = 30.0


def ready() -> None:
    """Tell the benchmark the attack proper begins now (after any set-up)."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()


async def _listeners(
    out: Outcome,
    o: AttackOrder,
    block: int,
    act: Callable[[httpx.AsyncClient, str, float], Awaitable[None]],
    tail_s: float = 0.0,
) -> None:
    """``o.count`` listeners, each from its own address, signed in first (set-up, bounded
    by ``SETUP_TIMEOUT_S``); then each runs ``act(client, token, deadline)`` for
    ``o.seconds``, cut off ``tail_s`` after that."""
    clients = [_client(source_address(block, i), o.control_port) for i in range(o.count)]
    gate = asyncio.Semaphore(32)

    async def sign_in(client: httpx.AsyncClient) -> str | None:
        async with gate:
            resp = await _post(out, client, f"/api/spaces/{o.space_id}/listeners", "", {})
        return str(resp.json()["token"]) if resp is not None and resp.status_code == 201 else None

    try:
        tokens = await _bounded([sign_in(c) for c in clients], SETUP_TIMEOUT_S, out)
        signed = [(c, t) for c, t in zip(clients, tokens, strict=True) if isinstance(t, str)]
        out.opened = len(signed)
        ready()
        deadline = time.monotonic() + o.seconds
        await _bounded([act(c, t, deadline) for c, t in signed], o.seconds + tail_s, out)
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.aclose()


async def _bounded(coros: Sequence[Awaitable[Any]], timeout_s: float, out: Outcome) -> list[Any]:
    """Run ``coros`` together for at most ``timeout_s``: their results, in order (None
    for those cut off or failed; failures counted)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    results: list[Any] = []
    for t in tasks:
        if t.cancelled():
            results.append(None)
        elif (exc := t.exception()) is not None:
            _err(out, exc)
            results.append(None)
        else:
            results.append(t.result())
    return results


async def reactions(o: AttackOrder, deadline: float) -> Outcome:
    """``count`` listener tokens sending reactions as fast as they are answered."""
    out = Outcome(o.attack)
    path = f"/api/spaces/{o.space_id}/reactions"

    async def react(client: httpx.AsyncClient, token: str, until: float) -> None:
        while time.monotonic() < until:
            await _post(out, client, path, token, {"emoji": "👏"})

    await _listeners(out, o, BLOCKS["reactions"], react)
    return out


HANDS_LOWERED_WITHIN_S = 5.0


async def hands(o: AttackOrder, deadline: float) -> Outcome:
    """``count`` listeners raise their hands and keep them up until the end; then they
    lower them (not measured: the next attack should not inherit the queue)."""
    out = Outcome(o.attack)
    path = f"/api/spaces/{o.space_id}/commands"

    async def raise_and_lower(client: httpx.AsyncClient, token: str, until: float) -> None:
        await _post(out, client, path, token, {"command": "raise_hand"})
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        await _post(out, client, path, token, {"command": "lower_hand"})

    await _listeners(out, o, BLOCKS["hands"], raise_and_lower, HANDS_LOWERED_WITHIN_S)
    return out


ATTACKERS: dict[str, Callable[[AttackOrder, float], Awaitable[Outcome]]] = {
    "idle-spread": idle,
    "idle-one": idle,
    "slowloris": slowloris,
    "big-headers": big_headers,
    "get-flood": get_flood,
    "replay-flood": replay_flood,
    "junk-ws": junk_ws,
    "offer-flood": offer_flood,
    "forged-sids": forged_sids,
    "reactions": reactions,
    "hands": hands,
}


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# Attacks with a set-up (sign-ins, an SDP offer) call ``ready()`` themselves once it is
# done, and run ``seconds`` from then.
SET_UP = frozenset({"reactions", "hands", "offer-flood"})


async def run(o: AttackOrder) -> Outcome:
    if o.attack not in SET_UP:
        ready()
    deadline = time.monotonic() + o.seconds
    return await ATTACKERS[o.attack](o, deadline)


def main(argv: list[str]) -> int:
    order = AttackOrder(**json.loads(argv[0]))
    _raise_file_limit()
    out = asyncio.run(run(order))
    sys.stdout.write(json.dumps(out.to_json()) + "\n")
    sys.stdout.flush()
    # Thousands of sockets close faster with the process than one by one.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
