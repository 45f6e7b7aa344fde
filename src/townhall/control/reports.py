"""What the other processes last told the control plane, for ``/healthz`` and ``/metrics``.

The hub sends a ``ProcessTable`` and an ``AudienceReport`` about once a second and a
``RecordingStatus`` whenever a recording changes; the control plane keeps only the
latest of each (a sealed recording is forgotten, its write errors stay counted).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from townhall.audience.plane import AudienceStats
from townhall.supervise.messages import ProcessInfo, RecordingStatus


@dataclass
class Reports:
    processes: tuple[ProcessInfo, ...] = ()
    audience: AudienceStats = field(default_factory=lambda: AudienceStats(()))
    # Recordings not sealed yet, by Space.
    recordings: dict[str, RecordingStatus] = field(default_factory=dict)
    # Over every recording this process heard of, the sealed ones included.
    recording_write_errors: int = 0
    pid: int = field(default_factory=os.getpid)
    started_at_unix_s: float = field(default_factory=time.time)

    def recording_changed(self, status: RecordingStatus) -> None:
        before = self.recordings.get(status.space_id)
        self.recording_write_errors += max(
            0, status.write_errors - (before.write_errors if before else 0)
        )
        if status.state == "sealed":
            self.recordings.pop(status.space_id, None)
        else:
            self.recordings[status.space_id] = status

    def healthz(self) -> dict[str, object]:
        """Every process of this server, this one listed even before the first table."""
        processes = list(self.processes)
        if not any(p.role == "control" for p in processes):
            processes.insert(
                0, ProcessInfo("control", "control", self.pid, self.started_at_unix_s, 0)
            )
        return {
            "status": "ok",
            "processes": [
                {
                    "role": p.role,
                    "name": p.name,
                    "pid": p.pid,
                    "started_at": p.started_at_unix_s,
                    "restarts": p.restarts,
                    "last_exit": p.last_exit,
                }
                for p in processes
            ],
        }
