"""The Flower App bundle (FAB) the coordinator submits to its SuperLink.

The bundle's definition is shared with the sites (`common/app_bundle.py`), which build
it themselves to check that a run offers exactly fedmed's app.
"""

from __future__ import annotations

from fedmed.common.app_bundle import APP_PYPROJECT, fab_hash, write_app_dir

# The run config key naming the run folder's config.json, set by `fedmed server start`
# when it submits the run and read by the ServerApp (`server/app.py`).
RUN_CONFIG_KEY = "fedmed-config"

__all__ = ["APP_PYPROJECT", "RUN_CONFIG_KEY", "fab_hash", "write_app_dir"]
