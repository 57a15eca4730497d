"""The Flower App bundle (FAB) the coordinator submits to its SuperLink.

It holds only a `pyproject.toml` naming fedmed's installed ServerApp and ClientApp: the
code that runs is the fedmed package installed at the coordinator and at each site, not
code shipped inside the bundle.
"""

from __future__ import annotations

from pathlib import Path


APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedmed-app"
version = "{version}"
description = "fedmed federation"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedmed"

[tool.flwr.app.components]
serverapp = "fedmed.server.app:app"
clientapp = "fedmed.client.app:app"

[tool.flwr.app.config]
fedmed-config = ""
"""


def write_app_dir(path: Path, version: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(APP_PYPROJECT.format(version=version))
    return path
