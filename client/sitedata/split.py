"""The train/validation split of a site, by patient.

All images of a patient fall on one side, so validation never scores a model on a
patient it trained on. Patients are shuffled by a seeded generator over their sorted
keys (independent of file order) and taken into validation while that brings its image
count closer to `val_fraction` of all images. With two or more patients and a positive
fraction, each side gets at least one patient; a single patient goes to training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_val_fraction", "split_by_patient"]


def check_val_fraction(val_fraction: float) -> None:
    """The share of images held out for validation: 0 (none) up to, not including, 1."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a value in [0, 1), got {val_fraction}")


def split_by_patient(
    patients: Sequence[str], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), each ascending, into `patients` (one key per image)."""
    check_val_fraction(val_fraction)
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(patients):
        groups.setdefault(key, []).append(i)
    keys = sorted(groups)
    total = len(patients)
    target = val_fraction * total
    order = np.random.default_rng(seed).permutation(len(keys))

    val_keys: list[str] = []
    in_val = 0
    if len(keys) >= 2 and val_fraction > 0:
        for k in order:
            n = len(groups[keys[k]])
            if in_val + n < total and abs(in_val + n - target) < abs(in_val - target):
                val_keys.append(keys[k])
                in_val += n
        if not val_keys:
            # The target is below any patient's share; one patient still makes a
            # validation set. The smallest is taken so training keeps the most (ties go
            # to the earliest in the shuffled order: min keeps the first it meets).
            smallest = min(order.tolist(), key=lambda k: len(groups[keys[k]]))
            val_keys.append(keys[smallest])

    val = sorted(i for key in val_keys for i in groups[key])
    in_val_set = set(val)
    train = [i for i in range(total) if i not in in_val_set]
    return np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)
