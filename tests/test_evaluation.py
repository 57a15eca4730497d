"""`fedmed evaluate` and the operating threshold: a site checks a model on its own labelled
data (a real DICOM folder or an .npz split), decisions follow the model's threshold, and
the AUC interval is DeLong's."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.client.evaluation import evaluate_arrays, evaluate_model
from fedmed.client.predict import ModelMismatch, load_model, predict_files
from fedmed.client.sitedata import load_dicom_site, load_npz_arrays, scan_site
from fedmed.client.training import predict_proba
from fedmed.common.auc_interval import bootstrap_interval, delong_interval
from fedmed.common.checkpoint import save_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.metrics import binary_auc
from fedmed.common.models import build_model
from fedmed.common.operating_point import balanced_threshold, check_threshold, decide
from fedmed.common.settings import ImageSettings
from fedmed.simulations.synthetic_dicom import write_sites

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import write_random_bytes  # noqa: E402

CPU = torch.device("cpu")
CONFIG = FederationConfig(image=ImageSettings(size=16, window=(-600.0, 1500.0)), seed=0)


def _model_file(path: Path, threshold=None, config: FederationConfig = CONFIG, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(config.model, len(config.classes), config.image.size)
    extra = {"threshold": threshold} if threshold is not None else None
    return save_checkpoint(path, model.state_dict(), config, server_round=1, extra=extra)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval") / "data"
    write_sites(root, ("A",), images_per_site=24, seed=2)
    write_random_bytes(root / "A" / "broken.dcm")
    return root / "A"


# --- the AUC interval ------------------------------------------------------------------

def _brute_delong(scores, positives):
    x, y = scores[positives], scores[~positives]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(y)


def test_delong_matches_its_definition_with_ties():
    rng = np.random.default_rng(0)
    positives = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + 0.4 * positives, 1)  # rounding makes ties
    interval = delong_interval(scores, positives)
    auc, var = _brute_delong(scores, positives)
    assert interval.auc == pytest.approx(auc) == pytest.approx(binary_auc(scores, positives))
    half = 1.959963984540054 * math.sqrt(var)
    assert interval.low == pytest.approx(auc - half) and interval.high == pytest.approx(auc + half)


def test_auc_interval_edges():
    assert math.isnan(delong_interval(np.array([0.1, 0.2]), np.array([True, True])).auc)
    perfect = delong_interval(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert (perfect.auc, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 20)
    probs = rng.dirichlet([1, 1, 1], size=60)
    probs[np.arange(60), labels] += 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    boot = bootstrap_interval(probs, labels, resamples=200)
    assert boot.low <= boot.auc <= boot.high and boot.high - boot.low > 0.01


# --- the operating threshold ------------------------------------------------------------

def test_threshold_rules():
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.65, 0.35]])
    assert decide(probs, None).tolist() == [0, 1, 0]
    assert decide(probs, 0.3).tolist() == [0, 1, 1]
    assert check_threshold(None, 2) is None and check_threshold(0.25, 2) == 0.25
    for bad, classes in ((1.5, 2), ("x", 2), (math.nan, 2), (0.5, 3)):
        with pytest.raises(ValueError, match="threshold"):
            check_threshold(bad, classes)
    # fedmed's threshold rule: the cut-off separating the classes; None with one class.
    scores = np.array([0.70, 0.75, 0.80, 0.90, 0.95])
    cut = balanced_threshold(scores, np.array([0, 0, 1, 1, 1]))
    assert 0.75 < cut <= 0.80
    assert decide(np.stack([1 - scores, scores], axis=1), cut).tolist() == [0, 0, 1, 1, 1]
    assert balanced_threshold(scores, np.ones(5)) is None


def test_predict_follows_the_models_threshold(site: Path, tmp_path: Path):
    files = [site / f.relpath for f in scan_site(site, CONFIG.classes)[0][:6]]
    everything = predict_files(_model_file(tmp_path / "low.pt", threshold=0.0), files)
    assert {p.predicted for p in everything} == {CONFIG.classes[1]}
    nothing = predict_files(_model_file(tmp_path / "high.pt", threshold=1.0), files)
    assert {p.predicted for p in nothing} == {CONFIG.classes[0]}
    plain = predict_files(_model_file(tmp_path / "plain.pt"), files)
    assert all(p.predicted == max(p.probabilities, key=p.probabilities.get) for p in plain)
    assert load_model(tmp_path / "low.pt").threshold == 0.0
    with pytest.raises(ModelMismatch, match="threshold"):
        load_model(_model_file(tmp_path / "bad.pt", threshold=2.0))


# --- evaluation on a DICOM folder and an npz --------------------------------------------

def test_evaluate_dicom_folder_uses_the_sites_pipeline(site: Path, tmp_path: Path):
    path = _model_file(tmp_path / "m.pt", threshold=0.5)
    result = evaluate_model(path, data_dir=site)
    data = load_dicom_site(site, tmp_path / "state", CONFIG.image, CONFIG.classes, val_fraction=0.0)
    assert result.num_images == len(data.train_y) == 24
    assert sum(result.skipped.values()) == 1  # the broken file, counted by reason
    assert result.images_per_class == {c: int(np.sum(data.train_y == i)) for i, c in enumerate(CONFIG.classes)}
    probs = predict_proba(load_model(path).model, data.train_x, CPU)
    assert result.auc.auc == pytest.approx(binary_auc(probs[:, 1], data.train_y == 1))
    assert result.auc.low <= result.auc.auc <= result.auc.high
    confusion = np.array(result.confusion)
    assert confusion.sum() == 24 and confusion.sum(axis=1).tolist() == list(result.images_per_class.values())
    tp, fn, tn, fp = confusion[1, 1], confusion[1, 0], confusion[0, 0], confusion[0, 1]
    assert result.sensitivity == pytest.approx(tp / (tp + fn))
    assert result.specificity == pytest.approx(tn / (tn + fp))
    assert result.balanced_accuracy == pytest.approx((result.sensitivity + result.specificity) / 2)
    assert result.accuracy == pytest.approx((tp + tn) / 24)
    assert result.threshold == 0.5 and result.threshold_source == "model"


def _npz(path: Path, n: int = 40, side: int = 12) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = (np.arange(n) % 3 == 0).astype(np.int64)[:, None]
        images = rng.integers(0, 120, size=(n, side, side)).astype(np.uint8)
        images[labels[:, 0] == 1, 3:9, 3:9] = 250  # a bright patch marks class 1
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(path, **arrays)
    return path


def test_evaluate_npz_split_and_threshold_override(tmp_path: Path):
    npz = _npz(tmp_path / "tiny.npz")
    path = _model_file(tmp_path / "m.pt")
    result = evaluate_model(path, npz=npz, split="val")
    assert result.images_per_class == {CONFIG.classes[0]: 26, CONFIG.classes[1]: 14}
    assert result.threshold is None and result.threshold_source == "argmax"
    assert result.balanced is not None and 0 <= result.balanced["threshold"] <= 1
    everyone = evaluate_model(path, npz=npz, threshold=0.0)
    assert everyone.sensitivity == 1.0 and everyone.specificity == 0.0
    assert everyone.confusion == [[0, 26], [0, 14]] and everyone.threshold_source == "--threshold"
    with pytest.raises(ValueError, match="--split"):
        evaluate_model(path, npz=npz, split="holdout")
    loaded = load_model(path)
    x = load_npz_arrays(np.zeros((2, 12, 12), np.uint8), np.zeros(2), loaded.settings)
    with pytest.raises(ValueError, match="class indices"):
        evaluate_arrays(loaded, x, np.array([0, 5]), data_name="x")


def test_cli_evaluate_prints_and_writes_json(site: Path, tmp_path: Path):
    path = _model_file(tmp_path / "m.pt", threshold=0.4)
    out = tmp_path / "out" / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(path), "--data", str(site), "--json", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("balanced accuracy", "ROC AUC (95 % CI)", "DeLong", "confusion matrix", "sensitivity",
                 "24 image(s)", "skipped 1 file(s)", "0.400"):
        assert text in result.output
    d = json.loads(out.read_text())
    assert d["num_images"] == 24 and d["threshold"] == 0.4 and d["auc"]["level"] == 0.95
    assert set(d) >= {"loss", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "confusion",
                      "images_per_class"}
    both = CliRunner().invoke(app, ["evaluate", "--model", str(path), "--data", str(site), "--npz", "x.npz"])
    assert both.exit_code == 2 and "exactly one of" in both.output
    missing = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "none.pt"), "--data", str(site)])
    assert missing.exit_code == 2 and "no such model file" in missing.output


@pytest.mark.parametrize("command", ["evaluate", "pretrain"])
def test_help_shows_an_example(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and f"Example: fedmed {command}" in result.output
