"""No single fault ends a Space, measured: kill each process of a live ``townhall serve``
in turn and time what listeners, speakers and the recording go through.

One server (``--audience-workers 2`` by default, a temporary data directory), one Space
with two tone bots on stage (the host at 440 Hz, an invited speaker at 660 Hz), a crowd
from ``townhall loadtest`` (Ogg and LL-HLS listeners) and a few Ogg probes
(``harness.probe``) that decode what they hear and tell, per 20 ms, which tones it
carried. Then for each role, ``--kills`` times: ``kill -9`` the process, measure until it
has recovered, let it settle, next. A role's processes are found in ``GET /healthz`` on
the control port; a server whose healthz lists none has only its audience workers found
(children listening on the audience port), and the other roles are skipped and said so.

Per role (targets from the issue; p99 over the kills):

* stage: kill → the program audible at every probe (either tone, by DFT) and both
  speakers back (both tones); probe disconnects; the recording's hole around the kill;
* control: the API answering again; audio windows lost at the probes; the stage clock's
  longest gap over the last 10 s, read 5 s after the kill
  (the ``townhall_stage_recent_tick_gap_seconds`` gauge, if served);
* recorder: audio windows lost at the probes; the new recorder listed;
* audience worker: the probes that were on it hearing audio again.

``--recordings-tmpfs-kib N`` (root) runs another scenario instead: the recordings on a
tmpfs of N KiB that fills up mid-Space; audio windows lost and the stage clock's gap
around that moment, the host told (the stage WebSocket's ``recording``/``paused``
message; the ``townhall_recording_paused`` metric), End answering 200, and the replay
decoding. A crowd runs per role, so the listeners it drops are that role's doing.

Everything started here is stopped by pid at the end, also on an error or Ctrl-C; the
whole run is bounded by ``--max-seconds``; loopback only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import math
import os
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness.probe import FrameLog, OggPacketReader, OggProbe, OpusFrames
from benchmarks.harness.processes import (
    ServeProcess,
    children_on_port,
    kill9,
    process_table,
    serving_pid,
    stop,
    tmpfs,
    wait_replaced,
)
from benchmarks.harness.server import Server, Space, start_server, townhall_command
from benchmarks.harness.watch import StageWatch

ROLES = ("stage", "control", "recorder", "audience")
DISK_FULL = "disk-full"  # a scenario of its own: the recordings on a tiny filesystem
HOST_TONE_HZ, GUEST_TONE_HZ = 440.0, 660.0
TONES = (HOST_TONE_HZ, GUEST_TONE_HZ)
AUDIBLE_SUSTAIN_FRAMES = 5  # 100 ms of tone: a listener hears it
BACK_SUSTAIN_FRAMES = 10  # 200 ms of both tones: both speakers are back
TICK_GAP_METRIC = "townhall_stage_recent_tick_gap_seconds"
REQUEST_TIMEOUT_S = 1.0
POLL_S = 0.05


# -- targets and summaries (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on one statistic of a measure: ``p99 <= 3.0``, ``max < 0.1``..."""

    stat: str  # "p50", "p99" or "max"
    op: str  # "<=", "<" or ">="
    bound: float

    def holds(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.bound
        return value <= self.bound if self.op == "<=" else value < self.bound

    def __str__(self) -> str:
        return f"{self.stat} {self.op} {self.bound:g}"


# (role, measure) → target; measures without one are reported for information.
TARGETS: dict[tuple[str, str], Target] = {
    ("stage", "audible_s"): Target("p99", "<=", 3.0),
    ("stage", "both_back_s"): Target("p99", "<=", 5.0),
    ("stage", "probe_disconnects"): Target("max", "<=", 0),
    ("stage", "crowd_ogg_dropped"): Target("max", "<=", 0),
    ("stage", "recording_hole_s"): Target("max", "<=", 3.0),
    ("control", "tick_gap_s"): Target("max", "<", 0.1),
    ("control", "lost_windows"): Target("max", "<=", 0),
    ("control", "api_back_s"): Target("max", "<=", 3.0),
    # The "0 stage ticks missed"; windows lost at the probes are reported beside
    # the same count in as long a span before the kill (the machine's own noise).
    ("recorder", "tick_gap_s"): Target("max", "<", 0.1),
    ("audience", "audio_back_s"): Target("max", "<=", 5.0),
    (DISK_FULL, "tick_gap_s"): Target("max", "<", 0.1),
    (DISK_FULL, "host_told_s"): Target("max", "<=", 2.0),
    (DISK_FULL, "end_ok"): Target("max", ">=", 1),
    (DISK_FULL, "replay_audio_s"): Target("max", ">=", 1.0),
}
# The order measures are printed in, per role.
MEASURES: dict[str, tuple[str, ...]] = {
    "stage": ("audible_s", "both_back_s", "probe_disconnects", "recording_hole_s", "replaced_s"),
    "control": (
        "api_back_s",
        "ws_back_s",
        "lost_windows",
        "lost_windows_before",
        "tick_gap_s",
        "replaced_s",
    ),
    "recorder": (
        "lost_windows",
        "lost_windows_before",
        "tick_gap_s",
        "recording_hole_s",
        "replaced_s",
    ),
    "audience": ("audio_back_s", "probes_on_worker", "replaced_s"),
    DISK_FULL: (
        "host_told_s",
        "paused_metric_s",
        "lost_windows",
        "lost_windows_before",
        "tick_gap_s",
        "end_ok",
    ),
}
# Measured once per role over all its kills (from the crowd, the replay), not per kill.
ROLE_MEASURES = ("crowd_ogg_dropped", "crowd_hls_failed", "replay_audio_s")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: of 10 kills, p99 is the worst and p50 the 5th."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    n: int  # kills measured
    missing: int  # kills where it could not be measured (timed out, not served)
    p50: float | None
    p99: float | None
    max: float | None

    def stat(self, name: str) -> float | None:
        value: float | None = getattr(self, name)
        return value


def summarise(samples: Sequence[float | None]) -> Summary:
    got = [s for s in samples if s is not None]
    if not got:
        return Summary(0, len(samples), None, None, None)
    return Summary(
        len(got), len(samples) - len(got), percentile(got, 50), percentile(got, 99), max(got)
    )


# Measures a server may simply not offer (a metric it does not serve): absent, they are
# "n/a"; any other measure absent means it timed out, the worst outcome.
MAY_BE_ABSENT = frozenset({"tick_gap_s"})


def verdict(target: Target | None, summary: Summary, measure: str = "") -> str:
    """PASS/FAIL against the target: a kill not measured fails it, unless ``measure`` is
    one a server may not serve (then "n/a" when none was); "-" without a target."""
    if target is None:
        return "-"
    value = summary.stat(target.stat)
    if value is None:
        return "n/a" if measure in MAY_BE_ABSENT else "FAIL"
    return "PASS" if target.holds(value) and summary.missing == 0 else "FAIL"


def metric_max(text: str, name: str) -> float | None:
    """The largest value of a Prometheus metric (any labels) in exposition ``text``."""
    values = []
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            with contextlib.suppress(ValueError, IndexError):
                values.append(float(line.rsplit(None, 1)[1]))
    return max(values) if values else None


def silent_stretches(
    media_s: Sequence[float], toned: Sequence[bool], frame_s: float = 0.02
) -> list[tuple[float, float]]:
    """(start, end) media times with no tone, from frames in media order: the time
    between two toned frames more than one frame apart. Media time that jumps (a gap
    in the recording) is silence too."""
    marks = [m for m, t in zip(media_s, toned, strict=True) if t]
    return [(a, b - frame_s) for a, b in itertools.pairwise(marks) if b - a > frame_s * 1.5]


def hole_at(
    stretches: Sequence[tuple[float, float]],
    at_s: float,
    before_s: float = 2.0,
    after_s: float = 15.0,
) -> float:
    """The longest silent stretch overlapping [at - before, at + after]; 0 if none."""
    lo, hi = at_s - before_s, at_s + after_s
    return max((b - a for a, b in stretches if b >= lo and a <= hi), default=0.0)


# -- the plan, a kill, the report --------------------------------------------------------


@dataclass(frozen=True)
class FaultPlan:
    kills: int = 10
    roles: tuple[str, ...] = ROLES
    ogg_listeners: int = 1000
    hls_listeners: int = 200
    probes: int = 4
    audience_workers: int = 2
    settle_s: float = 3.0
    recover_timeout_s: float = 20.0
    crowd_over_s: float = 10.0
    max_seconds: float = 3600.0
    server_args: tuple[str, ...] = ()
    keep_dir: Path | None = None
    recordings_tmpfs_kib: int | None = None

    def crowd_seconds(self, role: str) -> float:
        """How long one role's crowd stays: its kills at a typical recovery each (the
        windows-lost measures watch 6 s), plus the arrivals and a margin. The crowd is
        not stopped early (its report is written at the end of its run), so this is
        also what the run waits for after the last kill."""
        typical_s = {"audience": 3.0, "stage": 8.0}.get(role, 7.0)
        kills = 1 if role == DISK_FULL else self.kills
        return self.crowd_over_s + 10.0 + kills * (self.settle_s + typical_s)


@dataclass
class Kill:
    role: str
    index: int
    victim: str
    victim_pid: int
    new_pid: int | None = None
    at_monotonic: float = 0.0
    at_unix: float = 0.0
    measures: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class FaultReport:
    plan: FaultPlan
    kills: list[Kill] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # role → why
    crowd: dict[str, dict[str, Any]] = field(default_factory=dict)  # role → figures
    per_role: dict[str, dict[str, float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str = ""  # why the run stopped early, if it did

    def summaries(self) -> dict[str, dict[str, Summary]]:
        out: dict[str, dict[str, Summary]] = {}
        for role in self.plan.roles:
            kills = [k for k in self.kills if k.role == role]
            if not kills:
                continue
            out[role] = {m: summarise([k.measures.get(m) for k in kills]) for m in MEASURES[role]}
            for m, v in self.per_role.get(role, {}).items():
                out[role][m] = summarise([v])
        return out

    @property
    def passed(self) -> bool:
        verdicts = [
            verdict(TARGETS.get((role, m)), s, m)
            for role, by in self.summaries().items()
            for m, s in by.items()
        ]
        return "FAIL" not in verdicts and bool(self.kills) and not self.error

    def table(self) -> str:
        head = f"{'role':<10}{'measure':<20}{'n':>4}{'p50':>9}{'p99':>9}{'max':>9}"
        head += f"  {'target':<14}verdict"
        lines = [head]
        for role, by in self.summaries().items():
            for m, s in by.items():
                target = TARGETS.get((role, m))
                n = f"{s.n}" + (f"+{s.missing}?" if s.missing else "")
                lines.append(
                    f"{role:<10}{m:<20}{n:>4}{_cell(s.p50):>9}{_cell(s.p99):>9}{_cell(s.max):>9}"
                    f"  {target or ''!s:<14}{verdict(target, s, m)}"
                )
        for role, why in self.skipped.items():
            lines.append(f"{role:<10}skipped: {why}")
        for role, figures in self.crowd.items():
            lines.append(
                f"crowd during {role}: " + ", ".join(f"{k} {v}" for k, v in figures.items())
            )
        lines.append("n: kills measured; +k? kills where it was not (timed out or not served)")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"ERROR: {self.error}"] if self.error else []
        for k in self.kills:
            lines += [f"note: {k.role} kill {k.index}: {n}" for n in k.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        plan = asdict(self.plan)
        plan["keep_dir"] = str(self.plan.keep_dir) if self.plan.keep_dir else None
        return {
            "plan": plan,
            "summaries": {
                role: {
                    m: {
                        **asdict(s),
                        "target": str(TARGETS.get((role, m)) or ""),
                        "verdict": verdict(TARGETS.get((role, m)), s, m),
                    }
                    for m, s in by.items()
                }
                for role, by in self.summaries().items()
            },
            "kills": [asdict(k) for k in self.kills],
            "skipped": self.skipped,
            "crowd": self.crowd,
            "per_role": self.per_role,
            "notes": self.notes,
            "error": self.error,
            "passed": self.passed,
        }


def _cell(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:g}" if float(v).is_integer() else f"{v:.3f}"


# -- running it ----------------------------------------------------------------------------


class OutOfTime(Exception):
    pass


@dataclass
class Rig:
    """What one run has up: the server, the Space, the bots, the crowd, the probes."""

    plan: FaultPlan
    server: Server
    space: Space
    work: Path
    probes: list[OggProbe]
    started_at_unix: float
    deadline: float
    listed: bool  # healthz lists the processes
    audience_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    watch: StageWatch | None = None
    recordings_mount: Path | None = None
    ended: bool = False

    def lookup(self) -> list[ServeProcess] | None:
        if self.listed:
            return process_table(self.server.control_url, REQUEST_TIMEOUT_S)
        return children_on_port(self.server.pid, self.audience_port)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime(f"--max-seconds {self.plan.max_seconds:g} reached")


def run_fault_bench(plan: FaultPlan, log: Callable[[str], None] = print) -> FaultReport:
    report = FaultReport(plan)
    with contextlib.ExitStack() as stack:
        work = plan.keep_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="townhall-faults-"))
        )
        work.mkdir(parents=True, exist_ok=True)
        try:
            rig = _rig_up(plan, work, stack, log)
            for role in plan.roles:
                if (why := _unrunnable(rig, role)) is not None:
                    report.skipped[role] = why
                    continue
                with contextlib.ExitStack() as crowd_stack:
                    crowd = _start_crowd(rig, role, crowd_stack, log)
                    if role == DISK_FULL:
                        filled = _disk_full(rig, report, log)
                    else:
                        _kill_role(rig, role, report, log)
                    _finish_crowd(rig, role, crowd, report)
                if role == DISK_FULL and filled is not None:
                    _end_after_disk_full(rig, filled)
            _wind_down(rig, report, log)
        except OutOfTime as exc:
            report.notes.append(str(exc))
        except SkipScenario as exc:
            report.skipped[DISK_FULL] = str(exc)
        except KeyboardInterrupt:
            report.error = "interrupted: partial results"
        except Exception as exc:  # the partial results are worth printing
            traceback.print_exc()
            report.error = f"stopped by {type(exc).__name__}: {exc}"[:500]
    return report


