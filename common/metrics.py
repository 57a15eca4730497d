"""Classification metrics a site computes on its held-out split, and their aggregation.

Sites compute these from their own predictions; only the resulting numbers leave a site.
The federation's aggregate of a metric is the example-weighted mean over sites — the
coordinator never sees predictions, so a pooled ROC AUC cannot be computed.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

METRIC_NAMES = ("loss", "accuracy", "auc", "sensitivity", "specificity")


def binary_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC as the Mann–Whitney U statistic, ties counted half (Hanley & McNeil, 1982).

    NaN when only one class is present: the AUC is undefined there, not 0.5.
    """
    positives = positives.astype(bool)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    i = 0
    while i < scores.size:
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _sensitivity_specificity(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = float(np.sum(pred & truth))
    fn = float(np.sum(~pred & truth))
    tn = float(np.sum(~pred & ~truth))
    fp = float(np.sum(pred & ~truth))
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    return sens, spec


def classification_metrics(probs: np.ndarray, labels: np.ndarray, loss: float) -> dict[str, float]:
    """Accuracy, ROC AUC, sensitivity and specificity from class probabilities.

    Binary: class 1 is the positive class. More classes: one-vs-rest, macro-averaged over
    the classes present (a class absent from the labels has no defined AUC/sensitivity).
    """
    num_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    out = {"loss": float(loss), "accuracy": float(np.mean(pred == labels)) if labels.size else math.nan}
    if num_classes == 2:
        out["auc"] = binary_auc(probs[:, 1], labels == 1)
        out["sensitivity"], out["specificity"] = _sensitivity_specificity(pred == 1, labels == 1)
        return out
    aucs, senss, specs = [], [], []
    for c in range(num_classes):
        truth = labels == c
        if not truth.any():
            continue
        aucs.append(binary_auc(probs[:, c], truth))
        s, p = _sensitivity_specificity(pred == c, truth)
        senss.append(s)
        specs.append(p)
    out["auc"] = _nanmean(aucs)
    out["sensitivity"] = _nanmean(senss)
    out["specificity"] = _nanmean(specs)
    return out


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def aggregate_sites(sites: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Example-weighted mean of each metric over the sites that have it, plus the worst
    site's accuracy and AUC.

    A site whose metric is NaN (e.g. AUC on a one-class split) is left out of that
    metric's mean rather than poisoning it.
    """
    out: dict[str, float] = {}
    total = sum(float(m.get("num_examples", 0)) for m in sites.values())
    out["num_examples"] = total
    for name in METRIC_NAMES:
        pairs = [
            (float(m["num_examples"]), float(m[name]))
            for m in sites.values()
            if name in m and not math.isnan(float(m[name])) and m.get("num_examples", 0)
        ]
        weight = sum(w for w, _ in pairs)
        out[name] = sum(w * v for w, v in pairs) / weight if weight else math.nan
    for name in ("accuracy", "auc"):
        values = [float(m[name]) for m in sites.values() if name in m and not math.isnan(float(m[name]))]
        out[f"worst_site_{name}"] = min(values) if values else math.nan
    return out
