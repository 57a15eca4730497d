"""Site metrics and their aggregation."""

import itertools
import math

import numpy as np
import pytest

from fedmed.common.metrics import aggregate_sites, binary_auc, classification_metrics


def brute_force_auc(scores, positives):
    pos = scores[positives]
    neg = scores[~positives]
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.integers(0, 2, 60).astype(bool)
    assert binary_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))


def test_auc_undefined_for_one_class():
    assert math.isnan(binary_auc(np.array([0.1, 0.9]), np.array([True, True])))


def test_binary_metrics():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 0])
    m = classification_metrics(probs, labels, loss=0.5)
    assert m["accuracy"] == 0.5
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.5
    assert m["auc"] == pytest.approx(0.75)


def test_multiclass_is_macro_averaged():
    probs = np.eye(3)[[0, 1, 2, 0]]
    m = classification_metrics(probs, np.array([0, 1, 2, 0]), loss=0.0)
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0 and m["sensitivity"] == 1.0


def test_aggregate_is_example_weighted_and_skips_undefined():
    sites = {
        "A": {"num_examples": 30, "accuracy": 0.9, "auc": 0.95, "loss": 0.2},
        "B": {"num_examples": 10, "accuracy": 0.5, "auc": math.nan, "loss": 0.6},
    }
    agg = aggregate_sites(sites)
    assert agg["accuracy"] == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    assert agg["auc"] == pytest.approx(0.95)
    assert agg["worst_site_accuracy"] == 0.5
    assert agg["num_examples"] == 40


# ----------------------------------------------------------------------------- histograms
def test_histogram_metrics_equal_those_of_the_binned_scores():
    from fedmed.common.metrics import (HIST_BINS, bin_centres, bin_edges, binary_auc, classification_metrics,
                                       histogram_metrics, score_histograms)

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=300)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    hist = score_histograms(scores, labels)
    assert hist.shape == (2, HIST_BINS) and hist.sum() == 300 and hist[1].sum() == labels.sum()
    index = np.clip(np.searchsorted(bin_edges(HIST_BINS), scores, side="right") - 1, 0, HIST_BINS - 1)
    binned = bin_centres(HIST_BINS)[index]
    derived = histogram_metrics(hist, 0.5)
    exact = classification_metrics(np.stack([1 - binned, binned], axis=1), labels, 0.0)
    assert derived["auc"] == pytest.approx(binary_auc(binned, labels == 1))
    for name in ("accuracy", "sensitivity", "specificity"):
        assert derived[name] == pytest.approx(exact[name])
    (tn, fp), (fn, tp) = derived["confusion"]
    assert tn + fp == (labels == 0).sum() and fn + tp == (labels == 1).sum()
    assert derived["roc"]["fpr"][0] == 0 and derived["roc"]["tpr"][-1] == 1


def test_the_pooled_threshold_separates_separable_classes():
    from fedmed.common.metrics import (bin_edges, choose_threshold, consistent_counts, evaluation_round,
                                       histogram_key, histogram_metrics)

    neg = [0.0] * 20
    pos = [0.0] * 20
    neg[2], neg[8] = 50, 50     # negatives in two low bins
    pos[9], pos[15] = 5, 45     # positives mostly high, a few just above the negatives
    site = {histogram_key(0): neg, histogram_key(1): pos, "num-examples": 150}
    per_site, pooled = evaluation_round({"A": site, "B": site, "old": {"accuracy": 0.7}})
    assert set(per_site) == {"A", "B"}
    assert pooled["threshold"] == pytest.approx(bin_edges(20)[9])  # between the groups: every image right
    assert pooled["balanced_accuracy"] == pytest.approx(1.0)
    assert pooled["confusion"] == [[200.0, 0.0], [0.0, 100.0]]
    assert histogram_metrics(np.array([neg, pos]), 0.5)["sensitivity"] == pytest.approx(0.9)
    # Noise can make counts negative: they are read as 0; a class without weight keeps 0.5.
    assert choose_threshold(np.array([[0.0] * 20, pos])) == 0.5
    noised = np.array([[3.0, -2.0, 1.0, -4.0], [0.0, 5.0, -1.0, 2.0]])
    counts = consistent_counts(noised)
    assert (counts >= 0).all() and counts[1].sum() == pytest.approx(6.0)
    assert np.array_equal(consistent_counts(np.array([neg, pos])), np.array([neg, pos]))
    assert evaluation_round({"old": {"accuracy": 0.7}}) == ({}, None)


