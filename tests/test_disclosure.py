"""Small cells: a site's per-class rates are withheld when a held-out class is small."""

from __future__ import annotations

import math

import numpy as np

from fedmed.client.privacy.disclosure import MIN_CELL_SIZE, suppress_small_cells

METRICS = {"loss": 0.5, "accuracy": 0.8, "auc": 0.9, "sensitivity": 0.7, "specificity": 0.85}


def _counts(accuracy, sensitivity, specificity, total):
    """What a coordinator could work out: P from acc = (sens·P + spec·(n − P)) / n."""
    return round((accuracy - specificity) * total / (sensitivity - specificity))


def test_rates_of_a_split_with_a_small_class_are_withheld():
    labels = np.array([0] * 40 + [1] * (MIN_CELL_SIZE - 1))
    sent = suppress_small_cells(METRICS, labels, 2)
    assert math.isnan(sent["sensitivity"]) and math.isnan(sent["specificity"])
    assert {k: sent[k] for k in ("loss", "accuracy", "auc")} == {"loss": 0.5, "accuracy": 0.8, "auc": 0.9}


def test_an_absent_class_counts_as_small():
    sent = suppress_small_cells(METRICS, np.zeros(50, dtype=int), 2)
    assert math.isnan(sent["sensitivity"]) and math.isnan(sent["specificity"])


def test_large_cells_are_sent_and_would_indeed_give_the_counts():
    labels = np.array([0] * 30 + [1] * 20)
    sent = suppress_small_cells(METRICS, labels, 2)
    assert sent == METRICS
    # Why the rule exists: the rates and the split's size give the class counts.
    p = 3
    sens, spec = 2 / 3, 40 / 47
    acc = (sens * p + spec * 47) / 50
    assert _counts(acc, sens, spec, 50) == p
