"""Shared fixtures: synthetic DICOM sites written once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Flower's telemetry is on by default and this machine reaches no such service.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(scope="session")
def fedmed_cmd() -> list[str]:
    """The installed `fedmed` console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "fedmed"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fedmed.cli.main"]


@pytest.fixture(scope="session")
def synthetic_sites(tmp_path_factory) -> Path:
    """Three small synthetic CT sites (A, B, C) as `fedmed data synth` writes them."""
    from fedmed.simulations.synthetic_dicom import write_sites

    root = tmp_path_factory.mktemp("synthetic") / "data"
    write_sites(root, ("A", "B", "C"), images_per_site=30, seed=0)
    return root