def _rig_up(
    plan: FaultPlan, work: Path, stack: contextlib.ExitStack, log: Callable[[str], None]
) -> Rig:
    deadline = time.monotonic() + plan.max_seconds
    args = ["--audience-workers", str(plan.audience_workers), *plan.server_args]
    mount = None
    if plan.recordings_tmpfs_kib is not None:
        mount, extra = _tiny_recordings(plan.recordings_tmpfs_kib, work, stack)
        args += extra
    server = start_server(work / "data", args)
    # Callbacks run in reverse: the log is saved once the server has stopped.
    stack.callback(lambda: (work / "server.log").write_text(server.output(last=5_000)))
    stack.callback(server.stop)
    log(f"server pid {server.pid}: {server.control_url} {server.audience_url}")
    space = server.create_space_sync("fault benchmark")
    space.start_sync()
    procs: list[subprocess.Popen[bytes]] = []
    stack.callback(_stop_all, procs)
    guest = httpx.post(
        space.api("/invite"),
        json={"role": "speaker", "name": "guest"},
        headers=space.host_headers(),
        timeout=10,
    )
    guest.raise_for_status()
    for name, link, tone in (
        ("host", space.host_link, HOST_TONE_HZ),
        ("guest", guest.json()["link"], GUEST_TONE_HZ),
    ):
        out = (work / f"speak-{name}.log").open("wb")
        stack.callback(out.close)
        procs.append(
            subprocess.Popen(
                townhall_command("speak", link, "--tone", f"{tone:g}"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    space.wait_program_sync()
    started = httpx.get(space.api(), timeout=10).json().get("started_at")
    probes = [OggProbe(space.ogg_url, TONES, name=f"probe{i}", seed=i) for i in range(plan.probes)]
    for p in probes:
        p.start()
        stack.callback(p.stop)
    audience_port = int(server.audience_url.rsplit(":", 1)[1])
    listed = process_table(server.control_url) is not None
    watch = StageWatch(_ws_url(space)).start()
    stack.callback(watch.stop)
    rig = Rig(
        plan,
        server,
        space,
        work,
        probes,
        float(started or time.time()),
        deadline,
        listed,
        audience_port,
        procs,
    )
    if not _wait_steady(rig, plan.recover_timeout_s * 2):
        raise RuntimeError("the probes never heard both speakers:\n" + server.output())
    rig.watch, rig.recordings_mount = watch, mount
    log(f"space {space.id} on air; both speakers heard by {len(probes)} probes")
    return rig


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        stop(proc)


Crowd = list[tuple[str, subprocess.Popen[bytes], Path]]


def _start_crowd(
    rig: Rig, role: str, stack: contextlib.ExitStack, log: Callable[[str], None]
) -> Crowd:
    """One crowd per role, so what its listeners went through is that role's."""
    plan = rig.plan
    seconds = f"{plan.crowd_seconds(role):.0f}"
    crowd: Crowd = []
    for mix, n in (("ogg", plan.ogg_listeners), ("hls", plan.hls_listeners)):
        if n <= 0:
            continue
        out_json = rig.work / f"crowd-{role}-{mix}.json"
        out = (rig.work / f"crowd-{role}-{mix}.log").open("wb")
        stack.callback(out.close)
        cmd = townhall_command(
            "loadtest", rig.space.ogg_url, "--listeners", str(n), "--mix", mix,
            "--arrival", "ramp", "--over", f"{plan.crowd_over_s:g}", "--duration", seconds,
            "--server-pid", str(rig.server.pid), "--json", str(out_json),
        )  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        crowd.append((mix, proc, out_json))
        stack.callback(stop, proc)
    if crowd:
        log(
            f"{role}: a crowd of {plan.ogg_listeners} Ogg + {plan.hls_listeners} LL-HLS "
            f"listeners for {seconds} s"
        )
        time.sleep(plan.crowd_over_s)
    return crowd


def _finish_crowd(rig: Rig, role: str, crowd: Crowd, report: FaultReport) -> None:
    figures: dict[str, Any] = {}
    for mix, proc, out_json in crowd:
        try:
            proc.wait(timeout=max(5.0, rig.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop(proc)
        figures.update(_crowd_summary(mix, out_json))
    if not crowd:
        return
    report.crowd[role] = figures
    measures = report.per_role.setdefault(role, {})
    if rig.plan.ogg_listeners > 0:
        # Listeners reconnect after a drop (and then are not failed): count the drops.
        measures["crowd_ogg_dropped"] = _number(figures.get("ogg.drops"))
    if rig.plan.hls_listeners > 0:
        measures["crowd_hls_failed"] = _number(figures.get("hls.failed"))


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def _wait_steady(rig: Rig, timeout_s: float) -> bool:
    """Until every probe has heard both tones for the last second."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        if all(_heard_both(p, now - 1.0) for p in rig.probes):
            return True
        time.sleep(0.2)
    return False


def _heard_both(probe: OggProbe, since: float) -> bool:
    with probe.lock:
        return probe.log.first_with(TONES, since, sustain=BACK_SUSTAIN_FRAMES) is not None


def _unrunnable(rig: Rig, role: str) -> str | None:
    """Why ``role`` cannot be measured on this server, or None."""
    if role == DISK_FULL:
        return None if rig.recordings_mount else "give --recordings-tmpfs-kib N (as root)"
    if not rig.listed and role != "audience":
        return (
            "GET /healthz on the control port lists no processes (a server without the "
            "process model); only audience workers are found, as children on the audience port"
        )
    if not any(p.role == role for p in _table(rig)):
        return f"no {role} process listed ({[p.name for p in _table(rig)]})"
    return None


def _kill_role(rig: Rig, role: str, report: FaultReport, log: Callable[[str], None]) -> None:
    if not rig.listed:
        report.notes.append(
            "processes found with psutil (children on the audience port), not /healthz"
        )
    for i in range(rig.plan.kills):
        rig.check_time()
        table = _table(rig)
        # Running processes of the role (a pid of 0 is one listed as down); of the
        # stages, this Space's own, not the idle standby.
        candidates = [
            p
            for p in table
            if p.role == role and p.pid > 0 and (role != "stage" or p.name == _stage_of(rig))
        ]
        if not candidates:
            report.skipped[role] = f"no {role} process listed ({[p.name for p in table]})"
            return
        if not _wait_steady(rig, rig.plan.recover_timeout_s):
            report.notes.append(
                f"{role} kill {i}: probes not hearing both speakers before the kill"
            )
        kill = _one_kill(rig, role, i, table, candidates)
        report.kills.append(kill)
        log(f"{role} kill {i}: pid {kill.victim_pid} → {kill.new_pid}: "
            + ", ".join(f"{k} {_cell(v)}" for k, v in kill.measures.items()))  # fmt: skip
        time.sleep(rig.plan.settle_s)


def _stage_of(rig: Rig) -> str:
    return f"stage:{rig.space.id}"


def _table(rig: Rig) -> list[ServeProcess]:
    deadline = time.monotonic() + rig.plan.recover_timeout_s
    while time.monotonic() < deadline:
        if (table := rig.lookup()) is not None:
            return table
        time.sleep(POLL_S)
    raise RuntimeError("no process table from the server")


def _one_kill(
    rig: Rig, role: str, index: int, table: list[ServeProcess], candidates: list[ServeProcess]
) -> Kill:
    on_worker: list[OggProbe] = []
    victim = candidates[index % len(candidates)]
    if role == "audience":
        victim, on_worker = _busiest_worker(rig, candidates)
    elif role == "stage":
        named = [p for p in candidates if p.name == f"stage:{rig.space.id}"]
        victim = named[0] if named else victim
    kill = Kill(role, index, victim.name, victim.pid)
    kill.at_monotonic, kill.at_unix = time.monotonic(), time.time()
    kill9(victim.pid)
    t0, limit = kill.at_monotonic, rig.plan.recover_timeout_s
    # Watched alongside the measures, so its time is when it was listed, not when
    # the measures were done.
    watcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="replaced")
    listed = watcher.submit(wait_replaced, rig.lookup, table, victim, limit)
    if role == "stage":
        _measure_stage(rig, kill, t0, limit)
    elif role == "control":
        _measure_control(rig, kill, t0, limit)
    elif role == "recorder":
        _measure_lost(rig, kill, t0)
        kill.measures["tick_gap_s"] = metric_max(_metrics(rig), TICK_GAP_METRIC)
    elif role == "audience":
        kill.measures["probes_on_worker"] = float(len(on_worker))
        if not on_worker:
            kill.notes.append("no probe was on the killed worker")
        kill.measures["audio_back_s"] = _worst_back(
            on_worker, t0, limit, any_=True, sustain=AUDIBLE_SUSTAIN_FRAMES, since="reconnect"
        )
    replaced = listed.result()
    watcher.shutdown()
    if replaced is None:
        kill.notes.append(f"no replacement for {victim.name} listed within {limit:g} s")
        kill.measures["replaced_s"] = None
    else:
        kill.new_pid = replaced[0].pid
        kill.measures["replaced_s"] = replaced[1] - t0
    return kill


def _busiest_worker(rig: Rig, workers: list[ServeProcess]) -> tuple[ServeProcess, list[OggProbe]]:
    pids = [w.pid for w in workers]
    by_pid: dict[int, list[OggProbe]] = {pid: [] for pid in pids}
    for probe in rig.probes:
        port = probe.local_port
        if port is not None and (pid := serving_pid(pids, rig.audience_port, port)) is not None:
            by_pid[pid].append(probe)
    victim = max(workers, key=lambda w: len(by_pid[w.pid]))
    return victim, by_pid[victim.pid]


def _worst_back(
    probes: Sequence[OggProbe],
    t0: float,
    limit_s: float,
    any_: bool,
    sustain: int,
    since: str = "kill",
) -> float | None:
    """The latest of the probes' first sustained tone(s) after ``t0``, minus ``t0``;
    None if one of them heard nothing within ``limit_s``.

    What counts as heard again: ``since="new_stream"``, only a logical stream begun after
    the kill (a restarted stage's); ``since="reconnect"``, only what came on a connection
    opened after it (the probes on a killed worker); ``"kill"``, anything that arrived
    after it. Frames in flight at the kill would otherwise count as heard again.
    """
    deadline = t0 + limit_s
    pending = list(probes)
    worst = 0.0
    while True:  # looks once more at the deadline
        for probe in list(pending):
            with probe.lock:
                at = _heard_again(probe.log, t0, any_, sustain, since)
            if at is not None:
                worst = max(worst, at - t0)
                pending.remove(probe)
        if not pending or time.monotonic() >= deadline:
            return None if pending else worst
        time.sleep(POLL_S)


def _heard_again(log: FrameLog, t0: float, any_: bool, sustain: int, since: str) -> float | None:
    after = t0
    if since == "reconnect":
        reconnected = log.connected_after(t0)
        if reconnected is None:
            return None
        after = reconnected
    new_stream = since == "new_stream"
    return log.first_with(TONES, after, sustain=sustain, any_=any_, new_stream=new_stream)


def _measure_stage(rig: Rig, kill: Kill, t0: float, limit_s: float) -> None:
    kill.measures["audible_s"] = _worst_back(
        rig.probes, t0, limit_s, any_=True, sustain=AUDIBLE_SUSTAIN_FRAMES, since="new_stream"
    )
    kill.measures["both_back_s"] = _worst_back(
        rig.probes, t0, limit_s, any_=False, sustain=BACK_SUSTAIN_FRAMES, since="new_stream"
    )
    if kill.measures["audible_s"] is None:
        kill.notes.append(
            f"no probe heard a new Ogg stream (a restarted stage's serial) within {limit_s:g} s"
        )
    now = time.monotonic()
    disconnects = 0
    for probe in rig.probes:
        with probe.lock:
            disconnects += probe.log.disconnects_between(t0, now)
    kill.measures["probe_disconnects"] = float(disconnects)


def _measure_control(rig: Rig, kill: Kill, t0: float, limit_s: float) -> None:
    deadline = t0 + limit_s
    back: float | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if (
                httpx.get(
                    f"{rig.server.control_url}/healthz", timeout=REQUEST_TIMEOUT_S
                ).status_code
                == 200
            ):
                back = time.monotonic() - t0
                break
        time.sleep(POLL_S)
    kill.measures["api_back_s"] = back
    _measure_lost(rig, kill, t0)  # also gives the stage WebSocket time to come back
    ws_back = rig.watch.connected_after(t0) if rig.watch else None
    kill.measures["ws_back_s"] = None if ws_back is None else ws_back - t0
    kill.measures["tick_gap_s"] = metric_max(_metrics(rig), TICK_GAP_METRIC)
    if kill.measures["tick_gap_s"] is None:
        kill.notes.append(f"{TICK_GAP_METRIC} not served: the stage clock's gap is n/a")


LOST_BEFORE_S, LOST_AFTER_S = 1.0, 5.0


def _measure_lost(rig: Rig, kill: Kill, t0: float) -> None:
    """Audio windows lost at the worst probe over [kill - 1 s, kill + 5 s]: the frames of
    that span have arrived once another second has passed."""
    t1 = t0 + LOST_AFTER_S
    time.sleep(max(0.0, t1 + 1.0 - time.monotonic()))
    worst, before = 0, 0
    span = LOST_BEFORE_S + LOST_AFTER_S
    listening = True
    for probe in rig.probes:
        with probe.lock:
            worst = max(worst, probe.log.lost_windows(TONES, t0 - LOST_BEFORE_S, t1))
            # As long a span just before (with a short --settle, the previous fault's
            # tail may be in it): what this run loses without this fault.
            listening &= bool(probe.log.connects) and probe.log.connects[0] <= t0 - span
            before = max(before, probe.log.lost_windows(TONES, t0 - span, t0))
    kill.measures["lost_windows"] = float(worst)
    kill.measures["lost_windows_before"] = float(before) if listening else None


def _wind_down(rig: Rig, report: FaultReport, log: Callable[[str], None]) -> None:
    for probe in rig.probes:
        with probe.lock:
            report.notes.append(
                f"{probe.name}: {len(probe.log.connects)} connections, "
                f"{len(probe.log.disconnects)} drops, {len(probe.log.streams)} Ogg streams"
            )
    if not rig.ended:
        resp = httpx.post(rig.space.api("/end"), headers=rig.space.host_headers(), timeout=10)
        if resp.status_code != 200:
            report.notes.append(f"End answered {resp.status_code}: {resp.text[:200]}")
    _recording_holes(rig, report, log)


def _crowd_summary(mix: str, path: Path) -> dict[str, Any]:
    if not path.exists():
        return {f"{mix}": "no report (the load generator did not finish)"}
    body = json.loads(path.read_text())
    total = body.get("results", {}).get("all", {})
    keys = ("listeners", "connected", "failed", "retries", "stalls", "drops", "reconnects")
    return {f"{mix}.{k}": total.get(k) for k in keys} | {f"{mix}.failures": total.get("failures")}


def replay_timeline(data: bytes) -> tuple[list[float], list[bool], int]:
    """Media times and "any tone" per 20 ms frame of a replay, and its Ogg stream count."""
    log = FrameLog(TONES)
    frames = OpusFrames(log)
    frames.handle(OggPacketReader().feed(data), 0.0)
    media = [f.media_s for f in log.frames]
    return media, [any(f.tones) for f in log.frames], len(log.streams)


def _recording_holes(rig: Rig, report: FaultReport, log: Callable[[str], None]) -> None:
    url = rig.space.replay_ogg_url
    data = b""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            resp = httpx.get(url, timeout=30)
            if resp.status_code == 200 and resp.content:
                data = resp.content
                break
        time.sleep(0.5)
    if not data:
        report.notes.append(f"no replay at {url}: recording holes n/a")
        return
    (rig.work / "replay.ogg").write_bytes(data)
    media, toned, streams = replay_timeline(data)
    if DISK_FULL in rig.plan.roles:
        report.per_role.setdefault(DISK_FULL, {})["replay_audio_s"] = len(media) * 0.02
    if any(b < a for a, b in itertools.pairwise(media)):
        report.notes.append(
            f"the replay's media time goes backwards across its {streams} Ogg streams "
            "(granules restart per stream): recording holes n/a"
        )
        return
    stretches = silent_stretches(media, toned)
    for kill in report.kills:
        if kill.role in ("stage", "recorder"):
            kill.measures["recording_hole_s"] = hole_at(
                stretches, kill.at_unix - rig.started_at_unix
            )
    log(f"replay: {len(data)} bytes, {streams} Ogg stream(s), {len(media) * 0.02:.1f} s of frames")


# -- the recorder on a full disk -----------------------------------------------------------

FILL_TIMEOUT_S = 180.0


def _ws_url(space: Space) -> str:
    base = space.server.control_url.replace("http://", "ws://", 1)
    return f"{base}/api/spaces/{space.id}/ws?token={space.host_token}"


def recordings_setting(print_config: str) -> str | None:
    """The path of a recordings-directory setting in ``townhall serve --print-config``
    output, if the server has one (a ``dir`` key in the ``[recorder]`` table)."""
    table = ""
    for line in print_config.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            table = line[1:-1]
        elif table == "recorder" and "=" in line:
            key = line.split("=", 1)[0].strip()
            if key in ("dir", "recordings_dir", "directory"):
                return f"recorder.{key}"
    return None


def _tiny_recordings(kib: int, work: Path, stack: contextlib.ExitStack) -> tuple[Path, list[str]]:
    """A tmpfs of ``kib`` KiB for the recordings (root only): mounted where a recorder
    directory setting points, or else at the data directory's ``recordings``, which is
    where a server without that setting writes them."""
    if os.geteuid() != 0:
        raise SkipScenario("a tmpfs for the recordings needs root (mount -t tmpfs)")
    printed = subprocess.run(
        townhall_command("serve", "--print-config"), capture_output=True, text=True, check=True
    ).stdout
    setting = recordings_setting(printed)
    mount = work / "recordings-tmpfs" if setting else work / "data" / "recordings"
    mount.mkdir(parents=True, exist_ok=True)
    stack.enter_context(tmpfs(mount, kib))
    return mount, (["--set", f"{setting}={mount}"] if setting else [])


class SkipScenario(Exception):
    pass


def _disk_full(rig: Rig, report: FaultReport, log: Callable[[str], None]) -> Kill | None:
    assert rig.recordings_mount is not None
    if os.statvfs(rig.recordings_mount).f_bavail == 0:
        report.notes.append(
            f"{rig.recordings_mount} filled before the crowd had arrived: the moment is "
            "taken as now; give a larger --recordings-tmpfs-kib"
        )
    full_at = _wait_full(rig.recordings_mount, min(FILL_TIMEOUT_S, rig.deadline - time.monotonic()))
    if full_at is None or rig.watch is None:
        report.skipped[DISK_FULL] = f"{rig.recordings_mount} never filled up"
        return None
    kill = Kill(DISK_FULL, 0, "recordings filesystem", 0, None, full_at, time.time())
    log(f"{DISK_FULL}: {rig.recordings_mount} is full")
    watch, until = rig.watch, full_at + rig.plan.recover_timeout_s
    told = _poll_until(lambda: watch.first("recording", "paused", full_at - 1.0), until)
    kill.measures["host_told_s"] = None if told is None else max(0.0, told - full_at)
    paused = _poll_until(lambda: _paused_metric(rig), until)
    kill.measures["paused_metric_s"] = None if paused is None else max(0.0, paused - full_at)
    _measure_lost(rig, kill, full_at)
    text = _metrics(rig)
    kill.measures["tick_gap_s"] = metric_max(text, TICK_GAP_METRIC)
    report.kills.append(kill)
    return kill


def _end_after_disk_full(rig: Rig, kill: Kill) -> None:
    """End always works, also with the recording paused; the replay is checked after."""
    resp = httpx.post(rig.space.api("/end"), headers=rig.space.host_headers(), timeout=10)
    kill.measures["end_ok"] = 1.0 if resp.status_code == 200 else 0.0
    rig.ended = True
    if resp.status_code != 200:
        kill.notes.append(f"End answered {resp.status_code}: {resp.text[:200]}")


def _wait_full(mount: Path, timeout_s: float) -> float | None:
    """When the filesystem at ``mount`` has no free block left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = os.statvfs(mount)
        if st.f_bavail == 0:
            return time.monotonic()
        time.sleep(POLL_S)
    return None


def _poll_until(probe: Callable[[], float | None], deadline: float) -> float | None:
    while time.monotonic() < deadline:
        if (at := probe()) is not None:
            return at
        time.sleep(POLL_S * 2)
    return None


def _paused_metric(rig: Rig) -> float | None:
    value = metric_max(_metrics(rig), "townhall_recording_paused")
    return time.monotonic() if value is not None and value > 0 else None


def _metrics(rig: Rig) -> str:
    with contextlib.suppress(httpx.HTTPError):
        return rig.server.metrics(timeout_s=REQUEST_TIMEOUT_S * 3)
    return ""
