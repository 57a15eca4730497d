"""Split one labelled array data set (MedMNIST-style) into simulated sites.

Schemes, written as a string so they fit a command-line option or a run config:

``iid``
    Shuffle, then split into equal parts (sizes differ by at most one).
``dirichlet:ALPHA``
    Label skew. For every class, the proportions of its samples that go to each site are
    drawn from Dirichlet(ALPHA, ..., ALPHA). Small ALPHA (0.1) gives sites dominated by a
    few classes; large ALPHA (100) approaches ``iid``. Dirichlet label skew for federated
    benchmarks was introduced by Hsu, Qi & Brown (2019), "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification",
    arXiv:1909.06335; drawing the proportions per class across sites, as here, is the
    widely used variant of Yurochkin et al. (2019), "Bayesian Nonparametric Federated
    Learning of Neural Networks" (ICML).
``quantity:ALPHA``
    Quantity skew: site sizes are proportional to a Dirichlet(ALPHA) draw, and the labels
    within each site are IID.

Every scheme gives each site at least ``min_size`` samples (default: 10, or an equal share
when the data set is too small for that). ``dirichlet`` redraws the proportions up to
``_DIRICHLET_REDRAWS`` times to reach it; if a very small ALPHA still leaves a site short,
randomly chosen samples move from the largest site to the smallest until every site has the
minimum, which slightly softens the skew. ``quantity`` reserves the minimum for every site
and distributes only the rest by the drawn proportions.

The result is deterministic for a seed, and the sites' indices are disjoint, sorted, and
together cover every sample exactly once.
"""

from __future__ import annotations

import math

import numpy as np

SCHEMES = ("iid", "dirichlet", "quantity")
_EXPECTED = "expected 'iid', 'dirichlet:ALPHA' or 'quantity:ALPHA' with ALPHA > 0"
_DEFAULT_MIN_SIZE = 10
_DIRICHLET_REDRAWS = 100


def parse_scheme(text: str) -> tuple[str, float | None]:
    """Parse ``iid``, ``dirichlet:ALPHA`` or ``quantity:ALPHA`` into (name, alpha).

    ``iid`` gives (``"iid"``, None). Raises ValueError naming what was expected.
    """
    if not isinstance(text, str):
        raise ValueError(f"partition: {_EXPECTED}, got {text!r}")
    name, sep, value = text.strip().partition(":")
    name = name.strip().lower()
    if name == "iid" and not sep:
        return "iid", None
    if name in ("dirichlet", "quantity") and sep:
        try:
            alpha = float(value)
        except ValueError:
            alpha = math.nan
        if math.isfinite(alpha) and alpha > 0:
            return name, alpha
    raise ValueError(f"partition: {_EXPECTED}, got {text!r}")


def partition_indices(
    labels: np.ndarray,
    num_sites: int,
    scheme: str,
    seed: int,
    *,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Split sample indices ``0 .. len(labels) - 1`` into `num_sites` sites by `scheme`.

    labels: one integer class per sample (a trailing axis of size 1, as MedMNIST stores
        them, is accepted).
    min_size: the fewest samples any site gets; see the module docstring.

    Returns one sorted int64 index array per site. Raises ValueError for a bad scheme, a
    site count outside 1..len(labels), or too few samples to give every site `min_size`.
    """
    name, alpha = parse_scheme(scheme)
    labels = _flat_labels(labels)
    n = labels.size
    if not isinstance(num_sites, (int, np.integer)) or num_sites < 1:
        raise ValueError(f"num_sites: expected an integer of at least 1, got {num_sites!r}")
    if num_sites > n:
        raise ValueError(f"num_sites: expected at most {n}, one per sample, got {num_sites}")
    floor = _min_size(n, num_sites, min_size)
    rng = np.random.default_rng(seed)
    if name == "iid":
        parts = np.array_split(rng.permutation(n), num_sites)
    elif name == "dirichlet":
        parts = _dirichlet_label_skew(labels, num_sites, alpha, floor, rng)
    else:
        parts = _quantity_skew(n, num_sites, alpha, floor, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _flat_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"labels: expected one class per sample (shape (N,) or (N, 1)), got shape {arr.shape}")
    return arr


def _min_size(n: int, num_sites: int, min_size: int | None) -> int:
    if min_size is None:
        # Tiny data sets cannot give every site the default; an equal share is the most.
        return min(_DEFAULT_MIN_SIZE, n // num_sites)
    if min_size < 0 or min_size * num_sites > n:
        raise ValueError(
            f"min_size: expected 0..{n // num_sites} for {n} samples over {num_sites} sites, got {min_size}"
        )
    return min_size


def _dirichlet_label_skew(labels, num_sites, alpha, floor, rng) -> list[np.ndarray]:
    """Per class, split its shuffled samples across sites by Dirichlet(alpha) proportions."""
    classes = np.unique(labels)
    parts: list[np.ndarray] = []
    for _ in range(_DIRICHLET_REDRAWS):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = np.rint(np.cumsum(shares)[:-1] * members.size).astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                buckets[site].append(chunk)
        parts = [np.concatenate(b) for b in buckets]
        if min(p.size for p in parts) >= floor:
            return parts
    return _top_up(parts, floor, rng)


def _top_up(parts: list[np.ndarray], floor: int, rng) -> list[np.ndarray]:
    """Move random samples from the largest site to the smallest until all reach `floor`."""
    parts = [p.copy() for p in parts]
    while True:
        sizes = [p.size for p in parts]
        small = int(np.argmin(sizes))
        if sizes[small] >= floor:
            return parts
        large = int(np.argmax(sizes))
        take = int(rng.integers(parts[large].size))
        parts[small] = np.append(parts[small], parts[large][take])
        parts[large] = np.delete(parts[large], take)


def _quantity_skew(n, num_sites, alpha, floor, rng) -> list[np.ndarray]:
    """Site sizes from Dirichlet(alpha) over what is left after each site's minimum."""
    spare = n - floor * num_sites
    shares = rng.dirichlet(np.full(num_sites, alpha))
    sizes = floor + np.floor(shares * spare).astype(int)
    # Flooring loses a few samples; hand them to the sites with the largest remainders.
    leftover = n - int(sizes.sum())
    remainders = shares * spare - np.floor(shares * spare)
    sizes[np.argsort(-remainders, kind="stable")[:leftover]] += 1
    order = rng.permutation(n)
    return np.split(order, np.cumsum(sizes)[:-1])
