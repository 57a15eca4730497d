"""Partitions of array data sets into simulated sites."""

from __future__ import annotations

import numpy as np
import pytest

from fedmed.simulations.partition import parse_scheme, partition_indices


def _labels(n: int = 2000, classes: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


SCHEMES = ["iid", "dirichlet:0.1", "dirichlet:1", "quantity:0.5", "quantity:5"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_sites", [1, 3, 7])
def test_sites_are_disjoint_and_cover_every_sample(scheme, num_sites):
    labels = _labels()
    parts = partition_indices(labels, num_sites, scheme, seed=3)
    assert len(parts) == num_sites
    joined = np.concatenate(parts)
    assert joined.size == labels.size
    assert np.array_equal(np.sort(joined), np.arange(labels.size))
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_split_and_other_seed_differs(scheme):
    labels = _labels()
    a = partition_indices(labels, 4, scheme, seed=11)
    b = partition_indices(labels, 4, scheme, seed=11)
    c = partition_indices(labels, 4, scheme, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_equal_and_classes_balanced():
    labels = _labels(3000, classes=3)
    parts = partition_indices(labels, 3, "iid", seed=0)
    assert {p.size for p in parts} == {1000}
    for p in parts:
        shares = np.bincount(labels[p], minlength=3) / p.size
        assert np.all(np.abs(shares - 1 / 3) < 0.06)


def _label_shares(labels, parts, classes):
    return np.array([np.bincount(labels[p], minlength=classes) / p.size for p in parts])


def test_small_alpha_dirichlet_skews_labels_and_large_alpha_does_not():
    labels = _labels(5000, classes=5)
    skewed = _label_shares(labels, partition_indices(labels, 5, "dirichlet:0.1", seed=1), 5)
    even = _label_shares(labels, partition_indices(labels, 5, "dirichlet:1000", seed=1), 5)
    # With alpha 0.1 most sites are dominated by one class; with 1000 all are near 1/5.
    assert np.median(skewed.max(axis=1)) > 0.5
    assert even.max() < 0.3


def test_quantity_skew_varies_sizes_but_not_labels():
    labels = _labels(5000, classes=4)
    parts = partition_indices(labels, 5, "quantity:0.3", seed=2)
    sizes = np.array([p.size for p in parts])
    assert sizes.max() > 3 * sizes.min()
    big = [p for p in parts if p.size >= 500]
    assert big
    for p in big:
        shares = np.bincount(labels[p], minlength=4) / p.size
        assert np.all(np.abs(shares - 0.25) < 0.08)


@pytest.mark.parametrize("scheme", ["dirichlet:0.01", "quantity:0.01"])
def test_every_site_gets_the_minimum(scheme):
    labels = _labels(1000, classes=10)
    for seed in range(5):
        parts = partition_indices(labels, 10, scheme, seed=seed)
        assert min(p.size for p in parts) >= 10
        parts = partition_indices(labels, 10, scheme, seed=seed, min_size=40)
        assert min(p.size for p in parts) >= 40


def test_tiny_data_set_lowers_the_default_minimum():
    parts = partition_indices(_labels(12, classes=2), 4, "dirichlet:0.05", seed=0)
    assert sorted(p.size for p in parts)[0] >= 3


def test_medmnist_shaped_labels_are_accepted():
    labels = _labels(300)[:, None]
    parts = partition_indices(labels, 3, "dirichlet:0.5", seed=0)
    assert sum(p.size for p in parts) == 300


def test_parse_scheme():
    assert parse_scheme("iid") == ("iid", None)
    assert parse_scheme(" Dirichlet:0.5 ") == ("dirichlet", 0.5)
    assert parse_scheme("quantity:2") == ("quantity", 2.0)


@pytest.mark.parametrize(
    "text",
    ["", "iid:1", "dirichlet", "dirichlet:", "dirichlet:x", "dirichlet:0", "dirichlet:-1",
     "dirichlet:nan", "quantity:inf", "label:0.5", "shards:2"],
)
def test_bad_scheme_raises_one_clear_line(text):
    with pytest.raises(ValueError) as err:
        partition_indices(_labels(100), 2, text, seed=0)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("partition: expected 'iid', 'dirichlet:ALPHA' or 'quantity:ALPHA'")
    assert repr(text) in message


@pytest.mark.parametrize("num_sites", [0, -1, 101])
def test_bad_site_count_raises(num_sites):
    with pytest.raises(ValueError, match="num_sites"):
        partition_indices(_labels(100), num_sites, "iid", seed=0)


def test_impossible_minimum_raises():
    with pytest.raises(ValueError, match="min_size"):
        partition_indices(_labels(100), 4, "iid", seed=0, min_size=30)
