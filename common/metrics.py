"""Classification metrics of held-out splits: from predictions, and from score histograms.

A site never sends predictions. For a binary task it sends, per true class k, a histogram
of the model's score P(class 1) in `HIST_BINS` bins (`score_histograms`; key
`histogram_key(k)`), noised when its DP is on. The bins are equal-width in the score's
logit, log(p / (1 − p)), on [−LOGIT_RANGE, LOGIT_RANGE] (`bin_edges`), not in p: a model
trained with DP often puts every score within a few hundredths of 0 or 1, where
equal-width bins in p would hold all images in one bin and lose their ranking. Everything else
is derived from those histograms (`histogram_metrics`), at the site and again at the
coordinator, which pools the sites' histograms into one, chooses the federation's
operating threshold on it (`choose_threshold`: the largest balanced accuracy, i.e.
Youden's J; Youden 1950, "Index for rating diagnostic tests") and reports every site at
that threshold (`evaluation_round`). Histograms summarise a score to its bin, so AUC and
the ROC are those of the binned score (ties within a bin counted half), and the threshold
is a bin edge. The example-weighted mean over sites (`aggregate_sites`) remains for runs
without histograms.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

METRIC_NAMES = ("loss", "accuracy", "auc", "sensitivity", "specificity")
HIST_BINS = 20
"""Bins of the score histograms; a reader takes B from the list's length."""
LOGIT_RANGE = 8.0
"""The inner bin edges span logits −8..8 (scores 0.0003..0.9997); the two outer bins
take everything beyond, so every score has a bin. Edges are fixed, never fitted to data."""
DEFAULT_THRESHOLD = 0.5


def histogram_key(true_class: int) -> str:
    """The evaluation reply's key of the score histogram of images of ``true_class``."""
    return f"score-hist-{true_class}"


def bin_edges(bins: int) -> np.ndarray:
    """The B + 1 score edges of B histogram bins: 0, then equal steps in logit from
    −LOGIT_RANGE to LOGIT_RANGE, then 1 (with B even, 0.5 is an edge)."""
    logits = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins - 1) if bins > 2 else np.zeros(bins - 1)
    return np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-logits)), [1.0]])


