"""Small cells: what a site's evaluation metrics would give away about a few patients.

A site's held-out accuracy, sensitivity and specificity, with the split's size, fix how
many held-out images of each class it has: accuracy = (sens·P + spec·N) / (P + N). The
rule of statistical disclosure control is not to publish a count below a minimum cell
size, so a site sends no per-class rates (sensitivity, specificity, or their macro
averages for more classes) when one of its classes has fewer than `MIN_CELL_SIZE`
held-out images. Loss, accuracy and AUC are still sent: without the per-class rates they
do not give the counts away directly (an AUC's value is a fraction over P·N pairs, a much
weaker hint). No class count is ever sent as such.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

MIN_CELL_SIZE = 10
PER_CLASS_RATES = ("sensitivity", "specificity")


def suppress_small_cells(metrics: Mapping[str, float], labels: np.ndarray, num_classes: int,
                         min_cell: int = MIN_CELL_SIZE) -> dict[str, float]:
    """`metrics` with the per-class rates set to NaN when a class of `labels` has fewer
    than `min_cell` records (an absent class included)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if len(counts) and counts.min() >= min_cell:
        return dict(metrics)
    return {name: (math.nan if name in PER_CLASS_RATES else value) for name, value in metrics.items()}
