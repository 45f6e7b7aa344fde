"""Under siege: one live Space measured with no attack, then under each attack in turn.

    python -m benchmarks siege                       # every attack, about 4 minutes
    python -m benchmarks siege --quick               # shorter attacks, smaller counts
    python -m benchmarks siege --attacks slowloris,hands

One server (a temporary data directory), one Space with the host's tone bot on stage
(440 Hz) and an invited speaker's (660 Hz), whom the host mutes and unmutes all run long.
What a listener and a host go through is measured the same way in every phase:

* ``gap ms``: the stage clock's longest gap between two 20 ms ticks during the phase
  (``townhall_stage_recent_tick_gap_seconds``, its window set to the phase's length);
* ``audio %``: the share of 20 ms windows in which a decoding Ogg listener hears the
  host's 440 Hz (by DFT; a window missing from the stream counts as not heard);
* ``join p50/p99 s``: a legitimate new listener (sign-in, then the Ogg stream, from a
  clean address of its own) until its first 20 ms with the tone, several joins per phase;
* ``host p99 ms``: the host muting the speaker and the speaker unmuting, each about
  once a second (the room's per-person action limit is 2 a second);
* ``RSS +MiB``/``fds +``: the largest growth of any townhall process (the ``/healthz``
  process table, read from ``/proc``) during the phase over its value at the start;
* ``count``: ``listening_now`` in the public Space description against the truth (the
  benchmark's own listeners: those connected, and those within the counter's session
  timeout of leaving), sampled at the end of the phase.

The attackers (``harness/attacks.py``) each run in a process of their own, bounded in
count and time, on loopback addresses of their own; the benchmark stops them by pid.
Between phases the Space must be heard again (recovery), else the phase says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import psutil

from benchmarks.faults import metric_max, percentile
from benchmarks.harness.attacks import SETUP_TIMEOUT_S, AttackOrder, source_address
from benchmarks.harness.metrics import scrape
from benchmarks.harness.probe import OggProbe
from benchmarks.harness.processes import process_table, stop
from benchmarks.harness.server import Server, Space, start_server, townhall_command

HOST_TONE_HZ, GUEST_TONE_HZ = 440.0, 660.0
BASELINE = "baseline"
ATTACKS = (
    BASELINE,
    "idle-spread",
    "idle-one",
    "slowloris",
    "big-headers",
    "get-flood",
    "replay-flood",
    "junk-ws",
    "offer-flood",
    "reactions",
    "hands",
    # Last: forged sessions linger in the count for the counter's session timeout.
    "forged-sids",
)
IDLE_PER_PROCESS = 9_000  # an attacker process's sockets, well under its file limit
MIB = 1024 * 1024
T = TypeVar("T")
TICK_GAP_METRIC = "townhall_stage_recent_tick_gap_seconds"
# Legitimate clients' loopback blocks (attackers use 127.11-127.20 and 127.9.9.9).
STEADY_BLOCK, JOIN_BLOCK, HOST_BLOCK = 2, 3, 4


# -- the plan (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class SiegePlan:
    attacks: tuple[str, ...] = ATTACKS
    attack_s: float = 12.0
    settle_s: float = 2.0
    recover_timeout_s: float = 20.0
    joins: int = 6
    join_timeout_s: float = 10.0
    steady_listeners: int = 9
    host_command_every_s: float = 0.6  # a mute and an unmute: 1.7 actions/s per person
    host_command_timeout_s: float = 5.0
    idle_connections: int = 20_000
    slowloris_connections: int = 500
    big_header_connections: int = 10
    get_flood_connections: int = 50
    replay_connections: int = 100
    junk_ws_sockets: int = 200
    forged_sid_connections: int = 20
    reaction_tokens: int = 200
    hand_tokens: int = 1_000
    max_rss_growth_mib: float = 64.0
    count_tolerance: float = 0.02
    session_timeout_s: float = 30.0
    server_args: tuple[str, ...] = ()

    @classmethod
    def quick(cls, **kw: Any) -> SiegePlan:
        small = dict(
            attack_s=6.0, joins=3, idle_connections=4_000, slowloris_connections=100,
            get_flood_connections=20, replay_connections=40, junk_ws_sockets=50,
            reaction_tokens=50, hand_tokens=200,
        )  # fmt: skip
        return cls(**{**small, **kw})


def parse_attacks(text: str) -> tuple[str, ...]:
    """``a,b`` → the attacks in the benchmark's order, with the baseline first; raises
    ValueError naming an unknown one."""
    asked = {a.strip() for a in text.split(",") if a.strip()}
    if unknown := sorted(asked - set(ATTACKS)):
        raise ValueError(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    return tuple(a for a in ATTACKS if a in asked or a == BASELINE)


def idle_target(print_config: str, ceiling: int) -> int:
    """Idle connections to open: the control process's connection cap from
    ``townhall serve --print-config`` (a ``max_connections`` key in ``[control]``), if it
    sets one (0 means derived from the process's file limit) and it is lower, else
    ``ceiling``."""
    table = ""
    for line in print_config.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            table = line[1:-1]
        elif table == "control" and "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            if key == "max_connections":
                with contextlib.suppress(ValueError):
                    cap = int(value.replace("_", ""))
                    return min(ceiling, cap) if cap > 0 else ceiling
    return ceiling


def attack_orders(
    plan: SiegePlan, attack: str, ports: tuple[int, int], space_id: str, hls_path: str, token: str
) -> list[AttackOrder]:
    """The attacker processes of one phase (none for the baseline)."""
    if attack == BASELINE:
        return []
    counts = {
        "idle-spread": plan.idle_connections,
        "idle-one": plan.idle_connections,
        "slowloris": plan.slowloris_connections,
        "big-headers": plan.big_header_connections,
        "get-flood": plan.get_flood_connections,
        "replay-flood": plan.replay_connections,
        "junk-ws": plan.junk_ws_sockets,
        "offer-flood": 100,
        "forged-sids": plan.forged_sid_connections,
        "reactions": plan.reaction_tokens,
        "hands": plan.hand_tokens,
    }
    count = counts[attack]
    shards = max(1, math.ceil(count / IDLE_PER_PROCESS)) if attack.startswith("idle") else 1
    base = AttackOrder(
        attack=attack, seconds=plan.attack_s, control_port=ports[0], audience_port=ports[1],
        space_id=space_id, hls_path=hls_path, token=token, one_address=attack == "idle-one",
    )  # fmt: skip
    per = math.ceil(count / shards)
    return [
        AttackOrder(**{**asdict(base), "count": min(per, count - i * per), "shard": i})
        for i in range(shards)
    ]


# -- figures and verdicts (pure) -------------------------------------------------------------


def truth_range(
    sessions: Sequence[tuple[float, float | None]], at: float, timeout_s: float, lag_s: float = 2.0
) -> tuple[int, int]:
    """How many of ``sessions`` ((opened, closed or None), monotonic s) a correct count
    shows at ``at``: surely (``lo``: open for ``lag_s`` already, the count's reporting
    delay, or closed less than the session timeout minus the lag ago) and at most
    (``hi``: open, or closed within the timeout plus the lag)."""
    lo = sum(
        1
        for opened, closed in sessions
        if opened <= at - lag_s and (closed is None or closed >= at - timeout_s + lag_s)
    )
    hi = sum(
        1
        for opened, closed in sessions
        if opened <= at and (closed is None or closed >= at - timeout_s - lag_s)
    )
    return lo, hi


def anonymous_clients(plan: SiegePlan, attack: str) -> int:
    """Attacking clients a correct count may show: a client polling the playlist from its
    own address is an anonymous listener (docs/counting.md), once, however many session
    ids it forges; the forged ids themselves must add nothing."""
    return plan.forged_sid_connections if attack == "forged-sids" else 0


def count_holds(shown: int | None, lo: int, hi: int, tolerance: float) -> bool:
    """The count shown is within ``tolerance`` of the nearest value in [lo, hi]."""
    if shown is None:
        return False
    nearest = min(max(shown, lo), hi)
    return abs(shown - nearest) <= tolerance * max(nearest, 1)


@dataclass
class Figures:
    attack: str
    stage_gap_s: float | None = None
    audio_share: float | None = None
    join_s: list[float | None] = field(default_factory=list)  # None: never heard
    host_s: list[float] = field(default_factory=list)  # a failed command: its time taken
    host_failed: int = 0
    rss_growth_bytes: dict[str, int] = field(default_factory=dict)  # process → growth
    fd_growth: dict[str, int] = field(default_factory=dict)
    count_shown: int | None = None
    truth: tuple[int, int] = (0, 0)
    recovered_s: float | None = 0.0
    attacker: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def join_percentile(self, q: float, timeout_s: float) -> float | None:
        """A join that never heard the tone counts as the join timeout."""
        if not self.join_s:
            return None
        return percentile([timeout_s if j is None else j for j in self.join_s], q)

    @property
    def host_p99_s(self) -> float | None:
        return percentile(self.host_s, 99) if self.host_s else None

    @property
    def worst_rss(self) -> tuple[str, int]:
        return max(self.rss_growth_bytes.items(), key=lambda kv: kv[1], default=("-", 0))

    @property
    def worst_fds(self) -> tuple[str, int]:
        return max(self.fd_growth.items(), key=lambda kv: kv[1], default=("-", 0))


@dataclass(frozen=True)
class Targets:
    audio_share: float = 0.995
    stage_gap_s: float = 0.100
    join_p99_s: float = 2.0
    host_p99_s: float = 0.500
    max_rss_growth_mib: float = 64.0
    count_tolerance: float = 0.02


def verdicts(f: Figures, t: Targets, join_timeout_s: float) -> dict[str, bool | None]:
    """Per target: True (holds), False (missed), None (not measured)."""
    join_p99 = f.join_percentile(99, join_timeout_s)
    return {
        "audio": None if f.audio_share is None else f.audio_share >= t.audio_share,
        "gap": None if f.stage_gap_s is None else f.stage_gap_s < t.stage_gap_s,
        "join": None if join_p99 is None else join_p99 < t.join_p99_s,
        "host": None if f.host_p99_s is None else f.host_p99_s < t.host_p99_s,
        "memory": f.worst_rss[1] <= t.max_rss_growth_mib * MIB,
        "count": count_holds(f.count_shown, *f.truth, t.count_tolerance),
    }


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:.0f}"


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _mark(ok: bool | None) -> str:
    return {True: " ", False: "!", None: "?"}[ok]


@dataclass
class SiegeReport:
    plan: SiegePlan
    targets: Targets
    phases: list[Figures] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and all(
            v is not False
            for f in self.phases
            for v in verdicts(f, self.targets, self.plan.join_timeout_s).values()
        )

    def table(self) -> str:
        t = self.targets
        head = (
            f"{'attack':<13}{'gap ms':>8}{'audio %':>9}{'join p50/p99 s':>16}{'host p99 ms':>13}"
            f"{'RSS +MiB':>10}{'fds +':>7}{'count/truth':>14}  missed"
        )
        lines = [head]
        for f in self.phases:
            v = verdicts(f, t, self.plan.join_timeout_s)
            audio = "n/a" if f.audio_share is None else f"{f.audio_share * 100:.1f}"
            joins = (
                f"{_s(f.join_percentile(50, self.plan.join_timeout_s))}/"
                f"{_s(f.join_percentile(99, self.plan.join_timeout_s))}"
            )
            lo, hi = f.truth
            truth = f"{lo}" if lo == hi else f"{lo}-{hi}"
            count = f"{'n/a' if f.count_shown is None else f.count_shown}/{truth}"
            missed = [k for k, ok in v.items() if ok is False]
            missed += [f"{k}?" for k, ok in v.items() if ok is None]
            lines.append(
                f"{f.attack:<13}{_ms(f.stage_gap_s):>7}{_mark(v['gap'])}"
                f"{audio:>8}{_mark(v['audio'])}{joins:>15}{_mark(v['join'])}"
                f"{_ms(f.host_p99_s):>12}{_mark(v['host'])}"
                f"{f.worst_rss[1] / MIB:>9.1f}{_mark(v['memory'])}{f.worst_fds[1]:>7}"
                f"{count:>13}{_mark(v['count'])}  {' '.join(missed) or '-'}"
            )
        lines.append(
            f"targets: gap < {t.stage_gap_s * 1e3:.0f} ms, audio >= {t.audio_share * 100:.1f} %, "
            f"join p99 < {t.join_p99_s:g} s, host p99 < {t.host_p99_s * 1e3:.0f} ms, "
            f"RSS growth <= {t.max_rss_growth_mib:g} MiB per process, "
            f"count within {t.count_tolerance * 100:g} % ('!' missed, '?' not measured)"
        )
        for f in self.phases:
            lines += [f"{f.attack}: {line}" for line in _phase_notes(f)]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"ERROR: {self.error}"] if self.error else []
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": asdict(self.plan),
            "targets": asdict(self.targets),
            "phases": [
                {
                    **asdict(f),
                    "host_p99_s": f.host_p99_s,
                    "join_p50_s": f.join_percentile(50, self.plan.join_timeout_s),
                    "join_p99_s": f.join_percentile(99, self.plan.join_timeout_s),
                    "verdicts": verdicts(f, self.targets, self.plan.join_timeout_s),
                }
                for f in self.phases
            ],
            "notes": self.notes,
            "error": self.error,
            "passed": self.passed,
        }


def _phase_notes(f: Figures) -> list[str]:
    out = []
    for a in f.attacker:
        keys = ("opened", "failed", "open_at_end", "requests", "bytes_sent")
        said = ", ".join(f"{k} {a[k]}" for k in keys if a.get(k))
        statuses = ", ".join(f"{k} x{v}" for k, v in sorted(a.get("statuses", {}).items()))
        errors = ", ".join(f"{k} x{v}" for k, v in a.get("errors", {}).items())
        out.append(
            "attacker: "
            + "; ".join(x for x in (said, statuses and f"answers {statuses}", errors) if x)
        )
    if f.host_failed:
        out.append(f"host commands failed or timed out: {f.host_failed} of {len(f.host_s)}")
    if any(j is None for j in f.join_s):
        out.append(f"joins that never heard the tone: {sum(j is None for j in f.join_s)}")
    name, grew = f.worst_rss
    if grew >= MIB:
        out.append(f"largest RSS growth: {name} +{grew / MIB:.1f} MiB")
    name, fds = f.worst_fds
    if fds >= 20:
        out.append(f"largest fd growth: {name} +{fds}")
    if f.recovered_s is None:
        out.append("the Space was not heard again after the attack stopped")
    elif f.recovered_s > 1.0:
        out.append(f"heard again {f.recovered_s:.1f} s after the attack stopped")
    return out + f.notes


# -- the measuring clients ------------------------------------------------------------------


@dataclass
class Sessions:
    """The benchmark's own listener sessions: (opened, closed) monotonic times."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    spans: list[list[float | None]] = field(default_factory=list)

    def opened(self) -> int:
        with self.lock:
            self.spans.append([time.monotonic(), None])
            return len(self.spans) - 1

    def closed(self, i: int) -> None:
        with self.lock:
            self.spans[i][1] = time.monotonic()

    def snapshot(self) -> list[tuple[float, float | None]]:
        with self.lock:
            return [(float(s[0] or 0.0), s[1]) for s in self.spans]


def sign_in(server: Server, space: Space, source: str, timeout_s: float) -> str | None:
    """A listener's session id from the sign-in, or None if it failed."""
    try:
        with httpx.Client(
            transport=httpx.HTTPTransport(local_address=source), timeout=timeout_s
        ) as c:
            resp = c.post(space.api("/listeners"), json={})
    except httpx.HTTPError:
        return None
    if resp.status_code != 201:
        return None
    sid = resp.json().get("session_id")
    return str(sid) if sid else None


def _with_sid(url: str, sid: str | None) -> str:
    return f"{url}?sid={sid}" if sid else url


# The guest bot's key to its link (``townhall speak --holder``): its own commands show it.
GUEST_HOLDER = "siege-guest-holder"


class HostCommands:
    """The host mutes the speaker, and the speaker unmutes (only a speaker may unmute
    themselves), one each per ``every_s`` from a thread, under the room's per-person
    action limit; each command's (sent, seconds, ok) is kept."""

    def __init__(
        self, space: Space, target: str, target_token: str, every_s: float, timeout_s: float
    ) -> None:
        self.space, self.target, self.target_token = space, target, target_token
        self.every_s, self.timeout_s = every_s, timeout_s
        self.lock = threading.Lock()
        self.done: list[tuple[float, float, bool]] = []
        self.failures: dict[str, int] = {}  # why → how often, over the run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-commands", daemon=True)

    def start(self) -> HostCommands:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s * 2 + 1)

    def between(self, t0: float, t1: float) -> list[tuple[float, float, bool]]:
        with self.lock:
            return [d for d in self.done if t0 <= d[0] <= t1]

    def _run(self) -> None:
        transport = httpx.HTTPTransport(local_address=source_address(HOST_BLOCK, 0))
        with httpx.Client(transport=transport, timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                self._command(client, "mute", self.space.host_token)
                self._stop.wait(max(0.0, started + self.every_s / 2 - time.monotonic()))
                self._command(client, "unmute", self.target_token)
                self._stop.wait(max(0.0, started + self.every_s - time.monotonic()))

    def _command(self, client: httpx.Client, name: str, token: str) -> None:
        sent = time.monotonic()
        try:
            resp = client.post(
                self.space.api("/commands"),
                json={"command": name, "target": self.target},
                headers={"Authorization": f"Bearer {token}", "X-Townhall-Holder": GUEST_HOLDER},
            )
            ok = resp.status_code == 200
            why = "" if ok else f"{name}: {resp.status_code} {resp.text[:120]}"
        except httpx.HTTPError as exc:
            ok, why = False, f"{name}: {type(exc).__name__}"
        took = time.monotonic() - sent
        with self.lock:
            self.done.append((sent, took, ok))
            if why:
                self.failures[why] = self.failures.get(why, 0) + 1


class SteadyListeners:
    """Honest Ogg listeners from addresses of their own, each signed in, reading and
    dropping bytes; reconnects a dropped one. Their sessions are the count's truth."""

    def __init__(self, server: Server, space: Space, n: int, sessions: Sessions) -> None:
        self.server, self.space, self.n, self.sessions = server, space, n, sessions
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"steady-{i}", daemon=True)
            for i in range(n)
        ]
        self._socks: list[Any] = []

    def start(self) -> SteadyListeners:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for s in list(self._socks):
            with contextlib.suppress(OSError):
                s.shutdown(2)
        for t in self._threads:
            t.join(3)

    def _run(self, i: int) -> None:
        source = source_address(STEADY_BLOCK, i)
        sid = sign_in(self.server, self.space, source, 5.0)
        url = urlsplit(_with_sid(self.space.ogg_url, sid))
        target = url.path + (f"?{url.query}" if url.query else "")
        while not self._stop.is_set():
            try:
                with socket.create_connection(
                    (url.hostname, url.port), 3.0, source_address=(source, 0)
                ) as sock:
                    self._socks.append(sock)
                    sock.settimeout(10.0)
                    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    first = sock.recv(65_536)
                    if b" 200 " not in first.split(b"\r\n", 1)[0] + b" ":
                        raise OSError("not 200")
                    span = self.sessions.opened() if sid else None
                    try:
                        while not self._stop.is_set() and sock.recv(65_536):
                            pass
                    finally:
                        if span is not None:
                            self.sessions.closed(span)
                        self._socks.remove(sock)
            except OSError:
                pass
            self._stop.wait(1.0)


