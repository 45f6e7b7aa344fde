"""The peers stay on by themselves: a speaker whose connection is lost rejoins; a
listener whose audience worker dies reconnects."""

from __future__ import annotations

import asyncio
import time

import psutil

from benchmarks.harness.audio import decode, has_tone
from benchmarks.harness.server import Server, on_air
from townhall.media.mixer import SAMPLE_RATE_HZ
from townhall.peers.listen import Received, listen_ogg
from townhall.peers.sources import ToneSource
from townhall.peers.speak import Speaker


async def test_a_speaker_whose_connection_dies_rejoins_with_a_new_one(server: Server) -> None:
    space = await server.create_space("rejoin")
    await space.start()
    speaker = Speaker(space.speaker, ToneSource(440))
    await speaker.join()
    try:
        await asyncio.sleep(0.5)
        first_pc = speaker.pc
        await first_pc.close()  # as if the stage had gone
        deadline = time.monotonic() + 10
        while speaker.rejoins == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert speaker.rejoins == 1, speaker.lost_reason
        assert speaker.pc is not first_pc and speaker.pc.connectionState == "connected"
        assert speaker.last_rejoin_s is not None and speaker.last_rejoin_s < 3.0
        rejoined_at = time.monotonic()
        await asyncio.sleep(1.0)
        assert len(speaker.heard.pcm(rejoined_at)) > 48_000 // 2, "no mix-minus after the rejoin"
        assert speaker.stopped is None
    finally:
        await speaker.leave()
        await space.end()


def audience_workers(server: Server) -> list[psutil.Process]:
    """The server's child processes listening on the audience port."""
    port = int(server.audience_url.rsplit(":", 1)[1])
    return [
        child
        for child in psutil.Process(server.proc.pid).children(recursive=True)
        if any(
            c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
            for c in child.net_connections(kind="tcp")
        )
    ]


def test_an_ogg_listener_whose_audience_worker_dies_hears_the_program_again() -> None:
    """``townhall speak`` on stage, ``listen_ogg`` on the one audience worker, the worker
    SIGKILLed: the listener reconnects to its replacement and the capture decodes, with
    the tone on both sides of the gap."""
    with on_air(server_args=["--audience-workers", "1"]) as space:

        async def scenario() -> Received:
            listening = asyncio.create_task(listen_ogg(space.ogg_url, 9.0))
            await asyncio.sleep(3.0)
            (worker,) = audience_workers(space.server)
            worker.kill()
            return await listening

        rec = asyncio.run(scenario())
    assert rec.reconnects >= 1, rec.drops
    dropped_at = rec.drops[0][0]
    back_at = next(at for at, _ in rec.arrivals if at > dropped_at)
    print(f"\nworker killed: the listener had audio again {back_at - dropped_at:.2f} s later")
    assert back_at - dropped_at < 5.0, f"silent for {back_at - dropped_at:.1f} s"
    audio = decode(bytes(rec.data))
    # The first connection's join burst may reach back to before the speaker was
    # heard: look for the tone in any second of the first half (3 s live before the
    # kill), and in the last two seconds (the replacement's live program).
    first_half = audio[: len(audio) // 2]
    seconds = range(0, len(first_half) - SAMPLE_RATE_HZ + 1, SAMPLE_RATE_HZ // 2)
    assert any(has_tone(first_half[i : i + SAMPLE_RATE_HZ], 440) for i in seconds)
    assert has_tone(audio[-2 * SAMPLE_RATE_HZ :], 440)
