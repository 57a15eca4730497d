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