def join_once(
    server: Server, space: Space, index: int, timeout_s: float, sessions: Sessions
) -> float | None:
    """A new listener from a clean address: sign in, open the Ogg stream, and the seconds
    until its first 20 ms carrying the host's tone; None if none within ``timeout_s``."""
    source = source_address(JOIN_BLOCK, index)
    t0 = time.monotonic()
    sid = sign_in(server, space, source, min(3.0, timeout_s))
    probe = OggProbe(
        _with_sid(space.ogg_url, sid),
        (HOST_TONE_HZ,),
        name=f"join{index}",
        seed=index,
        source_address=source,
    ).start()
    span = sessions.opened() if sid else None
    heard: float | None = None
    try:
        while time.monotonic() - t0 < timeout_s:
            with probe.lock:
                at = probe.log.first_with((HOST_TONE_HZ,), t0, sustain=1)
            if at is not None:
                heard = at - t0
                break
            time.sleep(0.02)
    finally:
        probe.stop()
        if span is not None:
            sessions.closed(span)
    return heard


class ProcessWatch:
    """RSS and open file descriptors of every townhall process, sampled from a thread;
    named by the ``/healthz`` process table (the pid where it is not listed)."""

    def __init__(self, server: Server, every_s: float = 0.5) -> None:
        self.server, self.every_s = server, every_s
        self.lock = threading.Lock()
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-watch", daemon=True)

    def start(self) -> ProcessWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)

    def growth(self, t0: float, t1: float) -> tuple[dict[str, int], dict[str, int]]:
        """Per process: the largest RSS and fd count in [t0, t1] minus the last sample
        before t0."""
        with self.lock:
            before = [s for at, s in self.samples if at <= t0]
            during = [s for at, s in self.samples if t0 < at <= t1]
        if not before or not during:
            return {}, {}
        base = before[-1]
        rss, fds = {}, {}
        for name, (rss0, fds0) in base.items():
            seen = [s[name] for s in during if name in s]
            if seen:
                rss[name] = max(r for r, _ in seen) - rss0
                fds[name] = max(f for _, f in seen) - fds0
        return rss, fds

    def _refresh_names(self) -> None:
        table = process_table(self.server.control_url, timeout_s=1.0)
        if table:
            self.names = {p.pid: p.name for p in table if p.pid > 0}

    def _run(self) -> None:
        last_names = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_names > 3.0:
                self._refresh_names()
                last_names = time.monotonic()
            sample: dict[str, tuple[int, int]] = {}
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.server.pid)
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        name = self.names.get(p.pid, f"pid{p.pid}")
                        sample[name] = (p.memory_info().rss, p.num_fds())
            with self.lock:
                self.samples.append((time.monotonic(), sample))
                del self.samples[:-2000]
            self._stop.wait(self.every_s)


