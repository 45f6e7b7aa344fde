"""Fuzzing a real server (property-based, hypothesis): the control API from its own
OpenAPI schema, the stage WebSocket with random frames, the audience port with random
bytes.

* every operation of ``/openapi.json`` (and the routes kept out of it: pages, static
  files, ``/healthz``, ``/metrics``), with generated path parameters, tokens and bodies,
  valid and invalid → never a 5xx, a JSON body on every 4xx;
* the stage WebSocket fed text, binary, huge and fragmented frames → the server ignores
  them or closes cleanly (never 1011, never a dropped connection without a close);
* the audience port fed random bytes on fresh connections → only HTTP errors below 500
  or a close, and its connections back to their number before the burst;

and in every case no traceback in the server's log and the control process the same one
(not crashed and restarted). Bounded: a fixed number of examples each, well under a
minute together on an idle machine. Hypothesis strategies are built here from the
schema (a small JSON Schema subset: what FastAPI emits for these models), not by
schemathesis, which would bring fifteen more packages.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from benchmarks.harness.processes import process_table
from benchmarks.harness.server import Server, Space

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 30
WS_EXAMPLES = 40
AUDIENCE_EXAMPLES = 150
SETTINGS = settings(
    deadline=None,
    database=None,
    derandomize=True,  # the same requests every run: a failure reproduces
    suppress_health_check=list(HealthCheck),
)
# Routes served outside the schema, fuzzed the same way.
UNLISTED = [
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/api/config"),
    ("get", "/s/{space_id}"),
    ("get", "/s/{space_id}/{role_page}"),
    ("get", "/static/{name}"),
]


@dataclass
class Findings:
    """What broke, by operation and what was wrong, with one request that showed it."""

    seen: dict[str, str] = field(default_factory=dict)

    def add(self, what: str, example: str) -> None:
        self.seen.setdefault(what, example)

    def report(self) -> str:
        return "\n".join(f"- {what}\n    e.g. {ex}" for what, ex in sorted(self.seen.items()))


@pytest.fixture(scope="module")
def spaces(server: Server) -> Iterator[dict[str, Any]]:
    """A live Space (its host, speaker and listener tokens) and one that has ended."""
    live = server.create_space_sync("fuzzed")
    live.start_sync()
    listener = httpx.post(live.api("/listeners"), json={}, timeout=10).json()["token"]
    ended = server.create_space_sync("fuzzed, ended")
    ended.start_sync()
    ended.end_sync()
    yield {"live": live, "ended": ended, "listener": listener}
    with contextlib.suppress(Exception):
        live.end_sync()


def _control_pid(server: Server) -> int:
    table = process_table(server.control_url, timeout_s=5.0) or []
    return next((p.pid for p in table if p.role == "control"), 0)


@dataclass
class Health:
    problems: list[str] = field(default_factory=list)


@contextlib.contextmanager
def stays_healthy(server: Server) -> Iterator[Health]:
    """Collects, on exit: new tracebacks in the server's log; a control process that is
    not the one from before (crashed and restarted)."""
    tracebacks, pid = len(server.tracebacks()), _control_pid(server)
    health = Health()
    yield health
    time.sleep(0.5)  # a traceback is logged after the response that caused it
    new = server.tracebacks()[tracebacks:]
    if new:
        log = list(server.log)[-400:]
        errors = dict.fromkeys(x[:100] for x in log if re.match(r"^\w*(Error|Exception)\b", x))
        health.problems.append(f"{len(new)} tracebacks in the server's log: {list(errors)[-8:]}")
    if _control_pid(server) != pid:
        health.problems.append("the control process was restarted")


def verdict(findings: Findings, health: Health, what: str) -> str:
    return f"{what}:\n" + findings.report() + "".join(f"\n- {p}" for p in health.problems)


# -- strategies from the schema ---------------------------------------------------------------


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = doc["components"]["schemas"][name]
    return schema


def valid_values(schema: dict[str, Any], doc: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema accepts (its subset used by FastAPI for these models)."""
    schema = _resolve(schema, doc)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of(*(valid_values(s, doc) for s in schema[key]))
    kind = schema.get("type")
    if kind == "string":
        lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 200), 200)
        return st.text(min_size=lo, max_size=max(lo, hi))
    if kind == "integer":
        return st.integers(min_value=-(2**63), max_value=2**63)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(valid_values(schema.get("items", {}), doc), max_size=3)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: valid_values(v, doc) for k, v in props.items() if k in required},
            optional={k: valid_values(v, doc) for k, v in props.items() if k not in required},
        )
    return any_json


