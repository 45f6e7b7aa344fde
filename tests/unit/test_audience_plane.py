"""The audience plane seam: either implementation is a feed sink, and /metrics reads
its stats without knowing which one serves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import Metric

from townhall.app import Townhall
from townhall.audience.plane import AudienceStats, ChannelStats, WorkerLoad
from townhall.audience.server import AudienceServer
from townhall.config import ServerConfig
from townhall.feed import ChannelEnded, FeedMessage, OggHeader, OggPages, RoomUpdate
from townhall.metrics import TownhallCollector


@dataclass
class FixedPlane:
    """An audience plane whose stats are given: a pool of two workers, say."""

    given: AudienceStats

    def publish(self, msg: FeedMessage) -> None:
        pass

    def stats(self) -> AudienceStats:
        return self.given

    async def close(self) -> None:
        pass


def scrape(th: Townhall) -> dict[str, Metric]:
    return {m.name: m for m in TownhallCollector(th).collect()}


def test_the_in_process_server_is_a_sink_and_reports_its_channels() -> None:
    server = AudienceServer()
    for msg in (
        OggHeader("a", b"OggS"),
        OggPages("a", b"page", 1.0),
        RoomUpdate("a", '{"state": "live"}', 1.0),
        RoomUpdate("b", "{}", 1.0),
    ):
        server.publish(msg)
    stats = server.stats()
    assert [c.space_id for c in stats.channels] == ["a", "b"]
    assert stats.workers is None  # this process serves the port itself
    server.publish(ChannelEnded("a", 2.0))
    assert server.channels["a"].ended and server.channels["a"].last_room_json == '{"state": "live"}'


def test_metrics_read_a_plane_of_workers_the_same_way(tmp_path: Path) -> None:
    th = Townhall(ServerConfig(data_dir=tmp_path))
    th.audience_plane = FixedPlane(
        AudienceStats(
            (ChannelStats("a", 120, 7, 0.4, 0.01),),
            (WorkerLoad(101, 0.02), WorkerLoad(102, 0.5)),
            worker_restarts=3,
        )
    )
    metrics = scrape(th)
    assert [s.value for s in metrics["townhall_stream_listeners"].samples] == [120]
    assert [s.value for s in metrics["townhall_event_listeners"].samples] == [7]
    assert metrics["townhall_audience_workers"].samples[0].value == 2
    assert metrics["townhall_audience_worker_restarts"].samples[0].value == 3
    lag = {
        s.labels["pid"]: s.value
        for s in metrics["townhall_audience_worker_loop_lag_seconds"].samples
    }
    assert lag == {"101": 0.02, "102": 0.5}


def test_metrics_of_an_in_process_plane_have_no_worker_families(tmp_path: Path) -> None:
    th = Townhall(ServerConfig(data_dir=tmp_path))
    th.audience_plane = th.audience
    th.audience.publish(OggHeader("a", b"OggS"))
    metrics = scrape(th)
    assert [s.labels["space"] for s in metrics["townhall_stream_listeners"].samples] == ["a"]
    assert "townhall_audience_workers" not in metrics
    assert metrics["townhall_recording_write_errors"].samples[0].value == 0