# -- running it ----------------------------------------------------------------------------


@dataclass
class Rig:
    plan: SiegePlan
    server: Server
    space: Space
    probe: OggProbe
    host: HostCommands
    watch: ProcessWatch
    sessions: Sessions
    junk_token: str
    offer_token: str
    idle_count: int
    joins_made: int = 0


def run_siege(plan: SiegePlan, log: Callable[[str], None] = print) -> SiegeReport:
    targets = Targets(
        max_rss_growth_mib=plan.max_rss_growth_mib, count_tolerance=plan.count_tolerance
    )
    report = SiegeReport(plan, targets)
    with contextlib.ExitStack() as stack:
        try:
            rig = _rig_up(plan, stack, log)
            for attack in plan.attacks:
                figures = _phase(rig, attack, log)
                report.phases.append(figures)
            report.notes += [
                f"host command failed {n}x: {why}" for why, n in rig.host.failures.items()
            ]
            tracebacks = rig.server.tracebacks()
            if tracebacks:
                report.notes.append(f"the server logged {len(tracebacks)} tracebacks")
                report.notes += [f"server log: {line}" for line in _traceback_heads(rig.server)]
        except KeyboardInterrupt:
            report.error = "interrupted: partial results"
        except Exception as exc:  # the partial results are worth printing
            import traceback

            traceback.print_exc()
            report.error = f"stopped by {type(exc).__name__}: {exc}"[:500]
    return report


