"""The final report: per kind of listener and overall, as a table and as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from townhall.loadtest.probe import ServerUsage
from townhall.loadtest.stats import Tally, merge_tallies

TABLE_METRICS = (
    "listeners",
    "connected",
    "failed",
    "with_media",
    "retries",
    "first_audio_p50_s",
    "first_audio_p99_s",
    "lateness_p50_s",
    "lateness_p99_s",
    "lateness_max_s",
    "steady_lateness_p50_s",
    "steady_lateness_p99_s",
    "stalls",
    "drops",
    "reconnects",
    "reconnect_gap_p50_s",
    "reconnect_gap_p99_s",
    "reconnect_gap_max_s",
    "bytes_per_listener",
)


@dataclass
class Report:
    url: str
    listeners: int
    arrival: str
    over_s: float
    duration_s: float
    mix: str
    processes: int
    by_kind: dict[str, Tally]
    server: ServerUsage | None = None
    watchdog_fired: bool = False
    # A waiting-room run: what the crowd had received by Go live (no audio byte).
    received_before_live_bytes: int | None = None

    @property
    def total(self) -> Tally:
        return _sum(self.by_kind)

    def rows(self) -> dict[str, dict[str, Any]]:
        rows = {kind: summarise(t) for kind, t in sorted(self.by_kind.items())}
        rows["all"] = summarise(self.total)
        return rows

    def to_json(self) -> dict[str, Any]:
        server = None
        if self.server is not None:
            server = {
                "pids": self.server.pids,
                "cpu_mean_percent": _round(self.server.cpu_mean),
                "cpu_max_percent": _round(self.server.cpu_max),
                "rss_max_bytes": self.server.rss_max_bytes,
            }
        return {
            "url": self.url,
            "listeners": self.listeners,
            "arrival": self.arrival,
            "over_s": self.over_s,
            "duration_s": self.duration_s,
            "mix": self.mix,
            "processes": self.processes,
            "watchdog_fired": self.watchdog_fired,
            "results": self.rows(),
            "server": server,
            "received_before_live_bytes": self.received_before_live_bytes,
        }

    def table(self) -> str:
        rows = self.rows()
        kinds = list(rows)
        lines = [f"{'':<22}" + "".join(f"{k:>12}" for k in kinds)]
        for metric in TABLE_METRICS:
            lines.append(f"{metric:<22}" + "".join(f"{_cell(rows[k][metric]):>12}" for k in kinds))
        lines.append(self._server_line())
        if self.received_before_live_bytes is not None:
            lines.append(f"received before go live: {self.received_before_live_bytes} bytes")
        failures = self.total.failures
        if failures:
            lines.append("failures: " + ", ".join(f"{k}: {n}" for k, n in failures.most_common()))
        return "\n".join(lines)

    def _server_line(self) -> str:
        s = self.server
        if s is None or s.cpu_mean is None:
            return "server: not sampled (give --server-pid, or run next to the server)"
        rss = (s.rss_max_bytes or 0) / 2**20
        return (
            f"server pids {s.pids}: CPU mean {s.cpu_mean:.0f}% max {s.cpu_max:.0f}% "
            f"of one core, RSS max {rss:.0f} MiB"
        )


def summarise(t: Tally) -> dict[str, Any]:
    return {
        "listeners": t.listeners,
        "connected": t.connected,
        "failed": t.failed,
        "with_media": t.with_media,
        "retries": t.retries,
        "first_audio_p50_s": t.first_audio.percentile(50),
        "first_audio_p99_s": t.first_audio.percentile(99),
        "lateness_p50_s": t.lateness.percentile(50),
        "lateness_p99_s": t.lateness.percentile(99),
        "lateness_max_s": t.lateness.max(),
        "steady_lateness_p50_s": t.steady_lateness.percentile(50),
        "steady_lateness_p99_s": t.steady_lateness.percentile(99),
        "stalls": t.stalls,
        # A dropped connection reconnects; the gap (drop to media again) is not lateness.
        "drops": t.drops,
        "reconnects": t.reconnects,
        "reconnect_gap_p50_s": t.reconnect_gap.percentile(50),
        "reconnect_gap_p99_s": t.reconnect_gap.percentile(99),
        "reconnect_gap_max_s": t.reconnect_gap.max(),
        "bytes_per_listener": t.bytes_received // t.listeners if t.listeners else 0,
        "failures": dict(t.failures),
    }


def _sum(by_kind: dict[str, Tally]) -> Tally:
    return merge_tallies([{"all": t} for t in by_kind.values()]).get("all", Tally())


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)
