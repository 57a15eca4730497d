"""Checks a site's model update must pass before it is averaged into the global model.

One bad update poisons the average for every site: a NaN spreads to every weight, a
tensor of the wrong shape breaks aggregation for the whole round, and an update a
thousand times larger than the model drags it wherever the sender wants. Each check
here gives a short fixed reason code; the strategy leaves the update out of that round
and names the site in the coordinator's log and the audit log.

What this does not catch: a well-formed, plausibly sized update that is still wrong
(a subtle backdoor, labels flipped at the site). Robust aggregation (median, trimmed
mean) would narrow that; it is out of scope here, see docs/security.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmed.server.strategy.reply_checks import DEFAULT_MAX_EXAMPLE_RATIO

if TYPE_CHECKING:  # Flower only for annotations: `fedmed server start` reads UpdateLimits without it
    from flwr.app import ArrayRecord

DEFAULT_MAX_UPDATE_RATIO = 50.0


@dataclass(frozen=True)
class UpdateLimits:
    """How far an update may move the global model.

    `max_update_ratio` bounds ||update - global|| / max(||global||, 1) over all
    floating-point tensors: one local round of ordinary training moves a model by a
    fraction of its norm. A DP-SGD update is mostly noise and moves it much further: at
    small ε an honest site's update measured 8-40× the norm (docs/privacy.md), so the
    default of 50 refuses only what no honest training produces (the ×1000 of a scaling
    attack, say). The floor of 1 keeps a near-zero global model from refusing everything.
    """

    max_update_ratio: float = DEFAULT_MAX_UPDATE_RATIO
    # How many times the median of the other sites' example counts a site may claim
    # (`reply_checks.py`).
    max_example_ratio: float = DEFAULT_MAX_EXAMPLE_RATIO
    # Weights the sites must return exactly as sent (a run with --freeze): an honest
    # site's optimizer never touches them, so any change is refused.
    frozen: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not (self.max_update_ratio > 0 and np.isfinite(self.max_update_ratio)):
            raise ValueError(f"--max-update-ratio: expected a positive number, got {self.max_update_ratio}")
        if not (self.max_example_ratio >= 1 and np.isfinite(self.max_example_ratio)):
            raise ValueError(f"--max-example-ratio: expected a number >= 1, got {self.max_example_ratio}")

    def to_dict(self) -> dict[str, Any]:
        # `frozen` follows from the run's --freeze, which config.json records itself.
        return {"max_update_ratio": self.max_update_ratio, "max_example_ratio": self.max_example_ratio}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "UpdateLimits":
        return cls(**{k: float(v) for k, v in (d or {}).items() if k == "max_update_ratio"})


def _as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def check_update(update: ArrayRecord, global_arrays: ArrayRecord, limits: UpdateLimits) -> str | None:
    """Return None for an acceptable update, else a reason code such as `non-finite:conv1.weight`."""
    try:
        new = _as_numpy(update)
    except Exception:  # noqa: BLE001 — an undecodable array is a bad update, whatever the cause
        return "undecodable"
    reference = _as_numpy(global_arrays)
    if set(new) != set(reference):
        missing = sorted(set(reference) - set(new))
        extra = sorted(set(new) - set(reference))
        return f"wrong-keys:missing={len(missing)},extra={len(extra)}"
    delta_sq = 0.0
    global_sq = 0.0
    for key, ref in reference.items():
        arr = new[key]
        if arr.shape != ref.shape:
            return f"wrong-shape:{key}"
        if arr.dtype != ref.dtype:
            return f"wrong-dtype:{key}"
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        if not np.all(np.isfinite(arr)):
            return f"non-finite:{key}"
        if key in limits.frozen and not np.array_equal(arr, ref):
            return f"frozen-changed:{key}"
        diff = arr.astype(np.float64) - ref.astype(np.float64)
        delta_sq += float(np.dot(diff.ravel(), diff.ravel()))
        global_sq += float(np.dot(ref.astype(np.float64).ravel(), ref.astype(np.float64).ravel()))
    if not np.isfinite(delta_sq):
        return "non-finite:norm"
    ratio = np.sqrt(delta_sq) / max(np.sqrt(global_sq), 1.0)
    if ratio > limits.max_update_ratio:
        return f"too-large:ratio={ratio:.3g}>{limits.max_update_ratio:g}"
    return None


def non_finite(arrays: ArrayRecord) -> str | None:
    """The name of the first floating-point tensor with a NaN or infinity, or None."""
    for key, array in _as_numpy(arrays).items():
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            return key
    return None
