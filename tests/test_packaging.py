"""The install layout: one `fedmed` namespace, every sub-package declared, sides apart."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = {"common": "fedmed.common", "client": "fedmed.client", "server": "fedmed.server",
       "simulations": "fedmed.simulations", "cli": "fedmed.cli"}


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, name in TOP.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    return found


def test_every_subpackage_is_declared_for_non_editable_installs():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _packages_on_disk()
    for folder, name in TOP.items():
        assert config["package-dir"][name] == folder


def _imports(folder: str) -> set[str]:
    names = set()
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def test_the_sides_stay_apart():
    server = _imports("server")
    assert not any(n.startswith(("pydicom", "fedmed.client")) for n in server), \
        "the coordinator never touches pixels or site code"
    assert not any(n.startswith("fedmed.server") for n in _imports("client"))
    common = _imports("common")
    assert not any(n.startswith(("fedmed.server", "fedmed.client", "pydicom")) for n in common)
