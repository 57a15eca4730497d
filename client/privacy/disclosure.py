"""What a site's evaluation reply discloses about its held-out images, and how.

The coordinator chooses the model a site evaluates, so every evaluation metric is a query
it wrote on the site's held-out patients: a model that calls everything class 1 turns
"accuracy × N" into the exact count of class-1 images. A site therefore releases its
held-out results in one of two ways (`PrivacyPolicy.private_metrics`, the site's choice):

* **private** (the default with DP on): per true class, the histogram of the model's score
  P(class 1) in `HIST_BINS` bins, plus independent Gaussian noise of standard deviation σ
  in every bin -- the Gaussian mechanism (Dwork & Roth 2014, "The Algorithmic Foundations
  of Differential Privacy", §3.5.3; the analytic calibration of Balle & Wang 2018,
  "Improving the Gaussian Mechanism for Differential Privacy"). Adding or removing one
  image moves one count of one bin by 1, so the L2 sensitivity is 1 and the release is
  the history entry (σ, 1, 1), charged to the ledger as its own ``gaussian`` row. Every
  other number of the reply -- the example count, loss, accuracy, AUC, sensitivity,
  specificity -- is derived from the noised histograms (post-processing: no extra ε).
  The site derives them as the coordinator does, from the noised counts made consistent
  (non-negative, `fedmed.common.metrics.consistent_counts`). Multi-class tasks release
  nothing private yet (all metrics NaN).
* **open** (``--no-dp`` sites, or ``--no-dp-metrics`` for trials): the exact metrics and
  histograms, recorded as such. Then the small-cell rule of statistical disclosure control
  applies: while a held-out class has fewer than `MIN_CELL_SIZE` images, the per-class
  rates and the histograms (whose sums are the class counts) are withheld.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from fedmed.common.metrics import (
    classification_metrics,
    consistent_counts,
    histogram_key,
    histogram_metrics,
    score_histograms,
)
from fedmed.common.protocol import WEIGHT_KEY

MIN_CELL_SIZE = 10
PER_CLASS_RATES = ("sensitivity", "specificity", "balanced_accuracy")
DERIVED = ("loss", "accuracy", "auc", "sensitivity", "specificity", "balanced_accuracy")


def suppress_small_cells(metrics: Mapping[str, float], labels: np.ndarray, num_classes: int,
                         min_cell: int = MIN_CELL_SIZE) -> dict[str, float]:
    """`metrics` with the per-class rates set to NaN when a class of `labels` has fewer
    than `min_cell` records (an absent class included)."""
    if not has_small_cell(labels, num_classes, min_cell):
        return dict(metrics)
    return {name: (math.nan if name in PER_CLASS_RATES else value) for name, value in metrics.items()}


def has_small_cell(labels: np.ndarray, num_classes: int, min_cell: int = MIN_CELL_SIZE) -> bool:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return not (len(counts) and counts.min() >= min_cell)


def private_release(probs: np.ndarray, labels: np.ndarray, noise_multiplier: float,
                    rng: np.random.Generator) -> dict[str, object]:
    """The reply's metrics from noised score histograms (binary tasks; see module docstring)."""
    if probs.shape[1] != 2:
        return {WEIGHT_KEY: 0, **{name: math.nan for name in DERIVED}}
    exact = score_histograms(probs[:, 1], labels)
    noised = exact + rng.normal(0.0, noise_multiplier, size=exact.shape)
    derived = histogram_metrics(consistent_counts(noised))
    # At least 1 for a split that has images: the noised count of a small split is often
    # near 0, and a weight of 0 would drop the site from every mean (post-processing).
    count = max(1, int(round(derived["num_examples"]))) if len(labels) else 0
    return {
        WEIGHT_KEY: count,
        **{name: float(derived[name]) for name in DERIVED},
        **{histogram_key(k): [float(v) for v in noised[k]] for k in (0, 1)},
    }


def open_release(probs: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """The exact metrics (and, for a binary task without small cells, the histograms)."""
    num_classes = probs.shape[1]
    if len(labels) == 0:
        return {WEIGHT_KEY: 0, **{name: math.nan for name in DERIVED}}
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0))))
    metrics = classification_metrics(probs, labels, loss)
    out: dict[str, object] = {WEIGHT_KEY: int(len(labels))}
    if num_classes == 2:
        hist = score_histograms(probs[:, 1], labels)
        metrics["balanced_accuracy"] = (metrics["sensitivity"] + metrics["specificity"]) / 2
        if not has_small_cell(labels, num_classes):
            out.update({histogram_key(k): [float(v) for v in hist[k]] for k in (0, 1)})
    out.update(suppress_small_cells(metrics, labels, num_classes))
    return out
