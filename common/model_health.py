"""Is a round's global model any good? The rules that turn its numbers into warnings.

The one definition for everything that shows a run (the live table of `fedmed simulate`
and `fedmed server start`, and the report, which words the same flags its own way in
`fedmed.server.report_stats`): read a `metrics.jsonl` row, get `HealthFlag`s.

For each site with evaluation numbers (a number that is missing, NaN or withheld by the
small-cell rule is unknown and raises nothing):

- ``one-class``: the model gives (almost) every image at the site the same class. With a
  confusion matrix: a single predicted column holds the images, every other column under
  1 % of them (`EMPTY_SHARE`) or under half an image, since DP noise turns an empty
  column's zero count into a small number either side of it. Without one, for two classes
  (or when the class count is unknown): sensitivity 0 and specificity 1 (all called
  negative) or 1 and 0 (all called positive); macro-averaged rates of more classes cannot
  show it;
- ``inverted``: ROC AUC below 0.5 (`CHANCE_AUC`): the scores rank the classes the wrong
  way round, worse than a coin;
- ``weak``: sensitivity or specificity below 0.5 (`MIN_RATE`) without being one-class:
  at its operating threshold the model misses most of one class.

`one_class_everywhere` is the round-level headline: every site with numbers gets one
class, the same one. Rates are those of the positive class (class 1) for two classes and
macro averages for more.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

CHANCE_AUC = 0.5
MIN_RATE = 0.5
# A predicted column holding less than this share of a site's images (or under half an
# image) counts as empty: DP noise makes a zero count come out as a small number.
EMPTY_SHARE = 0.01
KINDS = ("one-class", "inverted", "weak")


@dataclass(frozen=True)
class HealthFlag:
    kind: str                 # one of KINDS
    site: str
    detail: str               # the numbers behind it, in words
    predicted: int | None = None  # one-class: the class index every image gets, when known
    values: tuple[tuple[str, float], ...] = ()  # inverted, weak: (metric, value) behind it

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "site": self.site, "detail": self.detail, "predicted": self.predicted,
                "values": dict(self.values)}


def finite_number(value: Any) -> float | None:
    """A finite number, or None: a withheld value (None), a NaN, a bool or a string are
    unknown, never read as a count or a rate."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def confusion_matrix(metrics: Mapping[str, Any]) -> list[list[float]] | None:
    """A site's confusion matrix [true][predicted] as numbers, or None when it sent none
    (older runs), withheld a cell, or sent something else than a square table."""
    table = metrics.get("confusion")
    if not isinstance(table, list) or not table:
        return None
    rows = []
    for row in table:
        if not isinstance(row, list) or len(row) != len(table):
            return None
        values = [finite_number(v) for v in row]
        if any(v is None for v in values):
            return None
        rows.append([float(v) for v in values])  # type: ignore[arg-type]
    return rows


def balanced_accuracy(metrics: Mapping[str, Any]) -> float | None:
    """`balanced_accuracy` when the row has it, else (sensitivity + specificity) / 2 (the
    balanced accuracy of a two-class model); None when unknown."""
    value = finite_number(metrics.get("balanced_accuracy"))
    if value is not None:
        return value
    sens, spec = finite_number(metrics.get("sensitivity")), finite_number(metrics.get("specificity"))
    return None if sens is None or spec is None else (sens + spec) / 2


def _one_class(metrics: Mapping[str, Any], classes: Sequence[str]) -> tuple[bool, int | None]:
    table = confusion_matrix(metrics)
    if table:
        total = sum(sum(row) for row in table)
        if total > 0:
            columns = [sum(row[c] for row in table) for c in range(len(table))]
            used = [c for c, count in enumerate(columns) if count > max(0.5, EMPTY_SHARE * total)]
            return (len(used) == 1, used[0] if len(used) == 1 else None)
    sens, spec = finite_number(metrics.get("sensitivity")), finite_number(metrics.get("specificity"))
    if sens is None or spec is None or len(classes) > 2:
        return False, None
    if sens == 0.0 and spec == 1.0:
        return True, 0
    if sens == 1.0 and spec == 0.0:
        return True, 1
    return False, None


def site_flags(site: str, metrics: Mapping[str, Any], classes: Sequence[str] = ()) -> list[HealthFlag]:
    """The flags one site's evaluation numbers raise (see the module docstring); `classes`,
    when known, says whether its rates are two-class or macro averages."""
    flags = []
    one, predicted = _one_class(metrics, classes)
    if one:
        flags.append(HealthFlag("one-class", site, "every image gets the same class", predicted))
    auc = finite_number(metrics.get("auc"))
    if auc is not None and auc < CHANCE_AUC:
        flags.append(HealthFlag("inverted", site, f"AUC {auc:.3f} < {CHANCE_AUC}", values=(("auc", auc),)))
    if not one:
        weak = tuple((name, value) for name in ("sensitivity", "specificity")
                     if (value := finite_number(metrics.get(name))) is not None and value < MIN_RATE)
        if weak:
            words = " and ".join(f"{name} {value:.3f}" for name, value in weak)
            flags.append(HealthFlag("weak", site, f"{words} < {MIN_RATE}", values=weak))
    return flags


def round_flags(record: Mapping[str, Any], classes: Sequence[str] = ()) -> list[HealthFlag]:
    """Every flag of a `metrics.jsonl` row, site by site in the row's order."""
    flags: list[HealthFlag] = []
    for site, metrics in (record.get("sites") or {}).items():
        if isinstance(metrics, Mapping):
            flags += site_flags(str(site), metrics, classes)
    return flags


def _evaluated(record: Mapping[str, Any]) -> list[str]:
    return [str(s) for s, m in (record.get("sites") or {}).items()
            if isinstance(m, Mapping) and any(finite_number(m.get(k)) is not None
                                              for k in ("sensitivity", "specificity", "auc"))]


def one_class_everywhere(record: Mapping[str, Any], classes: Sequence[str] = ()) -> int | None | bool:
    """The class index every evaluated site's images all get (None when that class is not
    known), or False when the model does not give one class everywhere."""
    sites = _evaluated(record)
    one = {f.site: f.predicted for f in round_flags(record, classes) if f.kind == "one-class"}
    if not sites or set(sites) - set(one):
        return False
    classes = set(one.values())
    return classes.pop() if len(classes) == 1 else False


def describe(record: Mapping[str, Any], classes: Sequence[str] = ()) -> list[str]:
    """The row's flags in words, one sentence per kind (empty when all is well)."""
    flags = round_flags(record, classes)
    if not flags:
        return []

    def name(index: int | None) -> str:
        if index is None:
            return "one class"
        return f"'{classes[index]}'" if index < len(classes) else f"class {index}"

    lines = []
    everywhere = one_class_everywhere(record, classes)
    if everywhere is not False:
        lines.append(f"the model calls every image {name(everywhere)} at every site: it has learned "
                     "nothing usable yet")
    else:
        one = [f for f in flags if f.kind == "one-class"]
        if one:
            lines.append("the model gives every image one class at " + ", ".join(
                f"{f.site} ({name(f.predicted)})" for f in one))
    inverted = [f for f in flags if f.kind == "inverted"]
    if inverted:
        lines.append("worse than chance (AUC < 0.5: scores rank the classes the wrong way) at "
                     + ", ".join(f"{f.site} (AUC {f.values[0][1]:.3f})" for f in inverted))
    weak = [f for f in flags if f.kind == "weak"]
    if weak:
        lines.append("misses most of a class at " + ", ".join(f"{f.site} ({f.detail})" for f in weak))
    return lines
