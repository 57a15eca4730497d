"""`fedmed predict`: a saved model scores files exactly as the site's evaluation did, bad
files get a reason instead of stopping the batch, and a wrong model file is refused."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.client.predict import ModelMismatch, load_model, predict_files
from fedmed.client.sitedata import load_dicom_site, scan_site, split_by_patient
from fedmed.client.training import evaluate, make_loader, make_optimizer, predict_proba, train_local
from fedmed.common.checkpoint import save_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model
from fedmed.common.settings import ImageSettings
from fedmed.simulations.synthetic_dicom import write_sites

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import write_random_bytes  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A model trained briefly on a synthetic site, saved as a checkpoint, and the site's split."""
    tmp = tmp_path_factory.mktemp("predict")
    write_sites(tmp / "data", ("A",), images_per_site=40, seed=1)
    config = FederationConfig(image=ImageSettings(size=32, window=(-600.0, 1500.0)), seed=3)
    site_dir = tmp / "data" / "A"
    data = load_dicom_site(site_dir, tmp / "state", config.image, config.classes,
                           val_fraction=config.val_fraction, seed=config.seed)
    torch.manual_seed(0)
    model = build_model(config.model, len(config.classes), config.image.size)
    # One thread: on a busy two-core machine a tiny model trains many times faster so.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_local(model, make_loader(data.train_x, data.train_y, 8, seed=0),
                    make_optimizer(model, config.with_(lr=3e-3)), epochs=6, device=CPU)
    finally:
        torch.set_num_threads(threads)
    path = save_checkpoint(tmp / "model.pt", model.state_dict(), config, server_round=1)
    # The validation files, recomputed as load_dicom_site splits them (same seed).
    files, _ = scan_site(site_dir, config.classes)
    _, val = split_by_patient([f.patient for f in files], config.val_fraction, config.seed)
    return {"config": config, "model": model, "path": path, "data": data, "tmp": tmp,
            "val_files": [site_dir / files[i].relpath for i in val],
            "val_labels": [files[i].label for i in val]}


def test_predict_reproduces_the_sites_validation_accuracy(trained):
    data, config = trained["data"], trained["config"]
    assert trained["val_labels"] == data.val_y.tolist()  # the same files, in the same order
    expected = evaluate(trained["model"], data.val_x, data.val_y, CPU)["accuracy"]
    predictions = predict_files(trained["path"], trained["val_files"])
    assert [p.error for p in predictions] == [""] * len(data.val_y)
    predicted = [config.classes.index(p.predicted) for p in predictions]
    assert np.mean(np.asarray(predicted) == data.val_y) == expected
    probs = np.array([[p.probabilities[c] for c in config.classes] for p in predictions])
    np.testing.assert_allclose(probs, predict_proba(trained["model"], data.val_x, CPU), atol=1e-6)
    assert probs[:, 1].std() > 1e-3  # the scores depend on the image, so the match means something
    loaded = load_model(trained["path"])
    assert loaded.classes == config.classes and loaded.settings == config.image


