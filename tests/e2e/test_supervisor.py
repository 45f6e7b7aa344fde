"""The supervisor with real child processes on real sockets, killed with SIGKILL.

The children are the stand-ins of ``supervise_fakes`` (each role's least behaviour),
so what is tested here is the supervisor: spawning, routing, restarting at a bounded
rate, ending a Space whose stage cannot, and leaving nothing behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.supervise_fakes import DEAF, FAKES, WEDGED, frames
from townhall.audience.framing import StreamOpened
from townhall.config import ServerConfig
from townhall.feed import ChannelEnded, HlsPart, OggHeader
from townhall.supervise.config import SupervisorConfig
from townhall.supervise.hub import CONTROL
from townhall.supervise.messages import (
    AudienceReport,
    CloseStage,
    OpenStage,
    Presence,
    ProcessTable,
    ResyncPresence,
    StageLost,
    StageStarted,
)
from townhall.supervise.supervisor import Supervisor

SPACE = "spaceA"


def config_for(data_dir: Path, **supervisor: Any) -> ServerConfig:
    # The fake stages have no standby mode; the real one is taken up in the fault tests.
    plain = SupervisorConfig(restart_delay_s=0.1, standby_stage_processes=0)
    bounds = dataclasses.replace(plain, **supervisor)
    return ServerConfig(control_port=0, audience_port=0, data_dir=data_dir, supervisor=bounds)


async def until(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


@pytest.fixture
async def supervisor(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Supervisor]:
    bounds = getattr(request, "param", {})
    sup = Supervisor(config_for(tmp_path, **bounds), FAKES)
    await sup.start()
    try:
        yield sup
    finally:
        await sup.stop()


def got(sup: Supervisor, role: str, kind: type) -> list[Any]:
    return [m for m in frames(sup.config.data_dir / f"{role}.frames") if isinstance(m, kind)]


def row(table: ProcessTable, name: str) -> Any:
    return next((p for p in table.processes if p.name == name), None)


def pid_of(sup: Supervisor, name: str) -> int:
    child = sup.slots[name].child
    assert child is not None, f"{name} is not running"
    return child.pid


async def running(sup: Supervisor, name: str, restarts: int) -> int:
    await until(lambda: (s := sup.slots.get(name)) and s.child and s.restarts == restarts)
    return pid_of(sup, name)


def latest_table(sup: Supervisor) -> ProcessTable:
    tables = got(sup, "control", ProcessTable)
    assert tables, "control got no process table"
    return tables[-1]


async def test_control_killed_is_restarted_and_its_port_never_refuses(
    supervisor: Supervisor,
) -> None:
    first = await running(supervisor, "control", 0)
    await until(lambda: got(supervisor, "control", AudienceReport))
    table = latest_table(supervisor)
    roles = {p.role for p in table.processes}
    assert roles == {"supervisor", "control", "recorder", "audience"}
    assert row(table, "supervisor").pid == os.getpid()

    os.kill(first, signal.SIGKILL)
    # While no control process runs, the port still takes connections into its backlog.
    with socket.create_connection(("127.0.0.1", supervisor.config.control_port), timeout=2):
        pass
    second = await running(supervisor, "control", 1)
    assert second != first
    await until(lambda: (r := row(latest_table(supervisor), "control")) and r.pid == second)
    after = row(latest_table(supervisor), "control")
    assert (after.restarts, after.last_exit) == (1, "killed by signal 9 (SIGKILL)")


async def test_a_stage_feeds_the_recorder_and_restarts_numbering_on(
    supervisor: Supervisor,
) -> None:
    await running(supervisor, "control", 0)
    supervisor.receive(CONTROL, OpenStage(SPACE, time.time()))
    name = f"stage:{SPACE}"
    first = await running(supervisor, name, 0)
    await until(lambda: len(got(supervisor, "recorder", HlsPart)) >= 10)
    assert got(supervisor, "recorder", OggHeader)[0].data == b"OpusHead0"
    assert StageStarted(SPACE, first, 0) in got(supervisor, "control", StageStarted)

    os.kill(first, signal.SIGKILL)
    second = await running(supervisor, name, 1)
    lost = await until(lambda: got(supervisor, "control", StageLost))
    assert lost == [StageLost(SPACE, first, "killed by signal 9 (SIGKILL)")]
    assert StageStarted(SPACE, second, 1) in got(supervisor, "control", StageStarted)

    spec_file = supervisor.config.data_dir / f"stage-{SPACE}-1.pickle"
    incarnation, next_part_seq = pickle.loads(
        (await until(spec_file.exists, 5) and spec_file).read_bytes()
    )
    assert incarnation == 1
    await until(lambda: any(p.discontinuity for p in got(supervisor, "recorder", HlsPart)))
    parts = got(supervisor, "recorder", HlsPart)
    cut = next(i for i, p in enumerate(parts) if p.discontinuity)  # the restart's first
    assert next_part_seq == parts[cut - 1].seq + 1 == parts[cut].seq
    seqs = [p.seq for p in parts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "numbering never goes back"
    assert got(supervisor, "recorder", OggHeader)[-1].data == b"OpusHead1"
    table = await until(
        lambda: (r := row(latest_table(supervisor), name)) and r.pid == second and r
    )
    assert (table.restarts, table.last_exit) == (1, "killed by signal 9 (SIGKILL)")


async def test_close_ends_the_channel_through_the_stage(supervisor: Supervisor) -> None:
    supervisor.receive(CONTROL, OpenStage(SPACE, time.time()))
    await running(supervisor, f"stage:{SPACE}", 0)
    await until(lambda: got(supervisor, "recorder", HlsPart))
    supervisor.receive(CONTROL, CloseStage(SPACE))
    ended = await until(lambda: got(supervisor, "recorder", ChannelEnded))
    assert len(ended) == 1
    await until(lambda: f"stage:{SPACE}" not in supervisor.slots)
    assert CloseStage(SPACE) in frames(supervisor.config.data_dir / f"stage-{SPACE}.frames")


@pytest.mark.parametrize("supervisor", [{"restart_delay_s": 2.0}], indirect=True)
async def test_close_with_a_dead_stage_still_ends_the_channel(supervisor: Supervisor) -> None:
    supervisor.receive(CONTROL, OpenStage(SPACE, time.time()))
    pid = await running(supervisor, f"stage:{SPACE}", 0)
    await until(lambda: got(supervisor, "recorder", HlsPart))  # both processes are up
    os.kill(pid, signal.SIGKILL)
    await until(lambda: supervisor.slots[f"stage:{SPACE}"].child is None)
    supervisor.receive(CONTROL, CloseStage(SPACE))
    ended = await until(lambda: got(supervisor, "recorder", ChannelEnded), 1.0)
    assert [e.space_id for e in ended] == [SPACE]
    await asyncio.sleep(2.5)  # the pending restart was called off
    assert f"stage:{SPACE}" not in supervisor.slots
    assert not (supervisor.config.data_dir / f"stage-{SPACE}-1.pickle").exists()


async def test_a_stage_that_ignores_close_is_killed_and_the_channel_ended(
    supervisor: Supervisor,
) -> None:
    space = f"{DEAF}-1"
    supervisor.receive(CONTROL, OpenStage(space, time.time()))
    pid = await running(supervisor, f"stage:{space}", 0)
    await until(lambda: got(supervisor, "recorder", HlsPart))  # both processes are up
    asked = time.monotonic()
    supervisor.receive(CONTROL, CloseStage(space))
    ended = await until(lambda: got(supervisor, "recorder", ChannelEnded), 5.0)
    assert 1.5 < time.monotonic() - asked < 4.0
    assert [e.space_id for e in ended] == [space]
    await until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    await until(lambda: f"stage:{space}" not in supervisor.slots)


async def test_a_child_that_closes_its_link_but_lives_is_killed(supervisor: Supervisor) -> None:
    space = f"{WEDGED}-1"
    supervisor.receive(CONTROL, OpenStage(space, time.time()))
    await running(supervisor, f"stage:{space}", 1)  # killed as wedged, then restarted
    assert supervisor.slots[f"stage:{space}"].last_exit == "killed by signal 9 (SIGKILL)"


@pytest.mark.parametrize("supervisor", [{"max_restarts": 2}], indirect=True)
async def test_the_restart_rate_is_bounded(supervisor: Supervisor) -> None:
    for restarts in (0, 1):
        os.kill(await running(supervisor, "control", restarts), signal.SIGKILL)
    os.kill(await running(supervisor, "control", 2), signal.SIGKILL)
    await until(lambda: supervisor.slots["control"].child is None)
    await asyncio.sleep(2.0)
    slot = supervisor.slots["control"]
    assert (slot.child, slot.restarts) == (None, 2), "a third restart within the window"
    assert slot.pending is not None, "but it is scheduled for when the window allows"
    assert row(supervisor.process_table(), "control").pid == 0


def test_sigterm_stops_every_child_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "control-sends.pickle").write_bytes(
        pickle.dumps([OpenStage("a", time.time()), OpenStage("b", time.time())])
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.supervise_fakes", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # The announcement, with log lines (the workers' connection caps) among it.
        lines = [proc.stdout.readline() for _ in range(12)]
        assert any("admin key:" in line for line in lines), lines
        deadline = time.monotonic() + 20
        children: list[psutil.Process] = []
        while time.monotonic() < deadline and len(children) < 5:
            time.sleep(0.1)  # control, recorder, two stages, one audience worker
            children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5, [c.cmdline() for c in children]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_listener_presence_reaches_control_and_is_resent_on_resync(
    supervisor: Supervisor,
) -> None:
    supervisor.receive(CONTROL, OpenStage(SPACE, time.time()))
    await until(lambda: got(supervisor, "recorder", HlsPart))
    reader, writer = await asyncio.open_connection("127.0.0.1", supervisor.config.audience_port)
    writer.write(f"GET /live/{SPACE}.ogg?sid=listener1 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")

    def opened() -> list[StreamOpened]:
        reports = [p.report for p in got(supervisor, "control", Presence)]
        return [r for r in reports if isinstance(r, StreamOpened) and r.space_id == SPACE]

    first = await until(opened)
    assert len(first) == 1
    supervisor.receive(CONTROL, ResyncPresence())  # as a restarted control process sends
    again = await until(lambda: len(opened()) == 2 and opened())
    assert again[1] == again[0], "the same stream, reported again"
    writer.close()
