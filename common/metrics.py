"""Classification metrics of held-out splits: from predictions, and from score histograms.

A site never sends predictions. For a binary task it sends, per true class k, a histogram
of the model's score P(class 1) in `HIST_BINS` bins (`score_histograms`; key
`histogram_key(k)`), noised when its DP is on. The bins are fixed in advance and cut the
score's logit z = log(p / (1 − p)), in equal steps of sign(z)·log(1 + |z|/LOGIT_SCALE)
up to |z| = LOGIT_RANGE (`bin_edges`): fine near p = 0.5, where a well-trained model's
scores spread over tenths, and still distinct far out, where a model trained with DP
often puts every score within a few hundredths (or far less) of 0 or 1 -- equal-width
bins in p would hold all of those in one bin and lose their ranking. Everything else
is derived from those histograms (`histogram_metrics`), at the site and again at the
coordinator, which pools the sites' histograms into one, chooses the federation's
operating threshold on it (`choose_threshold`: the bin edge where sensitivity and
specificity are closest, fedmed's one threshold rule, `fedmed.common.operating_point`)
and reports every site at that threshold (`evaluation_round`). Histograms summarise a score to its bin, so AUC and
the ROC are those of the binned score (ties within a bin counted half), and the threshold
is a bin edge. The example-weighted mean over sites (`aggregate_sites`) remains for runs
without histograms.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from fedmed.common.model_health import finite_number
from fedmed.common.operating_point import pick_cutoff
from fedmed.common.protocol import RELEASE_NOISE_KEY

METRIC_NAMES = ("loss", "accuracy", "auc", "sensitivity", "specificity")
HIST_BINS = 20
"""Bins of the score histograms; a reader takes B from the list's length."""
LOGIT_RANGE = 12.0
"""The inner bin edges span logits −12..12 (scores 6e-6..0.999994); the two outer bins
take everything beyond, so every score has a bin. Edges are fixed, never fitted to data.
Chosen by measurement against bins equal in p (docs/privacy.md): on three trained models'
held-out scores the 20 bins' AUC lands within 0.02 of the exact AUC (equal-p bins: up to
0.12 below), at the price of a larger noise bias on small DP sites, whose scores fill
fewer of the bins."""
LOGIT_SCALE = 1.0
"""Below about this |logit| the edges are nearly equal steps in z, beyond it in log |z|."""
DEFAULT_THRESHOLD = 0.5


def histogram_key(true_class: int) -> str:
    """The evaluation reply's key of the score histogram of images of ``true_class``."""
    return f"score-hist-{true_class}"


def _binning_steps(bins: int) -> np.ndarray:
    """The B − 1 inner edges on the binning scale s = sign(z)·log(1 + |z|/LOGIT_SCALE):
    equal steps, 0 exactly among them when B is even."""
    top = math.log1p(LOGIT_RANGE / LOGIT_SCALE)
    steps = np.linspace(-top, top, bins - 1) if bins > 2 else np.zeros(max(bins - 1, 0))
    steps[np.isclose(steps, 0.0, atol=1e-12)] = 0.0  # so that 0.5 is exactly an edge
    return steps


def _to_logit(steps: np.ndarray) -> np.ndarray:
    """Points of the binning scale as logits (the inverse of s(z))."""
    return np.sign(steps) * LOGIT_SCALE * np.expm1(np.abs(steps))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logit_edges(bins: int) -> np.ndarray:
    """The B − 1 inner edges of B bins, in logit (0 among them when B is even)."""
    return _to_logit(_binning_steps(bins))


def _logit(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)  # ±inf at 0 and 1: the outer bins


def bin_edges(bins: int) -> np.ndarray:
    """The B + 1 score edges of B histogram bins: 0, the inner edges (`_logit_edges`) as
    scores, 1. With B even, 0.5 is an edge. Far-out edges round to 0 or 1 in a float;
    `score_histograms` bins in logit, so they stay apart there."""
    return np.concatenate([[0.0], _sigmoid(_logit_edges(bins)), [1.0]])


