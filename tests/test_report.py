"""`fedmed report`: PNG plots and a self-contained HTML page from a run folder's JSON,
including failed sites, missing metrics and sites without DP."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.server.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FEDERATION = {"rounds": 3, "epochs": 1, "batch_size": 16, "lr": 0.001, "optimizer": "adam",
              "model": "cnn", "classes": ["normal", "abnormal"],
              "image": {"size": 32, "window": None, "mean": 0.5, "std": 0.5},
              "min_sites": 2, "val_fraction": 0.2, "seed": 7, "round_timeout": 600.0}


def _site(acc, auc, loss, eps=None, **extra):
    entry = {"status": "ok", "num_examples": 20, "num_train_examples": 80, "loss": loss,
             "accuracy": acc, "auc": auc, "sensitivity": 0.5, "specificity": 0.75, **extra}
    if eps is not None:
        entry.update({"dp": True, "epsilon": eps, "delta": 1e-5, "noise_multiplier": 1.1})
    return entry


def _write_run(run: Path, records: list[dict], status: dict | None = None) -> Path:
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"federation": FEDERATION, "mode": "simulation",
                                                 "sites": ["A", "B", "C"]}))
    lines = [json.dumps(r) for r in records]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if status is not None:
        (run / "status.json").write_text(json.dumps(status))
    return run


def _records() -> list[dict]:
    """A: DP; B: no DP, AUC undefined (null); C: fails round 2, out of budget in round 3."""
    agg = {"num_examples": 60, "loss": 0.6, "accuracy": 0.7, "auc": 0.72, "sensitivity": 0.5,
           "specificity": 0.7, "worst_site_accuracy": 0.6, "worst_site_auc": 0.7}
    return [
        {"round": 1, "seconds": 12.5, "aggregate": agg, "privacy": {"max_epsilon": 1.5, "no_dp_sites": ["B"]},
         "sites": {"A": _site(0.6, 0.7, 0.69, eps=1.5), "B": _site(0.7, None, 0.65, dp=False),
                   "C": _site(0.8, 0.8, 0.6, eps=1.2)}},
        {"round": 2, "seconds": 3.0, "aggregate": {**agg, "auc": None},
         "privacy": {"max_epsilon": 2.5, "no_dp_sites": ["B"]},
         "sites": {"A": _site(0.65, 0.75, 0.6, eps=2.5), "B": _site(0.72, None, 0.6, dp=False),
                   "C": {"status": "failed", "reason": "train-error:ValueError"}}},
        {"round": 3, "seconds": 3.2, "aggregate": {**agg, "accuracy": 0.74},
         "privacy": {"max_epsilon": 3.25, "no_dp_sites": ["B"]},
         "sites": {"A": _site(0.7, 0.8, 0.55, eps=3.25), "B": _site(0.78, None, 0.5, dp=False),
                   "C": {"status": "budget-exhausted", "reason": "budget"}}},
    ]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_writes_pngs_and_a_self_contained_page(tmp_path: Path):
    run = _write_run(tmp_path / "run", _records(),
                     {"status": "completed", "reason": "", "rounds_completed": 3, "rounds_planned": 3})
    page = write_report(run)
    assert page == run / "report.html"
    text = page.read_text(encoding="utf-8")
    for name in ("accuracy", "auc", "loss", "epsilon", "participation"):
        png = run / "plots" / f"{name}.png"
        width, height = _png_size(png)
        assert width >= 300 and height >= 150, (name, width, height)
        assert png.stat().st_size > 5000
        # Embedded byte for byte: the page needs no other file.
        assert base64.b64encode(png.read_bytes()).decode() in text, name
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 5
    assert 'src="http' not in text and "<script" not in text
    # Final table: C's last round, every site's rounds trained, dashes for missing values.
    assert "out of privacy budget" in text and "rounds trained" in text
    assert "1 / 3" in text and "3 / 3" in text
    assert "–" in text  # B's AUC, C's metrics
    # Privacy summary: A on with its last ε, B off; config values.
    assert "3.25" in text and "1e-05" in text and "1.100" in text
    assert re.search(r"site B</td><td><span class=\"off\">off", text)
    assert "Some sites trained without differential privacy" in text
    assert "<td>seed</td><td>7</td>" in text and "image.size" in text
    assert "completed" in text


def test_report_of_a_failed_run_without_dp_and_with_nan(tmp_path: Path):
    records = _records()[:2]
    for record in records:
        record.pop("privacy")
        for entry in record["sites"].values():
            for key in ("dp", "epsilon", "delta", "noise_multiplier"):
                entry.pop(key, None)
    lines = [json.dumps(r) for r in records]
    # NaN as Python's json writes it, and a last line cut short by a crash.
    lines[1] = lines[1].replace('"loss": 0.6,', '"loss": NaN,', 1)
    run = tmp_path / "failed"
    _write_run(run, [], {"status": "failed", "reason": "too few sites replied",
                         "rounds_completed": 2, "rounds_planned": 3})
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"round": 3, "sit')
    text = write_report(run).read_text(encoding="utf-8")
    assert not (run / "plots" / "epsilon.png").exists()
    for name in ("accuracy", "auc", "loss", "participation"):
        _png_size(run / "plots" / f"{name}.png")
    assert "too few sites replied" in text and "failed" in text
    assert "1 unreadable line(s)" in text
    assert "No site reported differential privacy" in text


def test_report_before_any_round_and_bad_folders(tmp_path: Path):
    run = _write_run(tmp_path / "empty", [])
    text = write_report(run).read_text(encoding="utf-8")
    assert "No round completed" in text and "<img" not in text
    with pytest.raises(ValueError, match="no such run folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="not a run folder"):
        write_report(tmp_path / "other")


def test_cli_report(tmp_path: Path):
    run = _write_run(tmp_path / "run", _records())
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and (run / "report.html").is_file()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2


def test_tensorboard_export_holds_the_rounds_as_scalars(tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _write_run(tmp_path / "run", _records())
    result = CliRunner().invoke(app, ["report", str(run), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    assert "wrote 3 round(s) of TensorBoard scalars" in result.output

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"aggregate/accuracy", "site/accuracy/A", "privacy/epsilon/A", "participation/trained"} <= tags
    assert "privacy/epsilon/B" not in tags  # B trained without DP: no ε to plot
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("aggregate/accuracy")] == \
        [(1, 0.7), (2, 0.7), (3, 0.74)]
    assert [e.value for e in events.Scalars("participation/trained")] == [3, 2, 2]
    # The aggregate AUC of round 2 was undefined (null): skipped, not plotted as 0.
    assert [e.step for e in events.Scalars("aggregate/auc")] == [1, 3]

    (tmp_path / "a-file").write_text("")
    unwritable = CliRunner().invoke(app, ["report", str(run), "--tensorboard", str(tmp_path / "a-file" / "tb")])
    assert unwritable.exit_code == 2 and "--tensorboard" in unwritable.output and "cannot write there" in unwritable.output


def test_a_deployed_runs_report_names_its_enrolled_sites_not_their_node_ids(tmp_path: Path):
    run = _write_run(tmp_path / "deployed", _records())
    config = json.loads((run / "config.json").read_text())
    node_ids = {"17655940197608285579": "A", "2886689943375252740": "B", "9100000000000000042": "C"}
    (run / "config.json").write_text(json.dumps({**config, "mode": "deployment", "sites": node_ids}))
    text = write_report(run).read_text(encoding="utf-8")
    assert not any(node_id in text for node_id in node_ids)
    from fedmed.server.report import _read_run

    assert _read_run(run).sites == ["A", "B", "C"]