any_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


def too_long(schema: dict[str, Any], doc: dict[str, Any]) -> st.SearchStrategy[Any]:
    """An object whose string fields break their maxLength by a little or a lot."""
    schema = _resolve(schema, doc)
    props = schema.get("properties", {})
    out: dict[str, st.SearchStrategy[Any]] = {}
    for k, v in props.items():
        v = _resolve(v, doc)
        limit = v.get("maxLength") or next(
            (s.get("maxLength") for s in v.get("anyOf", []) if s.get("maxLength")), None
        )
        out[k] = (
            st.sampled_from([limit + 1, limit * 4, 1_000_000]).map(lambda n: "x" * n)
            if limit
            else valid_values(v, doc)
        )
    return st.fixed_dictionaries(out)


@st.composite
def bodies(draw: st.DrawFn, op: dict[str, Any], doc: dict[str, Any]) -> tuple[str, bytes]:
    """(content type, bytes): valid, wrong in shape, too long, not JSON, or none."""
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    schema = content["schema"] if content else {"type": "object"}
    kind = draw(st.sampled_from(["valid", "valid", "json", "long", "bytes", "none"]))
    if kind == "valid":
        return "application/json", json.dumps(draw(valid_values(schema, doc))).encode()
    if kind == "json":
        return "application/json", json.dumps(draw(any_json)).encode()
    if kind == "long":
        return "application/json", json.dumps(draw(too_long(schema, doc))).encode()
    if kind == "bytes":
        ctype = draw(st.sampled_from(["application/json", "text/plain", "", "multipart/x"]))
        return ctype, draw(st.binary(max_size=300))
    return "", b""


def path_values(spaces: dict[str, Any]) -> st.SearchStrategy[str]:
    live: Space = spaces["live"]
    return st.one_of(
        st.sampled_from([live.id, spaces["ended"].id, "nope", "x" * 300, "..", "%00"]),
        st.text(min_size=1, max_size=40).map(lambda s: quote(s, safe="")),
    )


def tokens(server: Server, spaces: dict[str, Any]) -> st.SearchStrategy[str | None]:
    live: Space = spaces["live"]
    real = [live.host_token, live.speaker.token, spaces["listener"], server.admin_key]
    return st.one_of(
        st.none(),
        st.sampled_from(real).map(lambda t: f"Bearer {t}"),
        st.text(max_size=60).map(lambda t: f"Bearer {t}"),
        st.text(max_size=60),
    )