def score_histograms(scores: np.ndarray, labels: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """(2, bins) counts of the score P(class 1) per true class (0, 1), in the bins of
    `bin_edges`; a score on an edge falls in the bin above it, a score of 1 in the last."""
    inner = _logit_edges(bins)
    index = np.searchsorted(inner, _logit(scores), side="right")  # 0 .. bins-1
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
    t = _logit(np.array([threshold]))[0]
    if np.isinf(t):  # 0: every score is class 1; 1: none is
        return _confusion_at_edge(hist, 0 if t < 0 else hist.shape[1])
    return _confusion_at_edge(hist, int(np.argmin(np.abs(_logit_edges(hist.shape[1]) - t))) + 1)


def _confusion_at_edge(hist: np.ndarray, edge: int) -> np.ndarray:
    """The confusion matrix when bins `edge` and above are called class 1."""
    neg, pos = hist[0], hist[1]
    return np.array([[neg[:edge].sum(), neg[edge:].sum()], [pos[:edge].sum(), pos[edge:].sum()]])


def choose_threshold(hist: np.ndarray) -> float:
    """The federation's operating threshold from (pooled) score histograms: the bin edge
    that fedmed's threshold rule picks (`fedmed.common.operating_point.pick_cutoff`:
    sensitivity and specificity closest), as a score; 0.5 when a class has no weight."""
    bins = hist.shape[1]
    if hist[0].sum() <= 0 or hist[1].sum() <= 0:
        return DEFAULT_THRESHOLD
    edges = bin_edges(bins)
    rates = np.array([_rates(_confusion_at_edge(hist, edge))[:2] for edge in range(bins + 1)])
    return float(edges[pick_cutoff(edges, rates[:, 0], rates[:, 1])])


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
    # A far-out bin's middle score rounds to 0 or 1; the loss per image is then capped
    # at about 28 nats (float32's own limit on a model's probabilities) instead of inf.
    centres = np.clip(bin_centres(hist.shape[1]), 1e-12, 1 - 1e-12)
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
    """Each bin's middle score: the midpoint of its edges on the binning scale (the outer
    bins: half a step beyond the last inner edge), as a score."""
    steps = _binning_steps(bins)
    step = steps[1] - steps[0] if bins > 2 else 2 * math.log1p(LOGIT_RANGE / LOGIT_SCALE)
    middle = np.concatenate([[steps[0] - step / 2], (steps[:-1] + steps[1:]) / 2, [steps[-1] + step / 2]])
    return _sigmoid(_to_logit(middle))


def evaluation_round(site_metrics: Mapping[str, Mapping[str, object]],
                     earlier: Sequence[np.ndarray] = ()) -> tuple[dict[str, dict], dict | None]:
    """The coordinator's view of one evaluation round: per site, the metrics derived from
    its histograms at the pooled threshold (a site's exact AUC and loss kept, when it sent
    exact ones); and the pooled metrics (with ``threshold`` and ``threshold_histograms``,
    the consistent counts the threshold was chosen on this round, `_informative`), or None
    when no site sent histograms.

    `earlier`: earlier rounds' ``threshold_histograms`` to choose the threshold on together
    with this round's (`threshold_pool_start`); the metrics are this round's, at that
    threshold."""
    hists = {name: h for name, m in site_metrics.items() if (h := read_histograms(m)) is not None}
    if not hists:
        return {}, None
    shapes = {h.shape for h in hists.values()}
    if len(shapes) != 1:  # sites binned differently: no pooling, each at its own threshold
        return {name: histogram_metrics(h, choose_threshold(h)) for name, h in hists.items()}, None
    pooled = sum(hists.values())
    informative = _informative(site_metrics, hists)
    threshold = choose_threshold(informative + sum((h for h in earlier if h.shape == pooled.shape),
                                                   np.zeros_like(pooled)))
    per_site = {name: _keep_exact(site_metrics[name], histogram_metrics(h, threshold))
                for name, h in hists.items()}
    return per_site, {**histogram_metrics(pooled, threshold), "threshold_histograms": informative}


def _informative(site_metrics: Mapping[str, Mapping[str, object]], hists: Mapping[str, np.ndarray]) -> np.ndarray:
    """The sum of the histograms the threshold is chosen on: those that carry more of their
    site's images than noise. A site's noised histograms hold its n images plus noise of
    σ per bin (`RELEASE_NOISE_KEY`, sent by DP sites), σ·√(2·bins) over all bins; a site
    whose noised count is below that adds more noise than signal to the pooled cumulative
    counts a threshold is read from (at ε = 8 over 15 rounds σ ≈ 18 per bin, about 110
    images' worth over 40 bins, and a small site's validation part holds a few dozen).
    Sites without σ (exact histograms) always count; if no site qualifies, all count.
    Reporting uses every site; this only decides which histograms choose the threshold."""
    kept = []
    for name, h in hists.items():
        sigma = finite_number(site_metrics[name].get(RELEASE_NOISE_KEY))
        if sigma is None or sigma <= 0 or h.sum() >= sigma * math.sqrt(h.size):
            kept.append(h)
    return sum(kept) if kept else sum(hists.values())


def threshold_pool_start(rounds: int) -> int:
    """The first round whose pooled evaluation histograms the operating threshold is
    chosen on, together with every later round's: the run's second half.

    Why pool rounds: with DP on, each round's histograms carry each site's release noise
    (σ ≈ 18 per bin per site at ε = 8 over 15 rounds), and the equal-error bin edge of one
    round's noised histograms jumped between rounds (P 0.11 to 0.998 on PneumoniaMNIST);
    the sum of k rounds has k times the counts and √k times the noise. Pooling the
    histograms costs no privacy (post-processing). Why the second half: the model must
    hardly change across the pooled rounds, and the DP recipe's cosine-decayed learning
    rate is at most half its start there. Measured in the benchmark's ε = 8 rows
    (docs/privacy.md, "The operating threshold"): balanced accuracy on the test split at
    the threshold the models ship with went from 0.642 / 0.640 / 0.691 (last round alone)
    to 0.775 / 0.700 / 0.801 (rounds 8-15 pooled), and to 0.856 / 0.752 / 0.801 with only
    the sites that hold more signal than noise (`_informative`)."""
    return rounds // 2 + 1


# What does not depend on the threshold: a site that sent exact numbers (no DP on its
# metrics) keeps its own, which its histogram only coarsens (a DP site's own numbers come
# from the same noised histogram, so re-deriving them changes nothing).
THRESHOLD_FREE = ("auc", "loss")


def _keep_exact(sent: Mapping[str, object], derived: dict[str, object]) -> dict[str, object]:
    if sent.get("dp_metrics", 1):
        return derived
    return {**derived, **{k: value for k in THRESHOLD_FREE if (value := finite_number(sent.get(k))) is not None}}


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
