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
    for name in ("accuracy", "auc", "loss", "sensitivity_specificity", "epsilon", "participation"):
        png = run / "plots" / f"{name}.png"
        width, height = _png_size(png)
        assert width >= 300 and height >= 150, (name, width, height)
        assert png.stat().st_size > 5000
        # Embedded byte for byte: the page needs no other file.
        assert base64.b64encode(png.read_bytes()).decode() in text, name
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 6
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
    assert "Results of the last completed round (2 of 3: the run stopped early)" in text
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


# --- what the report tells a clinician: time, health flags, ROC, confusion, intervals -----


def _evaluated(acc, auc, sens, spec, confusion, roc=None, **extra):
    n = sum(sum(row) for row in confusion)
    entry = {"status": "ok", "num_examples": n, "num_train_examples": 4 * n, "loss": 0.5,
             "accuracy": acc, "auc": auc, "sensitivity": sens, "specificity": spec,
             "balanced_accuracy": None if sens is None else (sens + spec) / 2, "confusion": confusion,
             **extra}
    if roc is not None:
        entry["roc"] = roc
    return entry


def _health_run(tmp_path: Path) -> Path:
    """A good; B calls everything normal (sensitivity 0.062 before, 0 at the end); C's
    scores are inverted; D withheld its rates (small cells) and sent no confusion."""
    good_roc = {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.7, 0.9, 1.0]}
    rows = []
    for rnd, b_sens in ((1, 0.062), (2, 0.0)):
        b_conf = [[40, 0], [16, 0]] if b_sens == 0.0 else [[40, 0], [15, 1]]
        sites = {
            "A": _evaluated(0.85, 0.9, 0.8, 0.88, [[44, 6], [6, 24]], good_roc),
            "B": _evaluated(0.71, 0.66, b_sens, 1.0, b_conf,
                            {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0]}),
            "C": _evaluated(0.4, 0.42, 0.45, 0.38, [[15, 25], [11, 9]],
                            {"fpr": [0.0, 0.6, 1.0], "tpr": [0.0, 0.45, 1.0]}),
            "D": {"status": "ok", "num_examples": 12, "loss": 0.6, "accuracy": 0.75, "auc": 0.8,
                  "sensitivity": None, "specificity": None},
        }
        rows.append({"round": rnd, "seconds": 2.0,
                     "aggregate": {"num_examples": 208, "loss": 0.55, "accuracy": 0.68, "auc": 0.7,
                                   "balanced_accuracy": 0.65, "sensitivity": 0.5, "specificity": 0.8,
                                   "threshold": 0.42, "worst_site_accuracy": 0.4, "worst_site_auc": 0.42},
                     "privacy": {"max_epsilon": None, "no_dp_sites": ["A", "B", "C", "D"]},
                     "sites": {k: {**v, "dp": False} for k, v in sites.items()}})
    run = tmp_path / "health"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "federation": FEDERATION, "started_at": "2026-11-30T10:00:00+00:00", "fedmed_version": "9.8.7",
        # A TLS deployment's {node id: name}: only names may show.
        "sites": {"7340123456789": "A", "99812345": "B", "5551234": "C", "4441234": "D"}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "status.json").write_text(json.dumps({
        "status": "completed", "reason": "", "rounds_completed": 2, "rounds_planned": 2,
        "finished_at": "2026-11-30T10:05:03+00:00"}))
    return run


@pytest.fixture(scope="module")
def health_report(tmp_path_factory) -> tuple[Path, str]:
    run = _health_run(tmp_path_factory.mktemp("health"))
    return run, write_report(run).read_text(encoding="utf-8")


def test_report_says_when_how_long_and_which_fedmed(health_report):
    from fedmed.server.report import fedmed_version

    _, text = health_report
    assert "started 2026-11-30 10:00:00 UTC, ended 2026-11-30 10:05:03 UTC, duration 5 min 03 s" in text
    assert "run with fedmed 9.8.7" in text and f"report by fedmed {fedmed_version()}" in text
    assert "7340123456789" not in text  # node IDs never appear, only site names


