"""The speaker bot stays on stage by itself: a lost connection is replaced."""

from __future__ import annotations

import asyncio
import time

from benchmarks.harness.server import Server
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
