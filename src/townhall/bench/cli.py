"""`townhall bench`: registered by townhall.cli. (Filled in by the benchmark.)"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pass
