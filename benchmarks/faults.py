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
  longest gap (the ``townhall_stage_longest_tick_gap_seconds`` gauge, if served);
* recorder: audio windows lost at the probes; the new recorder listed;
* audience worker: the probes that were on it hearing audio again.

Everything started here is stopped by pid at the end, also on an error or Ctrl-C; the
whole run is bounded by ``--max-seconds``; loopback only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import subprocess
import tempfile
import time
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
    wait_replaced,
)
from benchmarks.harness.server import Server, Space, start_server, townhall_command

ROLES = ("stage", "control", "recorder", "audience")
HOST_TONE_HZ, GUEST_TONE_HZ = 440.0, 660.0
TONES = (HOST_TONE_HZ, GUEST_TONE_HZ)
AUDIBLE_SUSTAIN_FRAMES = 5  # 100 ms of tone: a listener hears it
BACK_SUSTAIN_FRAMES = 10  # 200 ms of both tones: both speakers are back
TICK_GAP_METRIC = "townhall_stage_longest_tick_gap_seconds"
REQUEST_TIMEOUT_S = 1.0
POLL_S = 0.05


# -- targets and summaries (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on one statistic of a measure: ``p99 <= 3.0``, ``max < 0.1``..."""

    stat: str  # "p50", "p99" or "max"
    op: str  # "<=" or "<"
    bound: float

    def holds(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value < self.bound

    def __str__(self) -> str:
        return f"{self.stat} {self.op} {self.bound:g}"


# (role, measure) → target; measures without one are reported for information.
TARGETS: dict[tuple[str, str], Target] = {
    ("stage", "audible_s"): Target("p99", "<=", 3.0),
    ("stage", "both_back_s"): Target("p99", "<=", 5.0),
    ("stage", "probe_disconnects"): Target("max", "<=", 0),
    ("stage", "recording_hole_s"): Target("max", "<=", 3.0),
    ("control", "tick_gap_s"): Target("max", "<", 0.1),
    ("control", "lost_windows"): Target("max", "<=", 0),
    ("control", "api_back_s"): Target("max", "<=", 3.0),
    ("recorder", "lost_windows"): Target("max", "<=", 0),
    ("audience", "audio_back_s"): Target("max", "<=", 5.0),
}
# The order measures are printed in, per role.
MEASURES: dict[str, tuple[str, ...]] = {
    "stage": ("audible_s", "both_back_s", "probe_disconnects", "recording_hole_s", "replaced_s"),
    "control": ("api_back_s", "lost_windows", "tick_gap_s", "replaced_s"),
    "recorder": ("lost_windows", "recording_hole_s", "replaced_s"),
    "audience": ("audio_back_s", "probes_on_worker", "replaced_s"),
}


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


def verdict(target: Target | None, summary: Summary) -> str:
    """PASS/FAIL against the target; a kill not measured fails a target (a timeout is
    the worst outcome, not a missing one); "-" without a target or any sample."""
    if target is None:
        return "-"
    value = summary.stat(target.stat)
    if value is None:
        return "n/a"
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

    def crowd_seconds(self) -> float:
        """How long the crowd must stay: the kills, at a typical 6 s of recovery each,
        plus the arrivals and a margin."""
        per_kill = self.settle_s + 6.0
        return self.crowd_over_s + 20.0 + self.kills * len(self.roles) * per_kill


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
    crowd: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summaries(self) -> dict[str, dict[str, Summary]]:
        out: dict[str, dict[str, Summary]] = {}
        for role in self.plan.roles:
            kills = [k for k in self.kills if k.role == role]
            if not kills:
                continue
            out[role] = {m: summarise([k.measures.get(m) for k in kills]) for m in MEASURES[role]}
        return out

    @property
    def passed(self) -> bool:
        verdicts = [
            verdict(TARGETS.get((role, m)), s)
            for role, by in self.summaries().items()
            for m, s in by.items()
        ]
        return "FAIL" not in verdicts and bool(self.kills)

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
                    f"  {target or ''!s:<14}{verdict(target, s)}"
                )
        for role, why in self.skipped.items():
            lines.append(f"{role:<10}skipped: {why}")
        if self.crowd:
            lines.append("crowd: " + ", ".join(f"{k} {v}" for k, v in self.crowd.items()))
        lines += [f"note: {n}" for n in self.notes]
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
                        "verdict": verdict(TARGETS.get((role, m)), s),
                    }
                    for m, s in by.items()
                }
                for role, by in self.summaries().items()
            },
            "kills": [asdict(k) for k in self.kills],
            "skipped": self.skipped,
            "crowd": self.crowd,
            "notes": self.notes,
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
    crowd: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

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
                _kill_role(rig, role, report, log)
            _wind_down(rig, report, log)
        except OutOfTime as exc:
            report.notes.append(str(exc))
        except KeyboardInterrupt:
            report.notes.append("interrupted (Ctrl-C): partial results")
    return report


def _rig_up(
    plan: FaultPlan, work: Path, stack: contextlib.ExitStack, log: Callable[[str], None]
) -> Rig:
    deadline = time.monotonic() + plan.max_seconds
    args = ["--audience-workers", str(plan.audience_workers), *plan.server_args]
    server = start_server(work / "data", args)
    stack.callback(server.stop)
    # Saved last (callbacks run in reverse): the log then holds the whole run.
    stack.callback(lambda: (work / "server.log").write_text(server.output(last=5_000)))
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
    log(f"space {space.id} on air; both speakers heard by {len(probes)} probes")
    _start_crowd(rig, stack, log)
    return rig


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        stop(proc)


