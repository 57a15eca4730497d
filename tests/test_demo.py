"""`fedmed demo`: the no-DP federation, then the short DP federation whose row it prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmed.server.outputs import read_metrics
from fedmed.simulations.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_prints_a_dp_row_with_the_budget_spent(tmp_path: Path):
    lines: list[str] = []
    status = run_demo(tmp_path / "demo", rounds=1, epochs=1, images_per_site=30, dp_rounds=1, emit=lines.append)
    assert status["status"] == "completed", status
    assert status["dp"]["status"] == "completed", status["dp"]
    text = "\n".join(lines)
    assert "differential privacy is OFF in this federation" in text
    dp_table = lines[lines.index(next(l for l in lines if l.startswith("final DP round"))):]
    assert "eps" in dp_table[1]
    spent = [float(l.split()[-1]) for l in dp_table[2:6] if l.split()[0] in ("A", "B", "C", "all")]
    assert len(spent) == 4 and all(0 < e <= 8.0 for e in spent), dp_table
    # The DP run is a real DP run: every site trained with DP-SGD and charged its ledger.
    record = read_metrics(tmp_path / "demo" / "run-dp")[-1]
    assert all(site["dp"] and site["epsilon"] > 0 for site in record["sites"].values())
    # What follows the table: the model-health warning, or the line saying it learned.
    after = dp_table[6]
    assert after.startswith("warning: the final model") or "better than chance" in after