def operations(server: Server) -> tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]]]:
    doc = httpx.get(f"{server.control_url}/openapi.json", timeout=10).json()
    ops = [
        (method, path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
    return doc, ops + [(m, p, {}) for m, p in UNLISTED]


def _header(value: str) -> bytes:
    """Any text as a header value's bytes (latin-1, no line breaks)."""
    return value.replace("\r", "").replace("\n", "").encode("latin-1", "replace")


# -- the control API ------------------------------------------------------------------------


def test_the_control_api_never_answers_5xx_and_always_json_on_4xx(
    server: Server, spaces: dict[str, Any]
) -> None:
    doc, ops = operations(server)
    assert len(ops) >= 12, [p for _, p, _ in ops]
    findings = Findings()
    with stays_healthy(server) as health, httpx.Client(timeout=15.0) as client:
        for method, path, op in ops:
            fuzz_operation(client, server, spaces, doc, method, path, op, findings)
    assert not findings.seen and not health.problems, verdict(findings, health, "control API")


def fuzz_operation(
    client: httpx.Client,
    server: Server,
    spaces: dict[str, Any],
    doc: dict[str, Any],
    method: str,
    path: str,
    op: dict[str, Any],
    findings: Findings,
) -> None:
    params = re.findall(r"{(\w+)}", path)

    @settings(SETTINGS, max_examples=EXAMPLES_PER_OPERATION)
    @given(
        values=st.fixed_dictionaries({p: path_values(spaces) for p in params}),
        auth=tokens(server, spaces),
        body=bodies(op, doc),
    )
    def one(values: dict[str, str], auth: str | None, body: tuple[str, bytes]) -> None:
        url = server.control_url + path.format(**values)
        headers = [(b"Authorization", _header(auth))] if auth is not None else []
        ctype, content = body
        if ctype:
            headers.append((b"Content-Type", ctype.encode()))
        what = f"{method.upper()} {path}"
        example = f"{method.upper()} {url[:120]} {headers} {content[:120]!r}"
        try:
            resp = client.request(method.upper(), url, headers=headers, content=content)
        except httpx.LocalProtocolError:
            return  # the client would not send these header bytes: nothing was asked
        except httpx.HTTPError as exc:
            findings.add(f"{what}: no answer ({type(exc).__name__})", example)
            return
        if resp.status_code >= 500:
            findings.add(f"{what}: {resp.status_code} {resp.text[:100]}", example)
        elif resp.status_code >= 400 and not _is_page(path, resp):
            try:
                resp.json()
                is_json = resp.headers.get("content-type", "").startswith("application/json")
            except ValueError:
                is_json = False
            if not is_json:
                # Keyed by the answer, not the operation: one cause answers them all.
                said = f"{resp.status_code} without a JSON body: {resp.text[:60]!r}"
                findings.add(said, f"{what}: {example}")

    one()


def _is_page(path: str, resp: httpx.Response) -> bool:
    """A page for people (not the API): its errors are human HTML pages, by design."""
    page = not path.startswith("/api/")
    return page and resp.headers.get("content-type", "").startswith("text/html")


# -- the stage WebSocket ----------------------------------------------------------------------

# Clean closes: normal, going away, unsupported or invalid data, policy, too big, and
# the 4000 + HTTP status codes townhall uses.
CLEAN_CLOSES = {1000, 1001, 1003, 1007, 1008, 1009}
HUGE_FRAME_BYTES = 10 * 1024 * 1024

frames = st.one_of(
    st.text(max_size=2000),
    st.binary(min_size=1, max_size=2000),
    st.just("x" * HUGE_FRAME_BYTES),
    st.lists(st.text(min_size=1, max_size=100), min_size=2, max_size=4),  # fragmented
    st.lists(st.binary(min_size=1, max_size=100), min_size=2, max_size=4),
    st.sampled_from(['{"type": "command", "command": "end"}', "ping", "{}", "null", "[]"]),
)


def ws_url(server: Server, space_id: str, token: str) -> str:
    base = server.control_url.replace("http://", "ws://", 1)
    return f"{base}/api/spaces/{space_id}/ws?token={quote(token, safe='')}"


def test_the_stage_websocket_ignores_or_closes_cleanly_on_random_frames(
    server: Server, spaces: dict[str, Any]
) -> None:
    live: Space = spaces["live"]
    findings = Findings()

    @settings(SETTINGS, max_examples=WS_EXAMPLES)
    @given(frame=frames, token=st.sampled_from([live.host_token, live.speaker.token]))
    def one(frame: str | bytes | list[str] | list[bytes], token: str) -> None:
        kind = type(frame).__name__ + (f"[{len(frame)}]" if not isinstance(frame, list) else "")
        try:
            with connect(ws_url(server, live.id, token), open_timeout=10, max_size=None) as ws:
                ws.send(frame)
                # The host is pushed meters all along: read for a while, not until quiet.
                until = time.monotonic() + 0.5
                with contextlib.suppress(TimeoutError):
                    while time.monotonic() < until:
                        ws.recv(timeout=max(0.01, until - time.monotonic()))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code is None or not (code in CLEAN_CLOSES or 4000 <= code < 5000):
                findings.add(f"{kind} frame: closed with {code}", repr(frame)[:80])
        except (OSError, InvalidHandshake) as exc:
            findings.add(f"{kind} frame: {type(exc).__name__}", repr(frame)[:80])

    with stays_healthy(server) as health:
        one()
    assert not findings.seen and not health.problems, verdict(findings, health, "stage WebSocket")


def test_a_huge_text_frame_is_refused_not_read(server: Server, spaces: dict[str, Any]) -> None:
    """Nothing on the stage WebSocket needs more than a few bytes from the page: a 10 MB
    frame is closed with 1009 (too big) or a 4xxx code, never read whole."""
    live: Space = spaces["live"]
    code: int | None = None
    with connect(ws_url(server, live.id, live.host_token), open_timeout=10, max_size=None) as ws:
        ws.send("x" * HUGE_FRAME_BYTES)
        until = time.monotonic() + 5
        try:
            while time.monotonic() < until:
                with contextlib.suppress(TimeoutError):
                    ws.recv(timeout=0.2)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        else:
            pytest.fail("a 10 MB text frame was read whole; the socket stayed open")
    assert code == 1009 or (code is not None and 4000 <= code < 5000), code


@settings(SETTINGS, max_examples=20)
@given(token=st.text(max_size=80))
def test_a_stage_websocket_with_a_made_up_token_is_refused_with_a_4xxx_close(
    server: Server, spaces: dict[str, Any], token: str
) -> None:
    live: Space = spaces["live"]
    with (
        pytest.raises(ConnectionClosed) as closed,
        connect(ws_url(server, live.id, token), open_timeout=10) as ws,
    ):
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and 4000 <= closed.value.rcvd.code < 5000


# -- the audience port ------------------------------------------------------------------------

_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")


def audience_connections(server: Server) -> int:
    """Connections the audience workers hold on the audience port (not the listener)."""
    port = int(server.audience_url.rsplit(":", 1)[1])
    table = process_table(server.control_url, timeout_s=5.0) or []
    held = 0
    for p in table:
        if p.role != "audience" or p.pid <= 0:
            continue
        with contextlib.suppress(psutil.Error):
            held += sum(
                1
                for c in psutil.Process(p.pid).net_connections(kind="tcp")
                if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN
                and c.status != psutil.CONN_TIME_WAIT
            )  # fmt: skip
    return held


def random_requests(rng: random.Random, space_id: str, n: int) -> list[bytes]:
    """Random bytes, and HTTP-shaped junk around the port's real routes."""
    targets = [f"/live/{space_id}/index.m3u8", f"/replay/{space_id}.ogg", "/healthz", "/x"]
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(rng.randbytes(rng.randint(1, 3000)))
            continue
        method = rng.choice(["GET", "HEAD", "POST", "BREW", "G\x00T", "OPTIONS"])
        target = rng.choice([*targets, "/" + rng.randbytes(20).decode("latin-1")])
        headers = "".join(
            f"{rng.choice(['Range', 'Host', 'X-A', 'Content-Length', 'Upgrade'])}: "
            f"{rng.choice(['bytes=0-1', '-1', 'websocket', 'x' * rng.randint(0, 40_000)])}\r\n"
            for _ in range(rng.randint(0, 4))
        )
        out.append(f"{method} {target} HTTP/1.1\r\n{headers}\r\n".encode("latin-1", "replace"))
    return out


def test_the_audience_port_answers_random_bytes_with_4xx_or_a_close_and_leaks_nothing(
    server: Server, spaces: dict[str, Any]
) -> None:
    live: Space = spaces["live"]
    port = int(server.audience_url.rsplit(":", 1)[1])
    before = audience_connections(server)
    findings = Findings()
    with stays_healthy(server) as health:
        for payload in random_requests(random.Random(12), live.id, AUDIENCE_EXAMPLES):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                with contextlib.suppress(OSError):
                    sock.sendall(payload)
                try:
                    answer = sock.recv(65_536)
                except TimeoutError:
                    answer = b""  # waiting for the rest of a request head: allowed
                except OSError:
                    continue  # reset: a close
            m = _STATUS.match(answer)
            if answer and m is None:
                findings.add("not an HTTP response", f"{payload[:60]!r} → {answer[:60]!r}")
            elif m and int(m.group(1)) >= 500 and int(m.group(1)) != 503:
                findings.add(f"answered {m.group(1).decode()}", f"{payload[:60]!r}")
        deadline = time.monotonic() + 10
        while audience_connections(server) > before and time.monotonic() < deadline:
            time.sleep(0.2)
        after = audience_connections(server)
    assert not findings.seen and not health.problems, verdict(findings, health, "audience port")
    assert after <= before, f"{after - before} connections left open after the burst"
