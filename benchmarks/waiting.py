"""``python -m benchmarks waiting``: the waiting-room target, measured.

    20,000 waiting listeners (held Ogg connections and web-style SSE clients) for 60 s,
    then Go live: origin requests per waiting listener per minute <= 1; time from Go
    live to first audio p99 <= 3 s; 0 failed; the stage clock's longest gap < 100 ms
    during the start storm.

The server (``townhall serve`` with its audience workers, pinned to ``--cpu``) has one
scheduled Space. The crowd (``townhall loadtest``'s waiting mode, on the other core)
arrives within ``--over`` seconds: ``--sse-share`` of it are web pages (as a listen
page whose player plays the Ogg stream, web/waiting.js: the audience port's SSE stream
and the Ogg stream held open while waiting, marked ``count=0``; at Go live nothing
connects), the rest hold Ogg connections opened before the start. Pages playing LL-HLS
start at Go live on the cacheable playlist and parts, which a CDN serves: not here.
``--wait`` seconds after the arrivals the host goes live and the tone bot joins the
stage; first audio counts from that instant (the first Ogg page with audio).

Origin requests: what the control process answered over the wait (its own counter,
``townhall_control_requests``, read at the start of the wait and at Go live, less our
own reads). The web-style clients do what the page does once loaded, which the browser
test counts in Chromium; the control process's CPU time over the wait is shown too.
Audio bytes: what the crowd had received by Go live. The stage clock: the stage's own
``townhall_stage_recent_tick_gap_seconds`` (its longest gap between two 20 ms ticks in
the last 10 s), sampled every second from Go live to the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psutil

from benchmarks.baselines import require
from benchmarks.cpus import other_cpu
from benchmarks.faults import metric_max
from benchmarks.harness.processes import process_table
from benchmarks.harness.server import Server, running_server, stop, townhall_command
from townhall.loadtest import Arrival, LoadPlan, Report, run_loadtest

TARGET_ORIGIN_PER_MIN = 1.0
TARGET_FIRST_AUDIO_P99_S = 3.0
TARGET_STAGE_GAP_S = 0.100
TICK_GAP_METRIC = "townhall_stage_recent_tick_gap_seconds"
LONGEST_GAP_METRIC = "townhall_stage_longest_tick_gap_seconds"
REQUESTS_METRIC = "townhall_control_requests_total"
AFTER_LIVE_S = 20.0  # the run goes on this long after Go live
CHANNEL_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WaitingPlan:
    listeners: int = 20_000
    over_s: float = 10.0  # arrivals spread over
    wait_s: float = 60.0  # everyone waits at least this long before Go live
    sse_share: float = 0.5
    cpu: int = 0
    audience_workers: int = 3

    @property
    def live_after_s(self) -> float:
        return self.over_s + self.wait_s

    def server_args(self) -> tuple[str, ...]:
        return (
            "--audience-workers",
            str(self.audience_workers),
            "--max-listeners",
            str(self.listeners + 10_000),
            "--set",
            f"audience.max_held_listeners={self.listeners + 10_000}",
        )


@dataclass
class StageWatch:
    """Samples the stage clock's recent longest gap (and the control's CPU) each second."""

    server: Server
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (since Go live, gap)
    live_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(1.0):
            if self.live_at is None:
                continue
            gap = metric_max(metrics(self.server), TICK_GAP_METRIC)
            if gap is not None:
                self.gaps.append((time.monotonic() - self.live_at, gap))

    def stop(self) -> None:
        self._stop.set()


def metrics(server: Server) -> str:
    # The admin key: /metrics is for the operator.
    with contextlib.suppress(httpx.HTTPError):
        headers = {"Authorization": f"Bearer {server.admin_key}"}
        return httpx.get(f"{server.control_url}/metrics", headers=headers, timeout=5).text
    return ""


@dataclass
class WaitingResult:
    plan: WaitingPlan
    report: Report
    origin_requests_while_waiting: int
    control_cpu_while_waiting_s: float | None
    stage_gaps: list[tuple[float, float]]
    longest_tick_gap_s: float | None
    go_live_took_s: float

    def summary(self) -> dict[str, Any]:
        rows = self.report.rows()
        total = rows["all"]
        minutes = self.plan.wait_s / 60.0
        per_min = self.origin_requests_while_waiting / max(1, self.plan.listeners) / minutes
        storm = [g for _, g in self.stage_gaps]
        return {
            "listeners": self.plan.listeners,
            "connected": total["connected"],
            "failed": total["failed"],
            "with_media": total["with_media"],
            "first_audio_p50_s": total["first_audio_p50_s"],
            "first_audio_p99_s": total["first_audio_p99_s"],
            "first_audio_p99_by_kind_s": {
                k: r["first_audio_p99_s"] for k, r in rows.items() if k != "all"
            },
            "origin_requests_per_listener_per_min": per_min,
            "control_cpu_while_waiting_s": self.control_cpu_while_waiting_s,
            "received_before_live_bytes": self.report.received_before_live_bytes,
            "stage_gap_max_s": max(storm) if storm else None,
            "stage_longest_tick_gap_s": self.longest_tick_gap_s,
            "failures": total["failures"],
            "watchdog_fired": self.report.watchdog_fired,
        }

    def verdicts(self) -> list[tuple[str, str, str, bool]]:
        s = self.summary()
        p99, gap = s["first_audio_p99_s"], s["stage_gap_max_s"]
        return [
            (
                "origin requests / listener / min",
                f"{s['origin_requests_per_listener_per_min']:.3f}",
                f"<= {TARGET_ORIGIN_PER_MIN:g}",
                s["origin_requests_per_listener_per_min"] <= TARGET_ORIGIN_PER_MIN,
            ),
            (
                "audio bytes before Go live",
                str(s["received_before_live_bytes"]),
                "0",
                s["received_before_live_bytes"] == 0,
            ),
            (
                "Go live -> first audio p99",
                "-" if p99 is None else f"{p99:.3f} s",
                f"<= {TARGET_FIRST_AUDIO_P99_S:g} s",
                p99 is not None and p99 <= TARGET_FIRST_AUDIO_P99_S,
            ),
            (
                "listeners failed",
                f"{s['failed']} (with audio {s['with_media']}/{self.plan.listeners})",
                "0",
                s["failed"] == 0
                and s["with_media"] == self.plan.listeners
                and not s["watchdog_fired"],
            ),
            (
                "stage clock longest gap",
                "-" if gap is None else f"{gap * 1000:.0f} ms",
                f"< {TARGET_STAGE_GAP_S * 1000:.0f} ms",
                gap is not None and gap < TARGET_STAGE_GAP_S,
            ),
        ]

    @property
    def passed(self) -> bool:
        return all(ok for *_, ok in self.verdicts())

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": asdict(self.plan),
            "summary": self.summary(),
            "targets": [
                {"target": n, "measured": m, "wanted": w, "pass": ok}
                for n, m, w, ok in self.verdicts()
            ],
            "stage_gaps_after_live": self.stage_gaps,
            "loadtest": self.report.to_json(),
        }

    def table(self) -> str:
        p, s = self.plan, self.summary()
        web = round(p.listeners * p.sse_share)
        cpu = s["control_cpu_while_waiting_s"]
        lines = [
            f"Waiting room: {p.listeners} listeners ({p.listeners - web} held Ogg, {web} web "
            f"pages: SSE + held Ogg) arrive over {p.over_s:g} s, wait {p.wait_s:g} s, then Go "
            f"live; server + {p.audience_workers} audience workers on CPU {p.cpu}",
            f"  connected {s['connected']}  failed {s['failed']}  with audio {s['with_media']}",
            f"  Go live -> first audio p50 {_s(s['first_audio_p50_s'])} p99 "
            f"{_s(s['first_audio_p99_s'])}  by kind (p99): {s['first_audio_p99_by_kind_s']}",
            f"  origin (control API) requests while waiting: {self.origin_requests_while_waiting}"
            f"; control process CPU over the wait: {'-' if cpu is None else f'{cpu:.2f} s'}",
            f"  audio bytes received before Go live: {s['received_before_live_bytes']}",
            f"  stage clock: recent longest tick gap each second after Go live (ms): "
            f"{[round(g * 1000) for _, g in self.stage_gaps]}",
            f"  stage clock longest tick gap since its start: {_s(s['stage_longest_tick_gap_s'])}"
            f"  (Go live request took {self.go_live_took_s:.2f} s)",
            "",
            self.report.table(),
            "",
            f"  {'target':<34}{'measured':>28}{'wanted':>10}  verdict",
        ]
        for name, got, want, ok in self.verdicts():
            lines.append(f"  {name:<34}{got:>28}{want:>10}  {'PASS' if ok else 'FAIL'}")
        lines.append(f"  overall: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} s"


def _control_cpu_s(server: Server) -> float | None:
    table = process_table(server.control_url, timeout_s=5.0) or []
    control = next((p for p in table if p.name == "control"), None)
    if control is None:
        return None
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(control.pid).cpu_times()
        return float(t.user + t.system)
    return None


def _scheduled_space(server: Server, starts_in_s: float) -> dict[str, Any]:
    resp = httpx.post(
        f"{server.control_url}/api/spaces",
        json={"title": "Waiting room benchmark", "scheduled_at": time.time() + starts_in_s},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=REQUEST_TIMEOUT_S,
    )
    resp.raise_for_status()
    return dict(resp.json())


def _wait_channel(events_url: str) -> None:
    """Until the audience workers know the scheduled Space (its first snapshot)."""
    deadline = time.monotonic() + CHANNEL_TIMEOUT_S
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("GET", events_url, timeout=2.0) as resp,
        ):
            if resp.status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{events_url} never answered 200")


@contextlib.contextmanager
def _watching(watch: StageWatch) -> Iterator[None]:
    thread = threading.Thread(target=watch.run, name="stage-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        watch.stop()
        thread.join(5)


def run_waiting_bench(plan: WaitingPlan) -> WaitingResult:
    require("taskset")
    client_cpu = other_cpu(plan.cpu)
    os.sched_setaffinity(0, {client_cpu})
    with running_server(server_args=plan.server_args(), cpu=plan.cpu) as server:
        space = _scheduled_space(server, plan.live_after_s + 30.0)
        _wait_channel(space["audience"]["events"])
        watch = StageWatch(server)
        bot: list[subprocess.Popen[bytes]] = []
        cpu_marks: dict[str, float | None] = {}
        took: list[float] = []

        def go_live() -> None:
            requests["live"] = metric_max(metrics(server), REQUESTS_METRIC)
            cpu_marks["live"] = _control_cpu_s(server)
            watch.live_at = started = time.monotonic()
            resp = httpx.post(
                f"{server.control_url}/api/spaces/{space['id']}/start",
                headers={"Authorization": f"Bearer {space['host_token']}"},
                timeout=REQUEST_TIMEOUT_S,
            )
            took.append(time.monotonic() - started)
            resp.raise_for_status()
            bot.append(
                subprocess.Popen(
                    townhall_command("speak", space["host_link"], "--tone", "440"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

        load = LoadPlan(
            space["audience"]["ogg"],
            plan.listeners,
            Arrival.FLASH,
            plan.over_s,
            plan.live_after_s + AFTER_LIVE_S,
            server_pid=server.pid,
            live_after_s=plan.live_after_s,
            web_share=plan.sse_share,
        )

        def waiting_from() -> None:
            # In this order, so the only request of ours between the two counts is the
            # second scrape (go_live scrapes first, then reads the process table).
            cpu_marks["waiting"] = _control_cpu_s(server)
            requests["waiting"] = metric_max(metrics(server), REQUESTS_METRIC)

        requests: dict[str, float | None] = {}
        timer = threading.Timer(3.0 + plan.over_s, waiting_from)
        try:
            with _watching(watch):
                timer.start()
                report = run_loadtest(load, go_live=go_live)
            longest = metric_max(metrics(server), LONGEST_GAP_METRIC)
        finally:
            timer.cancel()
            for b in bot:
                stop(b)
    before, after = cpu_marks.get("waiting"), cpu_marks.get("live")
    cpu = None if before is None or after is None else after - before
    first, last = requests.get("waiting"), requests.get("live")
    if first is None or last is None:
        raise RuntimeError("the control process's request count was not read")
    return WaitingResult(
        plan,
        report,
        origin_requests_while_waiting=int(last - first) - 1,  # minus our second scrape
        control_cpu_while_waiting_s=cpu,
        stage_gaps=watch.gaps,
        longest_tick_gap_s=longest,
        go_live_took_s=took[0] if took else float("nan"),
    )
