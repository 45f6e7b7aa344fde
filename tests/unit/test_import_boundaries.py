"""The product does not carry the lab: the server and the command line load neither the
load generator nor the benchmarks unless asked to. Each check runs in a fresh
interpreter, as this one has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LAB = ("townhall.loadtest", "benchmarks")
# The cluster's client is an optional extra: one machine runs without it.
CLUSTER = ("nats", "townhall.cluster.jetstream")


def modules_after(code: str, watched: tuple[str, ...] = LAB) -> list[str]:
    """The ``watched`` modules imported by ``code`` in a fresh interpreter."""
    probe = f"""
import json, sys
{code}
print(json.dumps(sorted(m for m in sys.modules if m.startswith({watched!r}))))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    found: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("module", ["townhall.serve", "townhall.cli"])
def test_importing_the_product_imports_no_lab_module(module: str) -> None:
    assert modules_after(f"import {module}") == []


def test_townhall_help_imports_no_lab_module() -> None:
    code = """
import contextlib, io
from townhall.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(["--help"])
"""
    assert modules_after(code) == []


def test_the_probe_sees_the_load_generator_when_it_is_imported() -> None:
    # Without this, a probe that never saw any module would pass the checks above.
    assert "townhall.loadtest.runner" in modules_after("import townhall.loadtest.cli")


@pytest.mark.parametrize("module", ["townhall.serve", "townhall.cli", "townhall.config"])
def test_one_machine_needs_no_cluster_client(module: str) -> None:
    assert modules_after(f"import {module}", CLUSTER) == []


def test_the_probe_sees_the_cluster_client_when_it_is_imported() -> None:
    assert "nats" in modules_after("import townhall.cluster.edge", CLUSTER)
