"""Confidence intervals for ROC AUC.

Two classes: DeLong's nonparametric variance (DeLong, DeLong & Clarke-Pearson 1988,
"Comparing the areas under two or more correlated receiver operating characteristic
curves: a nonparametric approach", Biometrics 44:837), computed from mid-ranks as in Sun &
Xu 2014 ("Fast implementation of DeLong's algorithm", IEEE Signal Processing Letters
21:1389), and a Wald interval AUC ± z·SE clipped to [0, 1].

More classes: the macro one-vs-rest AUC has no such closed form here, so its interval is
the percentile bootstrap (Efron & Tibshirani 1993, "An Introduction to the Bootstrap",
ch. 13), resampling images within each true class so every resample keeps the class mix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # standard normal 97.5 % quantile
DELONG = "DeLong (1988), Wald interval"
BOOTSTRAP = "stratified percentile bootstrap (Efron & Tibshirani 1993)"


@dataclass(frozen=True)
class AucInterval:
    auc: float
    low: float
    high: float
    method: str

    def to_dict(self) -> dict:
        return {"auc": self.auc, "low": self.low, "high": self.high, "level": 0.95, "method": self.method}


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [len(x)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def delong_interval(scores: np.ndarray, positives: np.ndarray, z: float = Z_95) -> AucInterval:
    """AUC of `scores` for `positives` with DeLong's 95 % interval (NaN when a class is
    absent; an interval of zero width when one class has a single image)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    x, y = scores[positives], scores[~positives]
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return AucInterval(math.nan, math.nan, math.nan, DELONG)
    all_ranks = _midranks(np.concatenate([x, y]))
    # Placement values: the share of the other class each image outranks (ties half).
    v10 = (all_ranks[:m] - _midranks(x)) / n
    v01 = 1.0 - (all_ranks[m:] - _midranks(y)) / m
    auc = float(v10.mean())
    s10 = float(v10.var(ddof=1)) if m > 1 else 0.0
    s01 = float(v01.var(ddof=1)) if n > 1 else 0.0
    se = math.sqrt(s10 / m + s01 / n)
    return AucInterval(auc, max(0.0, auc - z * se), min(1.0, auc + z * se), DELONG)


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes present (and with another class present)."""
    values = [delong_interval(probs[:, c], labels == c).auc for c in range(probs.shape[1])]
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def bootstrap_interval(probs: np.ndarray, labels: np.ndarray, resamples: int = 1000,
                       seed: int = 0) -> AucInterval:
    """Macro one-vs-rest AUC with a stratified percentile bootstrap 95 % interval."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    auc = macro_auc(probs, labels)
    if math.isnan(auc):
        return AucInterval(math.nan, math.nan, math.nan, BOOTSTRAP)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    values = []
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        values.append(macro_auc(probs[idx], labels[idx]))
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return AucInterval(auc, float(low), float(high), BOOTSTRAP)


def auc_interval(probs: np.ndarray, labels: np.ndarray) -> AucInterval:
    """DeLong for two classes (class 1 positive), the bootstrap for more."""
    probs = np.asarray(probs)
    if probs.shape[1] == 2:
        return delong_interval(probs[:, 1], np.asarray(labels) == 1)
    return bootstrap_interval(probs, labels)
