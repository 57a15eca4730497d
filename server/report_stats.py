"""The report's statistics: 95 % confidence intervals and the flags on a weak model.

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

__all__ = ["Z95", "auc_interval", "class_counts", "health_flags", "wilson_interval"]

# Two-sided 95 % normal quantile.
Z95 = 1.959963984540054
# A rate below this at a site means the model misses most of a class there.
WEAK_RATE = 0.5


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


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


def confusion_matrix(entry: dict[str, Any]) -> list[list[float]] | None:
    """A site's confusion matrix [true][predicted] as numbers, or None when it sent none
    (older runs) or sent something else than a square table."""
    table = entry.get("confusion")
    if not isinstance(table, list) or not table:
        return None
    rows = []
    for row in table:
        if not isinstance(row, list) or len(row) != len(table):
            return None
        values = [_num(v) for v in row]
        if any(v is None for v in values):
            return None
        rows.append([float(v) for v in values])  # type: ignore[arg-type]
    return rows


def class_counts(entry: dict[str, Any]) -> list[float] | None:
    """Images per true class at a site (row sums of its confusion matrix), or None."""
    table = confusion_matrix(entry)
    return [sum(row) for row in table] if table else None


def predicted_one_class(entry: dict[str, Any], classes: Sequence[str]) -> str | None:
    """The class a site's model predicted for (almost) every image, or None.

    From the confusion matrix when sent: every predicted column but one is empty (a
    column under 1 % of the images counts as empty, since DP noise makes a zero count
    come out as a small number). Without one: a sensitivity and specificity of 0 and 1.
    """
    table = confusion_matrix(entry)
    if table:
        total = sum(sum(row) for row in table)
        if total <= 0:
            return None
        columns = [sum(row[j] for row in table) for j in range(len(table))]
        used = [j for j, c in enumerate(columns) if c > max(0.5, 0.01 * total)]
        if len(used) == 1:
            j = used[0]
            return classes[j] if j < len(classes) else f"class {j}"
        return None
    sens, spec = _num(entry.get("sensitivity")), _num(entry.get("specificity"))
    if sens is None or spec is None or len(classes) != 2:
        return None
    if sens == 0.0 and spec == 1.0:
        return classes[0]
    if sens == 1.0 and spec == 0.0:
        return classes[1]
    return None


def health_flags(entry: dict[str, Any] | None, classes: Sequence[str]) -> list[str]:
    """Why a site's (or the aggregate's) evaluation of a round's model is not a model to
    trust, in words; [] when nothing is wrong or nothing was reported.

    - one class: the model gives every image the same class;
    - inverted: AUC below 0.5 (its scores rank the classes the wrong way round);
    - weak: sensitivity or specificity below 0.5 (it misses most of a class).
    """
    if not entry:
        return []
    flags = []
    one = predicted_one_class(entry, classes)
    if one is not None:
        flags.append(f"predicts one class ({one}) for every image")
    auc = _num(entry.get("auc"))
    if auc is not None and auc < 0.5:
        flags.append(f"inverted: AUC {auc:.3f} < 0.5")
    if one is None:
        for key in ("sensitivity", "specificity"):
            value = _num(entry.get(key))
            if value is not None and value < WEAK_RATE:
                flags.append(f"weak: {key} {value:.3f} < {WEAK_RATE}")
    return flags
