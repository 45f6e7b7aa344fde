"""The servers townhall is measured against, each started from a generated config in a
temp dir, pinned to a core, and stopped on exit: Icecast2 and nginx; and wrk, the
request-rate client.

Also the Icecast source: a thread that reads townhall's Ogg stream and sends the same
bytes to Icecast as an HTTP PUT source (Icecast 2.4), so both serve one program.
"""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness.processes import free_port, pinned, serving
from townhall.loadtest.wire import parse_target

MISSING_HINT = "make deps-bench (as root) installs icecast2, nginx and wrk"
SOURCE_PASSWORD = "bench-source"


def require(*tools: str) -> dict[str, str]:
    found = {tool: shutil.which(tool) for tool in tools}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise SystemExit(f"the benchmark needs {', '.join(missing)}: {MISSING_HINT}")
    return {tool: str(path) for tool, path in found.items()}


# -- Icecast ----------------------------------------------------------------------------------
def icecast_config(port: int, workdir: Path, max_clients: int) -> str:
    return f"""<icecast>
  <limits>
    <clients>{max_clients}</clients><sources>2</sources>
    <queue-size>524288</queue-size><burst-size>8192</burst-size>
    <client-timeout>30</client-timeout><header-timeout>15</header-timeout>
    <source-timeout>10</source-timeout>
  </limits>
  <authentication>
    <source-password>{SOURCE_PASSWORD}</source-password>
    <admin-user>admin</admin-user><admin-password>{SOURCE_PASSWORD}</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>0</fileserve>
  <paths>
    <basedir>{workdir}</basedir><logdir>{workdir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging><errorlog>error.log</errorlog><loglevel>2</loglevel></logging>
  <security><chroot>0</chroot>
    <changeowner><user>icecast2</user><group>icecast</group></changeowner>
  </security>
</icecast>
"""


@contextlib.contextmanager
def icecast(cpu: int, max_clients: int) -> Iterator[tuple[int, int]]:
    """Yields ``(pid, port)`` of a running Icecast."""
    port = free_port()
    # Its own dir right under /tmp: Icecast drops to the icecast2 user, which must reach
    # it (a TemporaryDirectory nested in another is 0700 and makes it reset sources).
    workdir = Path(tempfile.mkdtemp(prefix="townhall-icecast-"))
    workdir.chmod(0o777)
    conf = workdir / "icecast.xml"
    conf.write_text(icecast_config(port, workdir, max_clients))
    try:
        with serving([require("icecast2")["icecast2"], "-c", str(conf)], port, cpu) as pid:
            yield pid, port
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class OggRelay(threading.Thread):
    """Reads an Ogg stream and PUTs the same bytes to an Icecast mount, until stopped."""

    def __init__(self, source_url: str, icecast_port: int, mount: str) -> None:
        super().__init__(name="icecast-source", daemon=True)
        self.source, self.port, self.mount = parse_target(source_url), icecast_port, mount
        self.stopped = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        side = "townhall source"
        try:
            with self._open_source() as src:
                side = "Icecast mount"
                with self._open_mount() as dst:
                    self._pump(src, dst)
        except OSError as exc:
            self.error = OSError(f"{side}: {exc}")

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        # Chunked, as Icecast's own PUT sources (and curl -T -) send an endless body.
        while not self.stopped.is_set():
            data = src.recv(65536)
            if not data:
                return
            dst.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def _open_source(self) -> socket.socket:
        s = socket.create_connection((self.source.host, self.source.port), 5)
        s.sendall(
            f"GET {self.source.path} HTTP/1.1\r\nHost: {self.source.host_header}\r\n\r\n".encode()
        )
        head = _read_head(s)
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise OSError(f"source GET failed: {head[:80]!r}")
        return s

    def _open_mount(self) -> socket.socket:
        auth = base64.b64encode(f"source:{SOURCE_PASSWORD}".encode()).decode()
        s = socket.create_connection(("127.0.0.1", self.port), 5)
        s.sendall(
            f"PUT {self.mount} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Basic {auth}\r\nContent-Type: application/ogg\r\n"
            "Ice-Public: 0\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        head = _read_head(s)
        if b" 100 " not in head and b" 200 " not in head:
            raise OSError(f"Icecast refused the source: {head[:120]!r}")
        return s


def _read_head(s: socket.socket) -> bytes:
    # Reads byte-wise so no body byte is consumed with the head (heads are tiny).
    head = b""
    while not head.endswith(b"\r\n\r\n") and len(head) < 8192:
        byte = s.recv(1)
        if not byte:
            break
        head += byte
    return head


# -- nginx ------------------------------------------------------------------------------------
def nginx_config(port: int, root: Path, workdir: Path) -> str:
    return f"""worker_processes 1;
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on;
  keepalive_requests 1000000;
  types {{ application/vnd.apple.mpegurl m3u8; video/mp4 m4s mp4; }}
  server {{ listen 127.0.0.1:{port} reuseport; root {root}; }}
}}
"""


@contextlib.contextmanager
def nginx(root: Path, workdir: Path, cpu: int) -> Iterator[tuple[int, int]]:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(port, root, workdir))
    command = [require("nginx")["nginx"], "-p", str(workdir), "-c", str(conf)]
    with serving(command, port, cpu) as pid:
        yield pid, port


# -- wrk --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    non_2xx: int


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk output: {output[-300:]!r}")
    return WrkResult(float(rps.group(1)), int(bad.group(1)) if bad else 0)


def wrk(url: str, cpu: int, connections: int = 200, seconds: float = 3.0) -> WrkResult:
    cmd = pinned([require("wrk")["wrk"], "-t1", f"-c{connections}", f"-d{seconds:g}s", url], cpu)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    return parse_wrk(out.stdout)