def _start_crowd(rig: Rig, stack: contextlib.ExitStack, log: Callable[[str], None]) -> None:
    plan = rig.plan
    seconds = f"{plan.crowd_seconds():.0f}"
    for mix, n in (("ogg", plan.ogg_listeners), ("hls", plan.hls_listeners)):
        if n <= 0:
            continue
        out_json = rig.work / f"crowd-{mix}.json"
        out = (rig.work / f"crowd-{mix}.log").open("wb")
        stack.callback(out.close)
        cmd = townhall_command(
            "loadtest", rig.space.ogg_url, "--listeners", str(n), "--mix", mix,
            "--arrival", "ramp", "--over", f"{plan.crowd_over_s:g}", "--duration", seconds,
            "--server-pid", str(rig.server.pid), "--json", str(out_json),
        )  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        rig.crowd.append((mix, proc, out_json))
        stack.callback(stop, proc)
    if rig.crowd:
        log(
            f"crowd: {plan.ogg_listeners} Ogg + {plan.hls_listeners} LL-HLS listeners "
            f"for {seconds} s"
        )
        time.sleep(plan.crowd_over_s)


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


def _kill_role(rig: Rig, role: str, report: FaultReport, log: Callable[[str], None]) -> None:
    if not rig.listed and role != "audience":
        report.skipped[role] = (
            "GET /healthz on the control port lists no processes (a server without the "
            "process model); only audience workers are found, as children on the audience port"
        )
        return
    if not rig.listed:
        report.notes.append(
            "processes found with psutil (children on the audience port), not /healthz"
        )
    for i in range(rig.plan.kills):
        rig.check_time()
        table = _table(rig)
        candidates = [p for p in table if p.role == role]
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
    if role == "stage":
        _measure_stage(rig, kill, t0, limit)
    elif role == "control":
        _measure_control(rig, kill, t0, limit)
    elif role == "recorder":
        _measure_lost(rig, kill, t0)
    elif role == "audience":
        kill.measures["probes_on_worker"] = float(len(on_worker))
        if not on_worker:
            kill.notes.append("no probe was on the killed worker")
        kill.measures["audio_back_s"] = _worst_back(
            on_worker, t0, limit, any_=True, sustain=AUDIBLE_SUSTAIN_FRAMES
        )
    replaced = wait_replaced(rig.lookup, table, victim, max(0.5, t0 + limit - time.monotonic()))
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
    probes: Sequence[OggProbe], t0: float, limit_s: float, any_: bool, sustain: int
) -> float | None:
    """The latest of the probes' first sustained tone(s) after ``t0``, minus ``t0``;
    None if one of them heard nothing within ``limit_s``."""
    deadline = t0 + limit_s
    pending = list(probes)
    worst = 0.0
    while pending and time.monotonic() < deadline:
        for probe in list(pending):
            with probe.lock:
                at = probe.log.first_with(TONES, t0, sustain=sustain, any_=any_)
            if at is not None:
                worst = max(worst, at - t0)
                pending.remove(probe)
        time.sleep(POLL_S)
    return None if pending else worst


def _measure_stage(rig: Rig, kill: Kill, t0: float, limit_s: float) -> None:
    kill.measures["audible_s"] = _worst_back(
        rig.probes, t0, limit_s, any_=True, sustain=AUDIBLE_SUSTAIN_FRAMES
    )
    kill.measures["both_back_s"] = _worst_back(
        rig.probes, t0, limit_s, any_=False, sustain=BACK_SUSTAIN_FRAMES
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
    _measure_lost(rig, kill, t0)
    text = ""
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(f"{rig.server.control_url}/metrics", timeout=REQUEST_TIMEOUT_S * 3).text
    kill.measures["tick_gap_s"] = metric_max(text, TICK_GAP_METRIC)
    if kill.measures["tick_gap_s"] is None:
        kill.notes.append(f"{TICK_GAP_METRIC} not served: the stage clock's gap is n/a")


LOST_BEFORE_S, LOST_AFTER_S = 1.0, 5.0


def _measure_lost(rig: Rig, kill: Kill, t0: float) -> None:
    """Audio windows lost at the worst probe over [kill - 1 s, kill + 5 s]: the frames of
    that span have arrived once another second has passed."""
    t1 = t0 + LOST_AFTER_S
    time.sleep(max(0.0, t1 + 1.0 - time.monotonic()))
    worst = 0
    for probe in rig.probes:
        with probe.lock:
            worst = max(worst, probe.log.lost_windows(TONES, t0 - LOST_BEFORE_S, t1))
    kill.measures["lost_windows"] = float(worst)


def _wind_down(rig: Rig, report: FaultReport, log: Callable[[str], None]) -> None:
    for probe in rig.probes:
        with probe.lock:
            report.notes.append(
                f"{probe.name}: {len(probe.log.connects)} connections, "
                f"{len(probe.log.disconnects)} drops, {len(probe.log.streams)} Ogg streams"
            )
    resp = httpx.post(rig.space.api("/end"), headers=rig.space.host_headers(), timeout=10)
    if resp.status_code != 200:
        report.notes.append(f"End answered {resp.status_code}: {resp.text[:200]}")
    for mix, proc, out_json in rig.crowd:
        try:
            proc.wait(timeout=max(5.0, rig.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop(proc)
        report.crowd.update(_crowd_summary(mix, out_json))
    _recording_holes(rig, report, log)


def _crowd_summary(mix: str, path: Path) -> dict[str, Any]:
    if not path.exists():
        return {f"{mix}": "no report (the load generator did not finish)"}
    body = json.loads(path.read_text())
    total = body.get("results", {}).get("all", {})
    keys = ("listeners", "connected", "failed", "retries", "stalls")
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
