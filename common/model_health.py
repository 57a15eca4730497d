"""Is a round's global model any good? The rules that turn its numbers into warnings.

One definition for everything that shows a run (the live table of `fedmed simulate` and
`fedmed server start`, the report): read a `metrics.jsonl` row, get `HealthFlag`s.

For each site with evaluation numbers (a number that is missing, NaN or withheld by the
small-cell rule is unknown and raises nothing):

- ``one-class``: the model gives every image at the site the same class: sensitivity 0
  and specificity 1 (all called negative) or 1 and 0 (all called positive), or, with a
  confusion matrix, a single predicted column holding every image;
- ``inverted``: ROC AUC below 0.5 (`CHANCE_AUC`): the scores rank the classes the wrong
  way round, worse than a coin;
- ``weak``: sensitivity or specificity below 0.5 (`MIN_RATE`) without being one-class:
  at its operating threshold the model misses most of one class.

`one_class_everywhere` is the round-level headline: every site with numbers gets one
class, the same one. Rates are those of the positive class (class 1) for two classes and
macro averages for more (then "one-class" needs the confusion matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

CHANCE_AUC = 0.5
MIN_RATE = 0.5
KINDS = ("one-class", "inverted", "weak")


@dataclass(frozen=True)
class HealthFlag:
    kind: str                 # one of KINDS
    site: str
    detail: str               # the numbers behind it, in words
    predicted: int | None = None  # one-class: the class index every image gets, when known

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "site": self.site, "detail": self.detail, "predicted": self.predicted}


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def balanced_accuracy(metrics: Mapping[str, Any]) -> float | None:
    """`balanced_accuracy` when the row has it, else (sensitivity + specificity) / 2 (the
    balanced accuracy of a two-class model); None when unknown."""
    value = _number(metrics.get("balanced_accuracy"))
    if value is not None:
        return value
    sens, spec = _number(metrics.get("sensitivity")), _number(metrics.get("specificity"))
    return None if sens is None or spec is None else (sens + spec) / 2


def _one_class(metrics: Mapping[str, Any]) -> tuple[bool, int | None]:
    confusion = metrics.get("confusion")
    if isinstance(confusion, Sequence) and confusion and all(isinstance(r, Sequence) for r in confusion):
        try:
            columns = [sum(float(row[c]) for row in confusion) for c in range(len(confusion[0]))]
        except (TypeError, ValueError, IndexError):
            columns = []
        used = [c for c, total in enumerate(columns) if total > 0]
        if columns and sum(columns) > 0:
            return (len(used) == 1, used[0] if len(used) == 1 else None)
    sens, spec = _number(metrics.get("sensitivity")), _number(metrics.get("specificity"))
    if sens is None or spec is None:
        return False, None
    if sens == 0.0 and spec == 1.0:
        return True, 0
    if sens == 1.0 and spec == 0.0:
        return True, 1
    return False, None


def site_flags(site: str, metrics: Mapping[str, Any]) -> list[HealthFlag]:
    """The flags one site's evaluation numbers raise (see the module docstring)."""
    flags = []
    one, predicted = _one_class(metrics)
    if one:
        flags.append(HealthFlag("one-class", site, "every image gets the same class", predicted))
    auc = _number(metrics.get("auc"))
    if auc is not None and auc < CHANCE_AUC:
        flags.append(HealthFlag("inverted", site, f"AUC {auc:.3f} < {CHANCE_AUC}"))
    if not one:
        weak = [f"{name} {value:.3f}" for name in ("sensitivity", "specificity")
                if (value := _number(metrics.get(name))) is not None and value < MIN_RATE]
        if weak:
            flags.append(HealthFlag("weak", site, f"{' and '.join(weak)} < {MIN_RATE}"))
    return flags


def round_flags(record: Mapping[str, Any]) -> list[HealthFlag]:
    """Every flag of a `metrics.jsonl` row, site by site in the row's order."""
    flags: list[HealthFlag] = []
    for site, metrics in (record.get("sites") or {}).items():
        if isinstance(metrics, Mapping):
            flags += site_flags(str(site), metrics)
    return flags


def _evaluated(record: Mapping[str, Any]) -> list[str]:
    return [str(s) for s, m in (record.get("sites") or {}).items()
            if isinstance(m, Mapping) and any(_number(m.get(k)) is not None
                                              for k in ("sensitivity", "specificity", "auc"))]


def one_class_everywhere(record: Mapping[str, Any]) -> int | None | bool:
    """The class index every evaluated site's images all get (None when that class is not
    known), or False when the model does not give one class everywhere."""
    sites = _evaluated(record)
    one = {f.site: f.predicted for f in round_flags(record) if f.kind == "one-class"}
    if not sites or set(sites) - set(one):
        return False
    classes = set(one.values())
    return classes.pop() if len(classes) == 1 else False


def describe(record: Mapping[str, Any], classes: Sequence[str] = ()) -> list[str]:
    """The row's flags in words, one sentence per kind (empty when all is well)."""
    flags = round_flags(record)
    if not flags:
        return []

    def name(index: int | None) -> str:
        if index is None:
            return "one class"
        return f"'{classes[index]}'" if index < len(classes) else f"class {index}"

    lines = []
    everywhere = one_class_everywhere(record)
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
                     + ", ".join(f"{f.site} ({f.detail.split(' <')[0]})" for f in inverted))
    weak = [f for f in flags if f.kind == "weak"]
    if weak:
        lines.append("misses most of a class at " + ", ".join(f"{f.site} ({f.detail})" for f in weak))
    return lines
