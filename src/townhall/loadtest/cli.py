"""`townhall loadtest`: registered by townhall.cli. (Filled in by the load generator.)"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pass
