"""The feed seam: a broken sink costs neither the other sinks nor the stage's clock."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

import pytest

from townhall.feed import ChannelEnded, FeedMessage, FeedSinks, OggHeader, OggPages
from townhall.stage.runtime import StageRuntime


@dataclass
class Kept:
    """A sink that keeps what it is given."""

    messages: list[FeedMessage] = field(default_factory=list)

    def publish(self, msg: FeedMessage) -> None:
        self.messages.append(msg)


class Broken:
    """A sink whose every publish raises, as a bug would."""

    def publish(self, msg: FeedMessage) -> None:
        raise RuntimeError("a bug in a sink")


def test_every_sink_gets_every_message_even_after_a_broken_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, after = Kept(), Kept()
    sinks = FeedSinks(before, Broken(), after)
    sent = [OggHeader("sp", b"h"), OggPages("sp", b"p", 1.0), ChannelEnded("sp", 2.0)]
    with caplog.at_level(logging.ERROR, logger="townhall.feed"):
        for msg in sent:
            sinks.publish(msg)
    assert before.messages == after.messages == sent
    assert sinks.errors == 3
    assert len(caplog.records) == 1  # logged once, counted every time


def test_a_removed_sink_gets_nothing_more() -> None:
    kept = Kept()
    sinks = FeedSinks()
    sinks.add(kept)
    sinks.publish(OggHeader("sp", b"h"))
    sinks.remove(kept)
    sinks.publish(ChannelEnded("sp", 1.0))
    assert kept.messages == [OggHeader("sp", b"h")]


def test_the_stage_clock_runs_on_whatever_its_feed_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> StageRuntime:
        stage = StageRuntime("sp", Broken())
        stage.start()
        await asyncio.sleep(0.5)  # 25 ticks: a few Ogg pages and LL-HLS parts
        await stage.end()
        return stage

    with caplog.at_level(logging.ERROR, logger="townhall.stage.runtime"):
        stage = asyncio.run(scenario())
    assert stage.ticks >= 10
    assert stage.feed_errors >= 3  # the header, pages, and the end all raised
    assert len(caplog.records) == 1


def test_the_stage_publishes_the_program_to_its_feed() -> None:
    async def scenario() -> Kept:
        kept = Kept()
        stage = StageRuntime("sp", kept)
        for _ in range(60):  # 1.2 s of ticks, driven directly
            stage.tick()
        await stage.end()
        return kept

    kept = asyncio.run(scenario())
    kinds = [type(m).__name__ for m in kept.messages]
    assert kinds[0] == "OggHeader" and kinds[-1] == "ChannelEnded"
    assert "OggPages" in kinds and "HlsInit" in kinds and "HlsPart" in kinds
    pages = [m for m in kept.messages if isinstance(m, OggPages)]
    assert all(a.at_monotonic_s <= b.at_monotonic_s for a, b in itertools.pairwise(pages))
