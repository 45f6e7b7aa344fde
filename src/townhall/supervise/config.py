"""The supervisor's bounds and the priorities it gives its children."""

from __future__ import annotations

from dataclasses import dataclass

from townhall.supervise.link import DEFAULT_MAX_BACKLOG_BYTES, DEFAULT_MAX_FRAME_BYTES


@dataclass(frozen=True)
class SupervisorConfig:
    # A process that dies is restarted after ``restart_delay_s``, at most
    # ``max_restarts`` times per ``restart_window_s`` per process name; past that, the
    # next restart waits until the window allows one, so a crash loop cannot eat a core.
    restart_delay_s: float = 0.1
    max_restarts: int = 5
    restart_window_s: float = 60.0
    # Only deaths within this long of a start count toward that bound: a crash loop
    # dies during start-up (imports, binding, a bad state read at start). A process
    # that had been serving longer is restarted at once, however often that happens:
    # with the standby stage a restart costs a fraction of a second of CPU, and a
    # silent Space costs more.
    healthy_uptime_s: float = 3.0
    # End: the stage gets this long to flush and exit before it is killed and the hub
    # publishes ``ChannelEnded`` itself, so End always seals the recording.
    close_stage_timeout_s: float = 2.0
    # A child whose link closed but which is still alive after this is wedged: killed.
    link_lost_grace_s: float = 1.0
    # At shutdown, children get this long after SIGTERM before SIGKILL.
    stop_grace_s: float = 5.0
    # How often the process table and the audience stats reach the control process.
    report_every_s: float = 1.0
    # Connections queued on the control port while its process restarts.
    control_backlog_connections: int = 1024
    # Per child link: the largest frame, and how much may queue before the peer is cut.
    link_max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    link_max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES
    # Absolute nice values: the stage's 20 ms clock outranks everything (below 0 needs
    # root or CAP_SYS_NICE; without it the stage stays at 0), then the API, then disk.
    stage_nice: int = -5
    # Stage processes kept started and idle: a lost or new stage takes one up at once
    # instead of waiting for a fresh interpreter to import aiortc and PyAV.
    standby_stage_processes: int = 1
    control_nice: int = 4
    recorder_nice: int = 6
    # The stage process's clock also asks for the real-time policy (SCHED_FIFO at this
    # priority; 0 = never): nice ranks processes only within one session's scheduling
    # group (autogroup), so any other busy session on the machine (a shell, a build, a
    # neighbour's service) could hold the 20 ms tick back by a scheduler slice or more.
    # Needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO; without them it stays at stage_nice.
    # The kernel's RT throttling (95 % by default) bounds what it could ever take.
    stage_realtime_priority: int = 10
    # A real-time stage thread that runs this long without sleeping is a runaway (the
    # clock sleeps every 20 ms): the kernel stops the process (RLIMIT_RTTIME, as audio
    # servers set it) and the supervisor's standby takes the Space, instead of a
    # spinning thread holding a core away from everything at normal priority.
    stage_realtime_runaway_s: float = 2.0
