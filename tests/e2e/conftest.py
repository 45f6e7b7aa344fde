"""End-to-end fixtures: one real ``townhall serve`` process for the whole session.

The server runs as ``python -m townhall serve`` on 127.0.0.1 with free ports (the
shared harness in ``benchmarks.harness.server``, which the benchmarks use too). Each test
makes its own Space through the control API, so tests never share a room.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from benchmarks.harness.server import Server, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("Debian ffmpeg is needed as a real peer")
    srv = start_server(tmp_path_factory.mktemp("townhall-data"))
    yield srv
    srv.stop()
    assert not srv.tracebacks(), "the server logged tracebacks:\n" + srv.output()