def score_histograms(scores: np.ndarray, labels: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """(2, bins) counts of the score P(class 1) per true class (0, 1), in the bins of
    `bin_edges`; a score on an edge falls in the bin above it, a score of 1 in the last."""
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    index = np.clip(np.searchsorted(bin_edges(bins), scores, side="right") - 1, 0, bins - 1)
    out = np.zeros((2, bins), dtype=np.float64)
    for k in (0, 1):
        out[k] = np.bincount(index[np.asarray(labels) == k], minlength=bins)
    return out


def consistent_counts(noised: np.ndarray) -> np.ndarray:
    """Non-negative counts closest to noised ones, row by row: the least-squares
    non-decreasing fit of each row's cumulative sums (pool-adjacent-violators), floored at
    0, differenced back into bins. Constrained inference in the manner of Hay et al. 2010
    ("Boosting the accuracy of differentially private histograms through consistency"):
    post-processing, so it costs no privacy, and unlike setting negative bins to 0 it does
    not add the noise of every empty bin to the counts (which drags AUC towards 0.5)."""
    out = np.empty_like(np.asarray(noised, dtype=np.float64))
    for i, row in enumerate(np.asarray(noised, dtype=np.float64)):
        blocks: list[list[float]] = []  # [mean, weight]
        for value in np.cumsum(row):
            blocks.append([float(value), 1.0])
            while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
                (m1, w1), (m2, w2) = blocks[-2], blocks[-1]
                blocks[-2:] = [[(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2]]
        cumulative = np.maximum(np.repeat([m for m, _ in blocks], [int(w) for _, w in blocks]), 0.0)
        out[i] = np.diff(np.concatenate([[0.0], cumulative]))
    return out


def read_histograms(metrics: Mapping[str, object]) -> np.ndarray | None:
    """The (2, B) histograms in a site's reply as consistent counts (`consistent_counts`:
    noised counts may be negative); None when the reply has none (an older site, a
    multi-class task, withheld)."""
    rows = []
    for k in (0, 1):
        value = metrics.get(histogram_key(k))
        if not isinstance(value, (list, tuple)) or not value:
            return None
        rows.append([float(v) for v in value])
    if len(rows[0]) != len(rows[1]) or not all(math.isfinite(v) for row in rows for v in row):
        return None
    return consistent_counts(np.asarray(rows, dtype=np.float64))


def roc_from_histograms(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """ROC points (fpr, tpr) at every bin edge, from (0, 0) (threshold above every score)
    to (1, 1) (threshold 0); empty lists when a class has no weight."""
    neg, pos = hist[0], hist[1]
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg <= 0 or n_pos <= 0:
        return [], []
    # threshold at edge j (j = B .. 0): positive when the score's bin index >= j
    tp = np.concatenate([[0.0], np.cumsum(pos[::-1])])
    fp = np.concatenate([[0.0], np.cumsum(neg[::-1])])
    return [float(v) for v in fp / n_neg], [float(v) for v in tp / n_pos]


def auc_from_histograms(hist: np.ndarray) -> float:
    """Area under the histogram ROC (trapezoids): the Mann–Whitney AUC of the binned score."""
    fpr, tpr = roc_from_histograms(hist)
    if not fpr:
        return math.nan
    return float(np.trapezoid(tpr, fpr))


def confusion_at(hist: np.ndarray, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]] ([true][predicted]) when a score >= ``threshold`` is class 1
    (``threshold`` is taken to the nearest bin edge)."""
    edge = int(np.argmin(np.abs(bin_edges(hist.shape[1]) - threshold)))
    neg, pos = hist[0], hist[1]
    return np.array([[neg[:edge].sum(), neg[edge:].sum()], [pos[:edge].sum(), pos[edge:].sum()]])


def choose_threshold(hist: np.ndarray) -> float:
    """The bin edge with the largest balanced accuracy (Youden's J); ties go to the edge
    nearest 0.5, and 0.5 is kept when a class has no weight."""
    bins = hist.shape[1]
    if hist[0].sum() <= 0 or hist[1].sum() <= 0:
        return DEFAULT_THRESHOLD
    best, best_key = DEFAULT_THRESHOLD, None
    for t in bin_edges(bins).tolist():
        key = (_rates(confusion_at(hist, t))[2], -abs(t - DEFAULT_THRESHOLD))
        if best_key is None or key > best_key:
            best, best_key = t, key
    return best


def _rates(confusion: np.ndarray) -> tuple[float, float, float]:
    """Sensitivity, specificity and balanced accuracy of a 2×2 confusion matrix."""
    (tn, fp), (fn, tp) = confusion
    sens = tp / (tp + fn) if tp + fn > 0 else math.nan
    spec = tn / (tn + fp) if tn + fp > 0 else math.nan
    balanced = _nanmean([sens, spec])
    return float(sens), float(spec), balanced


def histogram_metrics(hist: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, object]:
    """Every metric of a held-out split derived from its score histograms, at ``threshold``.

    The loss is the cross-entropy of each bin's middle score (the midpoint of its edges
    in logit; an approximation: the histogram keeps no finer score).
    """
    total = float(hist.sum())
    confusion = confusion_at(hist, threshold)
    sens, spec, balanced = _rates(confusion)
    centres = bin_centres(hist.shape[1])
    loss = (-(hist[1] * np.log(centres)).sum() - (hist[0] * np.log(1 - centres)).sum()) / total \
        if total > 0 else math.nan
    fpr, tpr = roc_from_histograms(hist)
    return {
        "num_examples": total,
        "loss": float(loss),
        "accuracy": float((confusion[0, 0] + confusion[1, 1]) / total) if total > 0 else math.nan,
        "balanced_accuracy": balanced,
        "auc": auc_from_histograms(hist),
        "sensitivity": sens,
        "specificity": spec,
        "confusion": [[float(v) for v in row] for row in confusion],
        "roc": {"fpr": fpr, "tpr": tpr},
        "threshold": float(threshold),
    }


def bin_centres(bins: int) -> np.ndarray:
    """Each bin's middle score: the sigmoid of its edges' mean logit (the outer bins: half
    a step beyond the last inner edge)."""
    logits = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins - 1) if bins > 2 else np.zeros(bins - 1)
    step = logits[1] - logits[0] if bins > 2 else 2 * LOGIT_RANGE
    middle = np.concatenate([[logits[0] - step / 2], (logits[:-1] + logits[1:]) / 2, [logits[-1] + step / 2]])
    return 1.0 / (1.0 + np.exp(-middle))


def evaluation_round(site_metrics: Mapping[str, Mapping[str, object]]) -> tuple[dict[str, dict], dict | None]:
    """The coordinator's view of one evaluation round: per site, the metrics derived from
    its histograms at the pooled threshold; and the pooled metrics (with ``threshold``),
    or None when no site sent histograms."""
    hists = {name: h for name, m in site_metrics.items() if (h := read_histograms(m)) is not None}
    if not hists:
        return {}, None
    shapes = {h.shape for h in hists.values()}
    if len(shapes) != 1:  # sites binned differently: no pooling, each at its own threshold
        return {name: histogram_metrics(h, choose_threshold(h)) for name, h in hists.items()}, None
    pooled = sum(hists.values())
    threshold = choose_threshold(pooled)
    per_site = {name: histogram_metrics(h, threshold) for name, h in hists.items()}
    return per_site, histogram_metrics(pooled, threshold)


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