def test_cli_writes_one_row_per_file_and_never_aborts(trained, tmp_path: Path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for f in trained["val_files"][:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    write_random_bytes(folder / "broken.dcm")
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(app, ["predict", "--model", str(trained["path"]), str(folder),
                                      str(tmp_path / "missing.dcm"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "predicted", "prob_normal", "prob_abnormal", "error", "warning"]
    assert len(rows) == 5
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["broken.dcm"]["error"] == "not a DICOM file" and by_name["broken.dcm"]["predicted"] == ""
    assert by_name["missing.dcm"]["error"] == "file not found"
    good = [r for r in rows if not r["error"]]
    assert len(good) == 3
    for r in good:
        assert r["predicted"] in ("normal", "abnormal")
        assert abs(float(r["prob_normal"]) + float(r["prob_abnormal"]) - 1) < 1e-5
    assert "3 predicted, 2 could not be used" in result.output


def test_mismatched_model_files_are_refused_in_one_line(trained, tmp_path: Path):
    not_ours = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    junk = write_random_bytes(tmp_path / "junk.pt")
    # Three classes declared, two-class weights saved.
    three = trained["config"].with_(classes=("a", "b", "c"))
    wrong = save_checkpoint(tmp_path / "wrong.pt", trained["model"].state_dict(), three, 1)
    for path, phrase in ((not_ours, "not a fedmed model file"), (junk, "not a fedmed model file"),
                         (wrong, "3 classes"), (tmp_path / "absent.pt", "no such model file")):
        with pytest.raises(ModelMismatch, match=phrase):
            load_model(path)
        result = CliRunner().invoke(app, ["predict", "--model", str(path), str(trained["val_files"][0])])
        assert result.exit_code == 2
        message = result.output.strip()
        assert message.startswith("error:") and "\n" not in message and phrase in message


def test_nothing_predicted_exits_non_zero(trained, tmp_path: Path):
    result = CliRunner().invoke(app, ["predict", "--model", str(trained["path"]), str(tmp_path / "absent.dcm"),
                                      "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 1
    assert "nothing could be predicted: file not found" in result.output


def test_files_unlike_the_training_data_are_scored_with_a_warning(trained, tmp_path: Path):
    from dataclasses import replace

    import pydicom
    from pydicom.data import get_testdata_file

    config = trained["config"]
    ct_config = config.with_(image=replace(config.image, modalities=("CT",)))
    ct_model = save_checkpoint(tmp_path / "ct.pt", trained["model"].state_dict(), ct_config, 1)
    payload = torch.load(ct_model, weights_only=True)
    assert payload["trained_on"] == {"modalities": ["CT"], "photometric": "greyscale", "input_size": 32,
                                     "frames": "middle", "source": "run image settings"}
    ct_file = trained["val_files"][0]
    mr_file = tmp_path / "mr.dcm"
    ds = pydicom.dcmread(ct_file)
    ds.Modality = "MR"
    ds.save_as(mr_file)
    small = tmp_path / "small.dcm"
    ds = pydicom.dcmread(ct_file)
    ds.PixelData = np.zeros((16, 16), dtype=np.uint16).tobytes()
    ds.Rows, ds.Columns = 16, 16
    ds.save_as(small)
    colour = Path(get_testdata_file("SC_rgb_small_odd.dcm", download=False) or pytest.skip("no test file"))
    by_name = {Path(p.path).name: p for p in predict_files(ct_model, [ct_file, mr_file, small, colour])}
    assert by_name[ct_file.name].warning == ""
    assert by_name["mr.dcm"].warning == "MR modality (the model was trained on CT)"
    assert by_name["mr.dcm"].probabilities  # still scored
    assert by_name["small.dcm"].warning == "image of 16x16 pixels upscaled to the model's 32x32 input"
    assert "OT modality (the model was trained on CT)" in by_name[colour.name].warning
    assert "colour image (the model was trained on greyscale CT)" in by_name[colour.name].warning

    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", "--model", str(ct_model), str(mr_file), "--out", str(out)])
    assert result.exit_code == 0
    assert "1 file(s) unlike the model's training data" in result.output
    assert list(csv.DictReader(out.open()))[0]["warning"] == "MR modality (the model was trained on CT)"
    # A model that declares no modality says so instead of staying silent.
    result = CliRunner().invoke(app, ["predict", "--model", str(trained["path"]), str(mr_file), "--out", str(out)])
    assert "does not say which modality it was trained on" in result.output


def test_all_frames_policy_scores_the_mean_of_the_frames(trained, tmp_path: Path):
    from dataclasses import replace

    from pydicom.data import get_testdata_file

    from fedmed.client.imaging import load_images

    config = trained["config"]
    every = config.with_(image=replace(config.image, frames="all"))
    model_path = save_checkpoint(tmp_path / "all.pt", trained["model"].state_dict(), every, 1)
    cine = Path(get_testdata_file("SC_rgb_rle_2frame.dcm", download=False) or pytest.skip("no test file"))
    [prediction] = predict_files(model_path, [cine])
    frames, _ = load_images(cine, every.image)
    expected = predict_proba(trained["model"], frames[:, None], CPU).mean(axis=0)
    np.testing.assert_allclose([prediction.probabilities[c] for c in config.classes], expected, atol=1e-6)
