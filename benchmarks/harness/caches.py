"""The HTTP caches shipped in deploy/, run as they are in front of an audience port.

Each is started from the repository's own configuration file, with only its addresses
(and nginx's cache directory) rewritten, so what is tested is what operators install.
Both report how many requests they sent to the origin: the measure of offload.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness.processes import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
VCL = ROOT / "deploy" / "varnish" / "townhall.vcl"
NGINX_CONF = ROOT / "deploy" / "nginx" / "townhall-cache.conf"
SHIPPED_BACKEND = "127.0.0.1:8001"
CONTROL_FRONT_CONF = ROOT / "deploy" / "nginx" / "townhall-control.conf"
SHIPPED_ORIGINS = ("127.0.0.1:8000", "127.0.0.1:9000")
# A proxied stream holds two descriptors (client and edge): room for a crowd of them.
CACHE_NOFILE = 65_536


def _more_files() -> None:
    """In the cache's process before exec: a descriptor limit for piped crowds (root
    may raise the hard limit; anyone else keeps theirs)."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (CACHE_NOFILE, CACHE_NOFILE))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Cache:
    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def varnish_counter(self, name: str) -> int:
        """One of this Varnish's counters (``varnishstat``), e.g. ``MAIN.threads``."""
        out = subprocess.run(
            ["varnishstat", "-n", str(self.workdir), "-j", "-f", name],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        counters = json.loads(out.stdout)
        counters = counters.get("counters", counters)
        return int(counters[name]["value"])

    def origin_requests(self) -> int:
        """Cacheable requests (LL-HLS) this cache has sent to the origin so far; the
        endless streams it pipes or proxies (Ogg, room events) are not counted."""
        if self.name == "varnish":
            # Fetches only: Varnish counts a piped request in MAIN.s_pipe.
            return self.varnish_counter("MAIN.backend_req")
        log = self.workdir / "upstream.log"
        if not log.exists():
            return 0
        with log.open() as lines:
            return sum(1 for line in lines if ".ogg" not in line and "/events/" not in line)


def _workdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    # The caches' unprivileged workers read and write here.
    path.chmod(0o777)
    return path


@contextlib.contextmanager
def varnish(backend_port: int, params: Sequence[str] = ()) -> Iterator[Cache]:
    """varnishd running deploy/varnish/townhall.vcl in front of ``backend_port``, with
    more run-time ``params`` (``name=value``: a piped stream holds a worker thread, so a
    crowd of Ogg listeners needs ``thread_pool_min`` above its share of each pool)."""
    work = _workdir("townhall-varnish-")
    vcl = work / "townhall.vcl"
    text = VCL.read_text().replace('.port = "8001";', f'.port = "{backend_port}";')
    vcl.write_text(text)
    vcl.chmod(0o644)
    port = free_port()
    command = [
        "varnishd", "-F", "-n", str(work), "-a", f"127.0.0.1:{port}",
        "-f", str(vcl), "-s", "malloc,64m", "-T", f"127.0.0.1:{free_port()}",
        "-p", "default_grace=0",
    ]  # fmt: skip
    for param in params:
        command += ["-p", param]
    with (work / "varnishd.log").open("wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_more_files
        )
    try:
        wait_for_port(port, 30)
        yield Cache("varnish", port, work, proc)
    finally:
        stop(proc)


@contextlib.contextmanager
def _nginx(
    work: Path, port: int, site: str, http_logging: str
) -> Iterator[subprocess.Popen[bytes]]:
    """nginx running ``site`` from ``work`` (its pid, logs and temp files), with a
    descriptor limit for crowds of proxied streams; stopped by pid on exit."""
    (work / "site.conf").write_text(site)
    (work / "nginx.conf").write_text(
        f"""daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
# A proxied stream holds two connections (client and upstream).
worker_rlimit_nofile {CACHE_NOFILE};
events {{ worker_connections {CACHE_NOFILE - 1024}; }}
http {{
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {work}/site.conf;
    {http_logging}
}}
"""
    )
    proc = subprocess.Popen(
        ["nginx", "-p", str(work), "-c", str(work / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=_more_files,
    )
    try:
        wait_for_port(port, 30)
        yield proc
    finally:
        stop(proc)


# Every request the cache sends upstream, one line each: the origin's share.
_UPSTREAM_LOG = """log_format upstream '$upstream_addr $request_uri';
    map $upstream_addr $went_upstream {{ "" 0; default 1; }}
    access_log {work}/upstream.log upstream if=$went_upstream;"""


@contextlib.contextmanager
def nginx_cache(backend_port: int) -> Iterator[Cache]:
    """nginx running deploy/nginx/townhall-cache.conf in front of ``backend_port``."""
    work = _workdir("townhall-nginx-")
    port = free_port()
    site = (
        NGINX_CONF.read_text()
        .replace(SHIPPED_BACKEND, f"127.0.0.1:{backend_port}")
        .replace("listen 8080;", f"listen 127.0.0.1:{port};")
        .replace("/var/cache/nginx/townhall", str(work / "cache"))
    )
    with _nginx(work, port, site, _UPSTREAM_LOG.format(work=work)) as proc:
        yield Cache("nginx", port, work, proc)


@contextlib.contextmanager
def nginx_control_front(port: int, control_urls: Sequence[str]) -> Iterator[str]:
    """nginx running deploy/nginx/townhall-control.conf in front of the origin nodes'
    control ports: the one name every link carries."""
    work = _workdir("townhall-front-")
    site = CONTROL_FRONT_CONF.read_text().replace("listen 8443;", f"listen 127.0.0.1:{port};")
    for shipped, url in zip(SHIPPED_ORIGINS, control_urls, strict=True):
        site = site.replace(shipped, url.removeprefix("http://"))
    try:
        with _nginx(work, port, site, "access_log off;"):
            yield f"http://127.0.0.1:{port}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
