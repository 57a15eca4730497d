"""The Flower App bundle (FAB) the coordinator submits to its SuperLink.

The bundle's definition is shared with the sites (`common/app_bundle.py`), which build
it themselves to check that a run offers exactly fedmed's app.
"""

from __future__ import annotations

from fedmed.common.app_bundle import APP_PYPROJECT, fab_hash, write_app_dir

__all__ = ["APP_PYPROJECT", "fab_hash", "write_app_dir"]