def _traceback_heads(server: Server, most: int = 8) -> list[str]:
    """The last line of each distinct traceback in the server's log (the exception)."""
    lines = list(server.log)
    seen: dict[str, None] = {}
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            if j < len(lines):
                seen[lines[j][:160]] = None
    return list(seen)[:most]


def _rig_up(plan: SiegePlan, stack: contextlib.ExitStack, log: Callable[[str], None]) -> Rig:
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="townhall-siege-")))
    window = f"stage.tick_gap_window_s={plan.attack_s:g}"
    printed = subprocess.run(
        townhall_command("serve", "--print-config", *plan.server_args),
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    server = start_server(work / "data", ["--set", window, *plan.server_args])
    stack.callback(server.stop)
    log(f"server pid {server.pid}: {server.control_url} {server.audience_url}")
    space = _retried(lambda: server.create_space_sync("siege benchmark"))
    _retried(space.start_sync)
    procs: list[subprocess.Popen[bytes]] = []
    stack.callback(_stop_all, procs)
    guest = _invite(space, "speaker", "guest")
    bots: tuple[tuple[str, float, list[str]], ...] = (
        (space.host_link, HOST_TONE_HZ, []),
        # The guest's link is theirs alone: their unmutes show the same holder key.
        (guest["link"], GUEST_TONE_HZ, ["--holder", GUEST_HOLDER]),
    )
    for link, tone, extra in bots:
        procs.append(
            subprocess.Popen(
                townhall_command("speak", link, "--tone", f"{tone:g}", *extra),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    space.wait_program_sync()
    sessions = Sessions()
    # That wait polled the playlist: an anonymous listener for the session timeout.
    sessions.closed(sessions.opened())
    guest_id = _wait_on_stage(space, "guest", plan.recover_timeout_s)
    sid = sign_in(server, space, source_address(STEADY_BLOCK, 250), 5.0)
    probe = OggProbe(
        _with_sid(space.ogg_url, sid), (HOST_TONE_HZ,), name="probe",
        source_address=source_address(STEADY_BLOCK, 250),
    ).start()  # fmt: skip
    stack.callback(probe.stop)
    if sid:
        span = sessions.opened()
        stack.callback(sessions.closed, span)
    steady = SteadyListeners(server, space, plan.steady_listeners, sessions).start()
    stack.callback(steady.stop)
    host = HostCommands(
        space, guest_id, guest["token"], plan.host_command_every_s, plan.host_command_timeout_s
    ).start()
    stack.callback(host.stop)
    watch = ProcessWatch(server).start()
    stack.callback(watch.stop)
    junk = _invite(space, "speaker", "junk")["token"]
    offerer = _invite(space, "speaker", "offerer")["token"]
    rig = Rig(
        plan, server, space, probe, host, watch, sessions, junk, offerer,
        idle_target(printed, plan.idle_connections),
    )  # fmt: skip
    if _heard_again(rig, time.monotonic(), plan.recover_timeout_s) is None:
        raise RuntimeError("the probe never heard the host:\n" + server.output())
    time.sleep(2.0)  # the steady listeners are counted
    log(f"space {space.id} on air: host 440 Hz, guest 660 Hz, {plan.steady_listeners + 1} "
        f"listeners; idle attack up to {rig.idle_count} connections")  # fmt: skip
    return rig


def _retried(call: Callable[[], T], attempts: int = 3) -> T:
    """A set-up call, tried again when a busy machine times it out."""
    for _ in range(attempts - 1):
        with contextlib.suppress(httpx.TimeoutException):
            return call()
    return call()


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        stop(proc)


def _invite(space: Space, role: str, name: str) -> dict[str, str]:
    resp = httpx.post(
        space.api("/invite"), json={"role": role, "name": name},
        headers=space.host_headers(), timeout=10,
    )  # fmt: skip
    resp.raise_for_status()
    body: dict[str, str] = resp.json()
    return body


def _wait_on_stage(space: Space, name: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            room = httpx.get(space.api("/room"), headers=space.host_headers(), timeout=5).json()
            for seat in room.get("stage", []):
                if seat.get("name") == name and seat.get("live"):
                    return str(seat["id"])
        time.sleep(0.2)
    raise RuntimeError(f"{name} never went live on stage")


def _heard_again(rig: Rig, after: float, timeout_s: float) -> float | None:
    deadline = after + timeout_s
    while time.monotonic() < deadline:
        with rig.probe.lock:
            at = rig.probe.log.first_with((HOST_TONE_HZ,), after, sustain=5)
        if at is not None:
            return at
        time.sleep(0.1)
    return None


def _phase(rig: Rig, attack: str, log: Callable[[str], None]) -> Figures:
    plan, space = rig.plan, rig.space
    figures = Figures(attack)
    ports = (_port(rig.server.control_url), _port(rig.server.audience_url))
    token = rig.offer_token if attack == "offer-flood" else rig.junk_token
    hls_path = "/" + space.hls_url.split("/", 3)[3]
    orders = attack_orders(plan, attack, ports, space.id, hls_path, token)
    if attack.startswith("idle"):
        orders = attack_orders(
            SiegePlan(**{**asdict(plan), "idle_connections": rig.idle_count}),
            attack, ports, space.id, hls_path, token,
        )  # fmt: skip
    attackers = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.harness.attacks", json.dumps(asdict(o))],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for o in orders
    ]
    try:
        for proc in attackers:
            if not _ready(proc, SETUP_TIMEOUT_S):
                figures.notes.append("an attacker was not ready in time")
        time.sleep(0.6)  # a process-watch sample just before the attack
        t0 = time.monotonic()
        joins = _joins(rig, t0, plan.attack_s)
        time.sleep(max(0.0, t0 + plan.attack_s - 0.5 - time.monotonic()))
        figures.count_shown = _count(space)
        lo, hi = truth_range(rig.sessions.snapshot(), time.monotonic(), plan.session_timeout_s)
        figures.truth = (lo, hi + anonymous_clients(plan, attack))
        time.sleep(max(0.0, t0 + plan.attack_s - time.monotonic()))
        t1 = time.monotonic()
        figures.stage_gap_s = metric_max(_metrics(rig.server), TICK_GAP_METRIC)
        for j in joins:
            j.join(plan.join_timeout_s + 5)
        figures.join_s = [j.result for j in joins]
    finally:
        for proc in attackers:
            figures.attacker += _attacker_outcome(proc, plan.attack_s)
    # Frames of the attack's last second arrive once the next burst has been written.
    time.sleep(1.0)
    with rig.probe.lock:
        lost = rig.probe.log.lost_windows((HOST_TONE_HZ,), t0, t1)
    figures.audio_share = max(0.0, 1.0 - lost / max(1, round((t1 - t0) / 0.02)))
    done = rig.host.between(t0, t1)
    figures.host_s = [took for _, took, _ in done]
    figures.host_failed = sum(1 for *_, ok in done if not ok)
    figures.rss_growth_bytes, figures.fd_growth = rig.watch.growth(t0, time.monotonic())
    stopped = time.monotonic()
    back = _heard_again(rig, stopped, plan.recover_timeout_s)
    figures.recovered_s = None if back is None else max(0.0, back - stopped)
    log(_phase_line(figures, plan))
    time.sleep(plan.settle_s)
    return figures


def _phase_line(f: Figures, plan: SiegePlan) -> str:
    audio = "n/a" if f.audio_share is None else f"{f.audio_share * 100:.1f} %"
    return (
        f"{f.attack}: gap {_ms(f.stage_gap_s)} ms, audio {audio}, join p99 "
        f"{_s(f.join_percentile(99, plan.join_timeout_s))} s, host p99 {_ms(f.host_p99_s)} ms, "
        f"count {f.count_shown}/{f.truth}"
    )


class _Join(threading.Thread):
    def __init__(self, rig: Rig, index: int, start_at: float) -> None:
        super().__init__(name=f"join-{index}", daemon=True)
        self.rig, self.index, self.start_at = rig, index, start_at
        self.result: float | None = None

    def run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        rig = self.rig
        self.result = join_once(
            rig.server, rig.space, self.index, rig.plan.join_timeout_s, rig.sessions
        )


def _joins(rig: Rig, t0: float, attack_s: float) -> list[_Join]:
    """Joins spread over the attack, from its second second to two seconds before its end."""
    n = rig.plan.joins
    span = max(0.0, attack_s - 3.0)
    joins = []
    for k in range(n):
        joins.append(_Join(rig, rig.joins_made, t0 + 1.0 + span * k / max(1, n)))
        rig.joins_made += 1
    for j in joins:
        j.start()
    return joins


def _attacker_outcome(proc: subprocess.Popen[str], attack_s: float) -> list[dict[str, Any]]:
    try:
        out, _ = proc.communicate(timeout=attack_s + 20)
    except subprocess.TimeoutExpired:
        stop(proc)
        return [{"attack": "?", "errors": {"did not stop in time; killed": 1}}]
    with contextlib.suppress(ValueError):
        return [json.loads(out.strip().splitlines()[-1])]
    return [{"attack": "?", "errors": {f"exit {proc.returncode}, no report": 1}}]


def _ready(proc: subprocess.Popen[str], timeout_s: float) -> bool:
    """Until the attacker says ``ready`` (its set-up done); False if it did not."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return bool(ready) and proc.stdout.readline().strip() == "ready"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _count(space: Space) -> int | None:
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
        transport = httpx.HTTPTransport(local_address=source_address(HOST_BLOCK, 1))
        with httpx.Client(transport=transport, timeout=5.0) as c:
            return int(c.get(space.api()).json()["room"]["listening_now"])
    return None


def _metrics(server: Server) -> str:
    """``/metrics`` (with the admin key), or "" while the server does not answer."""
    with contextlib.suppress(httpx.HTTPError):
        return scrape(server.control_url, server.admin_key, timeout_s=5.0)
    return ""
