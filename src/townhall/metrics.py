"""Prometheus metrics, read from live state at scrape time.

A custom collector costs nothing on the hot paths (the fan-out loop, the 20 ms tick):
counters already kept by those loops are read only when Prometheus asks. In the control
process those are the other processes' latest reports (the audience plane's stats, each
stage's status, each recording's state), at most about a second old.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from townhall.app import Control
from townhall.audience.plane import WorkerLoad


class TownhallCollector(Collector):
    def __init__(self, th: Control) -> None:
        self.th = th

    def collect(self) -> Iterator[Metric]:
        yield from self._audience()
        yield from self._feed()
        yield from self._stage()
        yield from self._waiting()
        yield from self._cluster_counts()

    def _waiting(self) -> Iterator[Metric]:
        # What listeners cost the origin: a waiting crowd should add nothing here.
        yield CounterMetricFamily(
            "townhall_control_requests",
            "HTTP requests the control process answered (API, pages, /metrics)",
            self.th.waiting.control_requests,
        )
        held = GaugeMetricFamily(
            "townhall_held_listeners",
            "Ogg streams held open before the program begins (waiting rooms)",
            labels=["space"],
        )
        for c in self.th.audience_stats().channels:
            held.add_metric([c.space_id], c.held_listeners)
        yield held

    def _audience(self) -> Iterator[Metric]:
        streams = GaugeMetricFamily(
            "townhall_stream_listeners", "Ogg stream listeners", labels=["space"]
        )
        interval = GaugeMetricFamily(
            "townhall_fanout_interval_seconds",
            "current flush interval (grows when coalescing)",
            labels=["space"],
        )
        pass_s = GaugeMetricFamily(
            "townhall_fanout_pass_seconds", "duration of the last fan-out pass", labels=["space"]
        )
        events = GaugeMetricFamily(
            "townhall_event_listeners", "SSE room-event listeners", labels=["space"]
        )
        stats = self.th.audience_stats()
        for c in stats.channels:
            streams.add_metric([c.space_id], c.ogg_listeners)
            interval.add_metric([c.space_id], c.interval_s)
            pass_s.add_metric([c.space_id], c.pass_s)
            events.add_metric([c.space_id], c.event_listeners)
        yield from (streams, interval, pass_s, events)
        if stats.workers is not None:
            yield from _workers(stats.workers, stats.worker_restarts)

    def _feed(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "townhall_feed_sink_errors",
            "feed messages a sink (the recorder, the audience plane) raised on",
            self.th.feed_errors(),
        )
        yield CounterMetricFamily(
            "townhall_recording_write_errors",
            "recordings paused by a failing disk (full, out of file descriptors)",
            self.th.recording_write_errors(),
        )
        paused = GaugeMetricFamily(
            "townhall_recording_paused",
            "1 while a Space's recording is paused by a failing disk (its audio goes on)",
            labels=["space"],
        )
        for space_id, is_paused in sorted(self.th.recordings_paused().items()):
            paused.add_metric([space_id], 1.0 if is_paused else 0.0)
        yield paused

    def _stage(self) -> Iterator[Metric]:
        ticks = CounterMetricFamily("townhall_stage_ticks", "20 ms mixer ticks", labels=["space"])
        slips = CounterMetricFamily(
            "townhall_stage_clock_slips", "times the stage clock resynced", labels=["space"]
        )
        members = GaugeMetricFamily(
            "townhall_stage_members", "people connected to the stage", labels=["space"]
        )
        listening = GaugeMetricFamily(
            "townhall_listening_now", "listeners with a live session", labels=["space"]
        )
        now = time.monotonic()
        for live in self.th.service.held_spaces():
            space_id = live.space_id
            listening.add_metric([space_id], live.counter.listening_now(now))
            if live.stage is not None:
                ticks.add_metric([space_id], live.stage.ticks)
                slips.add_metric([space_id], live.stage.clock_slips)
                members.add_metric([space_id], len(live.stage.members))
        gap = GaugeMetricFamily(
            "townhall_stage_longest_tick_gap_seconds",
            "the stage clock's longest gap between two ticks since its process started",
            labels=["space"],
        )
        for space_id, gap_s in sorted(self.th.longest_tick_gaps().items()):
            gap.add_metric([space_id], gap_s)
        recent = GaugeMetricFamily(
            "townhall_stage_recent_tick_gap_seconds",
            "the stage clock's longest gap between two ticks in the last stage.tick_gap_window_s",
            labels=["space"],
        )
        for space_id, gap_s in sorted(self.th.recent_tick_gaps().items()):
            recent.add_metric([space_id], gap_s)
        yield from (ticks, slips, members, listening, gap, recent)

    def _cluster_counts(self) -> Iterator[Metric]:
        """The edges' count reports, in a cluster (cluster/count_reports.py)."""
        follower = getattr(self.th, "count_reports", None)
        if follower is None:
            return
        yield CounterMetricFamily(
            "townhall_count_reports", "count reports the edges sent here", follower.received
        )
        yield CounterMetricFamily(
            "townhall_count_reports_rejected",
            "count reports not believed: not signed with the cluster's key, or malformed",
            follower.rejected,
        )
        nodes = GaugeMetricFamily(
            "townhall_counting_nodes",
            "other nodes whose listeners of the Space count now (fresh reports)",
            labels=["space"],
        )
        now = time.monotonic()
        for live in self.th.service.held_spaces():
            if live.counter.elsewhere is not None:
                nodes.add_metric([live.space_id], live.counter.elsewhere.nodes(now))
        yield nodes


def _workers(workers: tuple[WorkerLoad, ...], restarts: int) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "townhall_audience_workers", "audience worker processes serving", len(workers)
    )
    yield CounterMetricFamily(
        "townhall_audience_worker_restarts",
        "audience workers replaced after dying or falling behind",
        restarts,
    )
    lag = GaugeMetricFamily(
        "townhall_audience_worker_loop_lag_seconds",
        "how late each worker's event loop runs (admission refuses past a bound)",
        labels=["pid"],
    )
    for worker in workers:
        lag.add_metric([str(worker.pid)], worker.loop_lag_s)
    yield lag