def test_scores_squeezed_near_0_keep_their_ranking():
    """Bins on the logit: scores all below 0.05 (as a DP-trained model gives) still fall
    in several bins, so the histogram AUC stays near the exact one; so do scores spread
    over a few tenths around 0.4 (a well-trained model's)."""
    from fedmed.common.metrics import bin_edges, binary_auc, histogram_metrics, score_histograms

    edges = bin_edges(20)
    assert edges[0] == 0 and edges[-1] == 1 and edges[10] == 0.5 and np.all(np.diff(edges) >= 0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=400)
    scores = 1 / (1 + np.exp(-np.minimum(rng.normal(-6 + 2 * labels, 0.8), -3.0)))   # all below 0.05
    assert scores.max() < 0.05
    derived = histogram_metrics(score_histograms(scores, labels), 0.5)
    assert derived["auc"] == pytest.approx(binary_auc(scores, labels == 1), abs=0.07)  # equal-p bins: 0.5
    middle = np.clip(rng.normal(0.3 + 0.15 * labels, 0.08), 0.05, 0.55)
    derived = histogram_metrics(score_histograms(middle, labels), 0.5)
    assert derived["auc"] == pytest.approx(binary_auc(middle, labels == 1), abs=0.04)
    assert np.isfinite(derived["loss"])


def test_the_threshold_rule_takes_the_equal_error_point_not_the_top_of_a_flat_curve():
    """One rule (`pick_cutoff`) for every threshold chosen on validation data: where
    sensitivity and specificity are closest; ties to the larger balanced accuracy, then to
    the cut-off nearest 0.5."""
    from fedmed.common.operating_point import balanced_threshold, pick_cutoff

    cutoffs = np.array([0.2, 0.4, 0.5, 0.6, 0.8])
    sens = np.array([1.0, 0.95, 0.90, 0.85, 0.5])
    spec = np.array([0.5, 0.84, 0.88, 0.86, 1.0])
    assert int(np.argmax(sens + spec)) == 1      # Youden's J would take 0.4 ...
    assert pick_cutoff(cutoffs, sens, spec) == 3  # ... the rule takes sens ≈ spec
    # Equal gaps: the larger balanced accuracy; equal both: the cut-off nearest 0.5.
    assert pick_cutoff(np.array([0.1, 0.45, 0.9]), np.array([0.8, 0.8, 0.8]), np.array([0.8, 0.8, 0.8])) == 1
    assert pick_cutoff(np.array([0.3, 0.7]), np.array([0.95, 0.9]), np.array([0.85, 1.0])) == 1
    # Exact scores: 3 negatives, 4 positives with one negative among the positives' scores.
    scores = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    cut = balanced_threshold(scores, labels)
    # 0.55: sensitivity 3/4, specificity 2/3; Youden's J would take 0.65 (3/4 and 1).
    assert cut == pytest.approx(0.55)


def test_the_federation_threshold_follows_the_same_rule_on_histograms():
    from fedmed.common.metrics import bin_edges, choose_threshold, confusion_at, score_histograms

    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], [150, 350])
    scores = 1 / (1 + np.exp(-rng.normal(np.where(labels == 1, 3.0, 0.0), 1.5)))
    hist = score_histograms(scores, labels)
    t = choose_threshold(hist)
    assert t in bin_edges(20)
    gaps = []
    for edge in bin_edges(20):
        (tn, fp), (fn, tp) = confusion_at(hist, edge)
        gaps.append(abs(tp / (tp + fn) - tn / (tn + fp)))
    (tn, fp), (fn, tp) = confusion_at(hist, t)
    assert abs(tp / (tp + fn) - tn / (tn + fp)) == pytest.approx(min(gaps))
