"""Honest results: a round whose model gives one class everywhere, ranks the classes the
wrong way round, or misses most of a class at a site is said in words under the table
and at the end of the run; balanced accuracy sits next to accuracy."""

from __future__ import annotations

import math

from fedmed.common.model_health import balanced_accuracy, describe, one_class_everywhere, round_flags, site_flags
from fedmed.server import progress

CLASSES = ("normal", "abnormal")


def _row(sites: dict, aggregate: dict | None = None, round_: int = 3) -> dict:
    return {"round": round_, "sites": sites, "aggregate": aggregate or {}, "privacy": {}, "seconds": 1.0}


def test_site_rules():
    assert site_flags("A", {"sensitivity": 0.8, "specificity": 0.7, "auc": 0.85}) == []
    [flag] = site_flags("A", {"sensitivity": 1.0, "specificity": 0.0, "auc": 0.6})
    assert (flag.kind, flag.predicted) == ("one-class", 1)
    kinds = [f.kind for f in site_flags("A", {"sensitivity": 0.0, "specificity": 1.0, "auc": 0.4})]
    assert kinds == ["one-class", "inverted"]
    [weak] = site_flags("A", {"sensitivity": 0.3, "specificity": 0.9, "auc": 0.7})
    assert weak.kind == "weak" and "sensitivity 0.300" in weak.detail
    # Withheld (None) or undefined (NaN) numbers raise nothing.
    assert site_flags("A", {"sensitivity": None, "specificity": None, "auc": math.nan}) == []
    # A confusion matrix decides one-class for any number of classes.
    [flag] = site_flags("A", {"confusion": [[0, 5, 0], [0, 7, 0], [0, 2, 0]]})
    assert (flag.kind, flag.predicted) == ("one-class", 1)
    assert site_flags("A", {"confusion": [[4, 1], [2, 5]], "sensitivity": 0.71, "specificity": 0.8}) == []


def test_balanced_accuracy_prefers_the_rows_own_value():
    assert balanced_accuracy({"balanced_accuracy": 0.61, "sensitivity": 1.0, "specificity": 0.0}) == 0.61
    assert balanced_accuracy({"sensitivity": 0.9, "specificity": 0.5}) == 0.7
    assert balanced_accuracy({"sensitivity": None, "specificity": 0.5}) is None


def test_one_class_everywhere_is_the_headline():
    row = _row({"A": {"sensitivity": 1.0, "specificity": 0.0, "auc": 0.46},
                "B": {"sensitivity": 1.0, "specificity": 0.0, "auc": 0.52},
                "C": {"status": "failed"}})
    assert one_class_everywhere(row) == 1
    lines = describe(row, CLASSES)
    assert "calls every image 'abnormal' at every site" in lines[0]
    assert "worse than chance" in lines[1] and "A (AUC 0.460)" in lines[1]
    mixed = _row({"A": {"sensitivity": 1.0, "specificity": 0.0}, "B": {"sensitivity": 0.7, "specificity": 0.6}})
    assert one_class_everywhere(mixed) is False
    assert describe(mixed, CLASSES) == ["the model gives every image one class at A ('abnormal')"]
    assert [f.site for f in round_flags(mixed)] == ["A"]


def test_table_shows_balanced_accuracy_and_warning_rows():
    assert "bal acc" in progress.header()
    good = _row({"A": {"sensitivity": 0.8, "specificity": 0.9, "auc": 0.9}},
                {"accuracy": 0.85, "sensitivity": 0.8, "specificity": 0.9, "auc": 0.9})
    cells = progress.row(good).split()
    assert cells[3:6] == ["0.850", "0.850", "0.900"]  # acc, balanced accuracy, auc
    assert progress.warnings(good, CLASSES) == [] and progress.final_words(good, CLASSES) is None
    with_value = dict(good, aggregate={**good["aggregate"], "balanced_accuracy": 0.777})
    assert progress.row(with_value).split()[4] == "0.777"
    bad = _row({"A": {"sensitivity": 0.0, "specificity": 1.0, "auc": 0.5}},
               {"accuracy": 0.6, "sensitivity": 0.0, "specificity": 1.0, "auc": 0.5})
    assert progress.row(bad).split()[4] == "0.500"
    [line] = progress.warnings(bad, CLASSES)
    assert line.startswith("  ! round 3:") and "'normal' at every site" in line
    words = progress.final_words(bad, CLASSES)
    assert words.startswith("warning: the final model (round 3)") and "fedmed evaluate" in words
    assert progress.final_words(None) is None


def test_the_coordinator_prints_the_warning_under_the_round(tmp_path):
    import json
    import time

    from fedmed.server.deployment import _follow

    bad = _row({"A": {"sensitivity": 1.0, "specificity": 0.0, "auc": 0.4}}, round_=1)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(bad) + "\n")
    (tmp_path / "status.json").write_text(json.dumps({"status": "completed"}))
    lines: list[str] = []
    assert _follow(tmp_path, [], time.monotonic() + 30, lines.append, classes=CLASSES)["status"] == "completed"
    assert lines[0].split()[0] == "1" and "'abnormal' at every site" in lines[1]
    assert "worse than chance" in lines[2]


def test_the_report_and_the_terminal_share_one_rule():
    from fedmed.server.report_stats import health_flags

    # DP noise makes an empty predicted column a small number either side of zero: still one class.
    noisy = {"confusion": [[40.3, 0.2], [15.8, -0.1]], "sensitivity": 0.01, "specificity": 0.99}
    [flag] = site_flags("A", noisy, CLASSES)
    assert (flag.kind, flag.predicted) == ("one-class", 0)
    assert health_flags(noisy, CLASSES) == ["predicts one class (normal) for every image"]
    # Macro-averaged rates of three classes cannot show one class; only a confusion matrix can.
    assert site_flags("A", {"sensitivity": 0.0, "specificity": 1.0}, ("a", "b", "c"))[0].kind == "weak"
    # A withheld cell makes the matrix unknown; the rates decide. Strings and bools are no numbers.
    [flag] = site_flags("A", {"confusion": [[5, None], [3, 0]], "sensitivity": 0.0, "specificity": 1.0})
    assert (flag.kind, flag.predicted) == ("one-class", 0)
    assert site_flags("A", {"sensitivity": "0.1", "specificity": True, "auc": "0.2"}) == []
    # The report words each low number on its own line, from the same flag.
    c = {"auc": 0.42, "sensitivity": 0.45, "specificity": 0.38}
    assert [f.kind for f in site_flags("C", c, CLASSES)] == ["inverted", "weak"]
    assert health_flags(c, CLASSES) == ["inverted: AUC 0.420 < 0.5", "weak: sensitivity 0.450 < 0.5",
                                        "weak: specificity 0.380 < 0.5"]
