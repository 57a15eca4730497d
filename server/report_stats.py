"""The report's statistics: 95 % confidence intervals, and its wording of the model-health
flags (the rule itself is `fedmed.common.model_health`, shared with the terminal).

Everything here works on what a site sent after evaluation (its rates, AUC and, when sent,
its confusion matrix); nothing is recomputed from site data, and a rate a site withheld
(the small-cell rule) is never derived back from its other numbers.

Intervals count sampling error only. With DP on, a site's counts carry noise too, so the
true uncertainty is larger than the interval shown (the report says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedmed.common.auc_interval import Z_95 as Z95
from fedmed.common.model_health import CHANCE_AUC, MIN_RATE, confusion_matrix, site_flags
from fedmed.common.model_health import finite_number as _num

__all__ = ["Z95", "auc_interval", "class_counts", "health_flags", "wilson_interval"]


def wilson_interval(rate: float | None, n: float | None) -> tuple[float, float] | None:
    """95 % Wilson score interval for a proportion `rate` observed over `n` trials
    (E. B. Wilson, "Probable inference, the law of succession, and statistical inference",
    JASA 22, 1927). Unlike the normal approximation it stays inside [0, 1] and is usable
    at rates of 0 and 1. None when the rate or a positive n is missing."""
    p, n = _num(rate), _num(n)
    if p is None or n is None or n <= 0 or not 0.0 <= p <= 1.0:
        return None
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At a rate of 0 (or 1) the lower (upper) bound is exactly 0 (1); rounding must not move it.
    low = 0.0 if p == 0.0 else max(0.0, centre - half)
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return low, high


def auc_interval(auc: float | None, positives: float | None, negatives: float | None
                 ) -> tuple[float, float] | None:
    """95 % interval for a ROC AUC from its standard error under the exponential
    approximation of J. A. Hanley and B. J. McNeil ("The meaning and use of the area under
    a receiver operating characteristic (ROC) curve", Radiology 143, 1982):
    Q1 = A / (2 - A), Q2 = 2 A² / (1 + A),
    SE² = (A (1 - A) + (P - 1)(Q1 - A²) + (N - 1)(Q2 - A²)) / (P N).
    None when the AUC or either class count is missing."""
    a, p, n = _num(auc), _num(positives), _num(negatives)
    if a is None or p is None or n is None or p < 1 or n < 1 or not 0.0 <= a <= 1.0:
        return None
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (p - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (p * n)
    half = Z95 * math.sqrt(max(var, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def class_counts(entry: dict[str, Any]) -> list[float] | None:
    """Images per true class at a site (row sums of its confusion matrix), or None."""
    table = confusion_matrix(entry)
    return [sum(row) for row in table] if table else None


def health_flags(entry: dict[str, Any] | None, classes: Sequence[str]) -> list[str]:
    """Why a site's (or the aggregate's) evaluation of a round's model is not a model to
    trust, in the report's words, one line per reason; [] when nothing is wrong or nothing
    was reported. Which flags are raised is `fedmed.common.model_health.site_flags`."""
    if not entry:
        return []
    lines = []
    for flag in site_flags("", entry, classes):
        if flag.kind == "one-class":
            j = flag.predicted
            name = "" if j is None else f" ({classes[j] if j < len(classes) else f'class {j}'})"
            lines.append(f"predicts one class{name} for every image")
        else:
            limit = CHANCE_AUC if flag.kind == "inverted" else MIN_RATE
            lines += [f"{flag.kind}: {'AUC' if key == 'auc' else key} {value:.3f} < {limit}"
                      for key, value in flag.values]
    return lines
