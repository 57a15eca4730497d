"""A 3-site federation in Flower's simulation engine, on synthetic DICOM sites."""

from __future__ import annotations

from pathlib import Path

import torch

from fedmed.common.checkpoint import load_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.settings import ImageSettings
from fedmed.server.outputs import read_metrics, read_status
from fedmed.simulations.runner import simulate
from fedmed.simulations.sites import dicom_sites


def _config() -> FederationConfig:
    return FederationConfig(rounds=2, min_sites=3, batch_size=16, image=ImageSettings(size=32), seed=3)


def test_three_sites_two_rounds_every_site_every_round(synthetic_sites: Path, tmp_path: Path):
    out = tmp_path / "run"
    status = simulate(dicom_sites(synthetic_sites, tmp_path / "state"), _config(), out)
    assert status["status"] == "completed", status
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert set(row["sites"]) == {"A", "B", "C"}
        for site in row["sites"].values():
            assert site["status"] == "ok"
            assert site["num_examples"] > 0 and site["num_train_examples"] > 0
            for key in ("loss", "accuracy", "sensitivity", "specificity"):
                assert key in site
        for key in ("loss", "accuracy", "auc", "worst_site_accuracy"):
            assert key in row["aggregate"]
    assert (out / "checkpoints" / "round-001.pt").exists()
    final = load_checkpoint(out / "model-final.pt")
    assert final["round"] == 2 and final["classes"] == ["normal", "abnormal"]
    assert final["image"]["size"] == 32
    # Each site kept its own state folder (the decoded-image cache lives there).
    assert all((tmp_path / "state" / s).is_dir() for s in ("A", "B", "C"))

    # Same seed, same result: a second run gives the identical global model.
    again = tmp_path / "again"
    assert simulate(dicom_sites(synthetic_sites, tmp_path / "state2"), _config(), again)["status"] == "completed"
    second = load_checkpoint(again / "model-final.pt")
    for key, value in final["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key
    assert read_status(again)["rounds_completed"] == 2
