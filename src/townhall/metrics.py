"""Prometheus metrics, read from live state at scrape time.

A custom collector costs nothing on the hot paths (the fan-out loop, the 20 ms tick):
counters already kept by those loops are read only when Prometheus asks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from townhall.app import Townhall


class TownhallCollector(Collector):
    def __init__(self, th: Townhall) -> None:
        self.th = th

    def collect(self) -> Iterator[Metric]:
        yield from self._audience()
        yield from self._stage()

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
        for space_id, channel in self.th.audience.channels.items():
            streams.add_metric([space_id], len(channel.ogg.subscribers))
            interval.add_metric([space_id], channel.ogg.interval_s)
            pass_s.add_metric([space_id], channel.ogg.last_pass_s)
            events.add_metric([space_id], len(channel.events.subscribers))
        yield from (streams, interval, pass_s, events)

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
        for space_id, live in self.th.spaces.items():
            listening.add_metric([space_id], live.counter.listening_now(now))
            if live.stage is not None:
                ticks.add_metric([space_id], live.stage.ticks)
                slips.add_metric([space_id], live.stage.clock_slips)
                members.add_metric([space_id], len(live.stage.members))
        yield from (ticks, slips, members, listening)
