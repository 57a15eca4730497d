"""A model's operating threshold: how class probabilities become a decision.

A binary fedmed model may carry a `threshold` (saved in its checkpoint, see
`fedmed.common.checkpoint`): an image is called class 1 (the positive class) when
P(class 1) ≥ threshold. Without one, and for more than two classes, the decision is the
most probable class (arg-max; for two classes that is a threshold of 0.5).

Where a saved model's threshold comes from, in order:

1. the round's aggregate `threshold` in `metrics.jsonl`, chosen by the coordinator from
   the sites' privately released score histograms (`fedmed.common.metrics`);
2. otherwise the rule that needs no site statistic: arg-max, recorded as
   `threshold_rule = "argmax"`. It is the balanced choice for a model whose training
   weighted both classes equally; for a model trained on imbalanced classes it leans
   towards the majority class, which `fedmed evaluate` shows as unequal sensitivity and
   specificity, together with the threshold that would balance them on the local data.

`fedmed pretrain` chooses its model's threshold on its own held-out split (data the
coordinator may use) with `balanced_threshold`.

Every threshold fedmed chooses on validation data follows one rule, `pick_cutoff`: the
cut-off where sensitivity and specificity are closest (the equal-error point), used on
exact scores (`balanced_threshold`) and on score histograms
(`fedmed.common.metrics.choose_threshold`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

ARGMAX_RULE = "argmax"
SITES_RULE = "sites' pooled validation scores"


def check_threshold(value: Any, num_classes: int, where: str = "threshold") -> float | None:
    """`value` as a threshold for a model with `num_classes` classes, or None (arg-max).

    Raises ValueError naming `where` for anything else than a number in [0, 1], or a
    threshold on a model with more than two classes."""
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number in [0, 1], got {value!r}") from None
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ValueError(f"{where}: expected a number in [0, 1], got {value!r}")
    if num_classes != 2:
        raise ValueError(f"{where}: a threshold applies to two-class models only; "
                         f"this one has {num_classes} classes")
    return t


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Predicted class index per row of `probs` (N, classes): class 1 when P(class 1) ≥
    threshold for a binary model with a threshold, else the arg-max."""
    probs = np.asarray(probs)
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return (probs[:, 1] >= threshold).astype(np.int64)


def threshold_from_round(record: Mapping[str, Any] | None) -> float | None:
    """The aggregate operating threshold a `metrics.jsonl` row carries, or None (older
    runs, multi-class runs and runs whose sites send no score histograms have none)."""
    if not record:
        return None
    value = (record.get("aggregate") or {}).get("threshold")
    try:
        t = float(value)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and 0.0 <= t <= 1.0 else None


def pick_cutoff(cutoffs: np.ndarray, sensitivity: np.ndarray, specificity: np.ndarray) -> int:
    """Index of the operating cut-off among candidates, given the sensitivity and
    specificity each gives on validation data: the one where the two are closest (the
    equal-error point); ties go to the larger balanced accuracy, then to the cut-off
    nearest 0.5.

    Why not the largest balanced accuracy (Youden's J; Youden 1950, "Index for rating
    diagnostic tests"): near its maximum J is flat, so which cut-off wins is decided by a
    few images, and by the noise of DP-noised histograms. Sensitivity − specificity falls
    steadily as the cut-off rises, so the point where it crosses 0 is pinned by all the
    images on either side. Measured on the validation scores of nine DP-trained
    PneumoniaMNIST models (docs/privacy.md, "The operating threshold"): over bootstrap
    resamples of the validation split the equal-error bin edge moved less than J's best
    edge at eight of them and as little at the ninth (standard deviation 0.26 against 0.58
    in logit, on average), at the same validation balanced accuracy (0.882 for both)."""
    cutoffs = np.asarray(cutoffs, dtype=np.float64)
    sens = np.asarray(sensitivity, dtype=np.float64)
    spec = np.asarray(specificity, dtype=np.float64)
    gap = np.abs(sens - spec)
    balanced = (sens + spec) / 2
    close = np.isclose(gap, gap.min(), rtol=0, atol=1e-12)
    best = np.flatnonzero(close & np.isclose(balanced, balanced[close].max(), rtol=0, atol=1e-12))
    return int(best[np.argmin(np.abs(cutoffs[best] - 0.5))])


def balanced_threshold(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """The cut-off on `scores` (P(class 1)) that `pick_cutoff` chooses: sensitivity and
    specificity as equal as the scores allow. None when a class is absent.

    The cut-off is placed halfway between adjacent distinct scores, so the decision on the
    scores it was chosen on does not hinge on floating-point equality."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    distinct = np.unique(scores)
    candidates = np.concatenate([[0.0], (distinct[:-1] + distinct[1:]) / 2, [np.nextafter(distinct[-1], 2.0)]])
    candidates = np.clip(candidates, 0.0, 1.0)
    order = np.argsort(scores)
    sorted_scores, sorted_pos = scores[order], positives[order]
    # For a cut-off t: positives called positive = those with score ≥ t.
    below = np.searchsorted(sorted_scores, candidates, side="left")
    pos_below = np.concatenate([[0], np.cumsum(sorted_pos)])[below]
    neg_below = below - pos_below
    sensitivity = (n_pos - pos_below) / n_pos
    specificity = neg_below / n_neg
    return float(candidates[pick_cutoff(candidates, sensitivity, specificity)])