def test_report_flags_one_class_inverted_and_weak_sites(health_report):
    run, text = health_report
    # Never a bare green "completed" when the model is not one to trust.
    assert 'class="status completed flagged"' in text
    assert "The final model is not one to trust at 2 site(s): B, C" in text
    assert "<b>site B</b>: predicts one class (normal) for every image" in text
    assert "<b>site C</b>: inverted: AUC 0.420 &lt; 0.5; weak: sensitivity 0.450 &lt; 0.5" in text
    assert "Rounds with a flag: 1, 2 of 2" in text
    # Round 1: B's sensitivity of 0.062 is a weak-site flag in the rounds table.
    assert "site B: weak" in text
    # The all-sites rates leave out D, which withheld them, and say so.
    assert "The sensitivity of “all sites” leaves out site D, which withheld it" in text
    assert "operating threshold 0.420" in text
    # ROC and confusion plots of the final round; intervals under the values.
    for name in ("roc", "confusion", "sensitivity_specificity"):
        width, height = _png_size(run / "plots" / f"{name}.png")
        assert width >= 300 and height >= 200
    assert re.search(r'0\.900<br><span class="ci">0\.8\d–0\.9\d</span>', text)  # A's AUC
    assert "balanced accuracy" in text


def test_report_without_flags_is_green_and_says_why(tmp_path: Path):
    run = _health_run(tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row["sites"] = {"A": row["sites"]["A"]}
        row["aggregate"].update(sensitivity=0.8, specificity=0.88, auc=0.9)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(run).read_text(encoding="utf-8")
    assert 'class="status completed">' in text and "No flag on round 2" in text


def test_report_of_a_run_stopped_before_round_one(tmp_path: Path):
    run = _write_run(tmp_path / "early", [], {"status": "failed", "reason": "too few sites joined",
                                               "rounds_completed": 0, "rounds_planned": 3})
    text = write_report(run).read_text(encoding="utf-8")
    assert "without DP noise" not in text
    assert "No round completed: this run recorded no model update from any site" in text
    assert "(from the run folder's file times)" in text  # an older run folder: no recorded times


def test_confidence_intervals():
    from fedmed.server.report_stats import auc_interval, health_flags, wilson_interval

    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0.0, 10)[0] == 0.0 and wilson_interval(1.0, 10)[1] == 1.0
    assert wilson_interval(None, 10) is None and wilson_interval(0.5, 0) is None
    low, high = auc_interval(0.8, 50, 50)  # Hanley & McNeil: SE 0.0445 for A = 0.8, 50 + 50
    assert low == pytest.approx(0.8 - 1.96 * 0.0445, abs=2e-3) and high == pytest.approx(0.8 + 1.96 * 0.0445, abs=2e-3)
    assert auc_interval(0.8, 0, 50) is None
    assert health_flags({"sensitivity": 0.0, "specificity": 1.0}, ("n", "a")) == [
        "predicts one class (n) for every image"]
    # DP noise makes an empty predicted column a small number; it is still one class.
    assert health_flags({"confusion": [[40.3, 0.2], [15.8, -0.1]]}, ("n", "a")) == [
        "predicts one class (n) for every image"]
    assert health_flags({"auc": 0.9, "sensitivity": 0.7, "specificity": 0.8}, ("n", "a")) == []


def test_a_deployed_runs_report_names_its_enrolled_sites_not_their_node_ids(tmp_path: Path):
    run = _write_run(tmp_path / "deployed", _records())
    config = json.loads((run / "config.json").read_text())
    node_ids = {"17655940197608285579": "A", "2886689943375252740": "B", "9100000000000000042": "C"}
    (run / "config.json").write_text(json.dumps({**config, "mode": "deployment", "sites": node_ids}))
    text = write_report(run).read_text(encoding="utf-8")
    assert not any(node_id in text for node_id in node_ids)
    from fedmed.server.report import _read_run

    assert _read_run(run).sites == ["A", "B", "C"]
