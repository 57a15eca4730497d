"""`python -m benchmarks all --smoke`: every benchmark section runs and produces rows.

Runs the real command from the repository root (Opacus installs a top-level package also
named `benchmarks`; `python -m` from the root is what makes fedmed's win), into a
temporary folder, and checks the results it saved as well as the report it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.bench]

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("utility", "drift", "dp", "overhead", "scale", "data", "speed")
# The smoke size is sized to finish in under 4 minutes on a quiet 2-core machine; the
# limit here only stops a hung run (a shared, busy machine can be several times slower).
TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("benchmarks")
    doc = REPO / "docs" / "benchmarks.md"
    before = doc.stat().st_mtime_ns if doc.exists() else None
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "all", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # The smoke size must never overwrite the committed full-size report.
    assert (doc.stat().st_mtime_ns if doc.exists() else None) == before
    results = json.loads((out / "benchmarks" / "results.json").read_text())
    print(f"smoke benchmarks: {seconds:.0f} s")
    return out, results, seconds


def test_every_section_produced_rows(smoke):
    _, results, _ = smoke
    assert results["smoke"] is True
    for name in SECTIONS:
        section = results["sections"][name]
        assert "error" not in section, f"{name}: {section.get('error')}"
        if "skipped" in section:  # only the sections that need the shared data set may skip
            assert name in ("utility", "drift", "scale", "speed"), name
            continue
        assert section["rows"], f"{name}: no rows"


def test_every_run_behind_the_rows_completed(smoke):
    _, results, _ = smoke
    s = results["sections"]
    if "skipped" not in s["utility"]:
        for row in s["utility"]["rows"]:
            assert row["test"], f"utility row {row['key']}: no test metrics ({row['notes']})"
            for metrics in row["test"]:
                assert 0.0 <= metrics["accuracy"] <= 1.0
    for row in s["overhead"]["rows"]:
        assert row.get("wall_s"), f"overhead {row['setting']} {row['data']}: {row['status']}"
    assert s["overhead"]["deployment"]["completed"], s["overhead"]["deployment"]["server_log_tail"]
    assert s["overhead"]["bytes"]["deployment_measured"]["up_per_site_round"] > 0
    if "skipped" not in s["scale"]:
        assert all(r["status"] == "completed" for r in s["scale"]["rows"]), s["scale"]["rows"]
    # "n/a" for the plain baseline, "yes (errors...)" for a DP mode that clips correctly.
    assert all(r["correct"] == "n/a" or r["correct"].startswith("yes ") for r in s["dp"]["rows"]), \
        [r["correct"] for r in s["dp"]["rows"]]
    assert s["data"]["test_files"]
    if "skipped" not in s["drift"]:
        assert all(0.0 <= r["auc"] <= 1.0 and len(r["curve"]) == r["rounds"] for r in s["drift"]["rows"])


def test_report_and_headline_written(smoke):
    out, results, _ = smoke
    doc = (out / "benchmarks.md").read_text()
    for heading in ("## Machine and software", "## 1. Utility", "## 1b. The no-DP gap", "## 2. DP cost", "## 3. Round overhead",
                    "## 4. Scale", "## 5. Data"):
        assert heading in doc
    assert results["machine"]["cpu"] in doc and "flwr 1.42" in doc
    assert "Smoke size" in doc
    assert (out / "benchmarks-headline.md").read_text().strip()
    assert list((out / "benchmarks").glob("*.png"))
    # Project documents name the shared data set relative to the repository only.
    assert str(REPO.parent) not in doc
