"""Shared pytest set-up for every tier.

Being a conftest inside the ``tests`` package puts the repository root on ``sys.path``
(pytest's rootdir insertion), so tests import the harness they share with the
benchmarks as ``benchmarks.harness`` and the measurement code as ``benchmarks.latency``.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/e2e runs real peers: mark it so `-m "not e2e"` is the fast tier.
    for item in items:
        if "/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
