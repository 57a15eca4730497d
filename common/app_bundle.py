"""fedmed's Flower App bundle (FAB): what the coordinator submits and what a site approves.

The bundle holds only a `pyproject.toml` naming fedmed's installed ServerApp and
ClientApp; the code that runs is the fedmed package installed at the coordinator and at
each site, never code shipped inside the bundle. Flower builds a FAB deterministically
(sorted files, fixed zip timestamps), so a site can build the same bundle from its own
installed fedmed and compare SHA-256 hashes with the one a run offers
(`client/app_approval.py`): the same fedmed version gives the same hash on every
machine of the federation that has the same Flower (and zlib) version.
"""

from __future__ import annotations

import hashlib
import sys
from importlib.metadata import version as package_version
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


def installed_version() -> str:
    return package_version("fedmed")


def app_pyproject(version: str | None = None) -> str:
    return APP_PYPROJECT.format(version=version or installed_version())


def write_app_dir(path: Path, version: str | None = None) -> Path:
    """The folder `flwr run` builds the bundle from."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(app_pyproject(version))
    return path


def fab_hash(version: str | None = None) -> str:
    """SHA-256 of the bundle `flwr run` builds for this fedmed version, as Flower hashes it."""
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files({"pyproject.toml": app_pyproject(version).encode()})
    return hashlib.sha256(fab).hexdigest()


def bundle_hash(app_dir: Path) -> str:
    """SHA-256 of the bundle `flwr run` builds from the folder `app_dir`."""
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


if __name__ == "__main__":
    # `python -m fedmed.common.app_bundle APP_DIR` prints `bundle_hash(APP_DIR)`: how
    # `fedmed server start`, which supervises the run and stays free of Flower's modules,
    # gets the hash for its audit log.
    print(bundle_hash(Path(sys.argv[1])))
