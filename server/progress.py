"""The per-round table the coordinator prints, one plain line per round.

Plain fixed-width text rather than a live widget, so that it reads the same in a
terminal, a CI log and a redirected file.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from fedmed.common.model_health import balanced_accuracy, describe

COLUMNS = (
    ("round", 5), ("sites", 5), ("loss", 7), ("acc", 6), ("bal acc", 7), ("auc", 6),
    ("sens", 6), ("spec", 6), ("worst acc", 9), ("max eps", 8), ("secs", 6),
)


def _fmt(value: Any, width: int, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:.{digits}f}".rjust(width)
    return str(value).rjust(width)


def header() -> str:
    return "  ".join(name.rjust(width) for name, width in COLUMNS)


def row(record: Mapping[str, Any]) -> str:
    agg = record.get("aggregate", {})
    sites = record.get("sites", {})
    trained = sum(1 for s in sites.values() if s.get("status", "ok") == "ok")
    privacy = record.get("privacy", {})
    eps = privacy.get("max_epsilon")
    if eps is None and privacy.get("no_dp_sites"):
        eps = "no-dp"
    elif privacy.get("no_dp_sites"):
        eps = f"{eps:.2f}*"  # some sites trained without DP
    cells = [
        record.get("round"), f"{trained}/{len(sites)}", agg.get("loss"), agg.get("accuracy"),
        balanced_accuracy(agg), agg.get("auc"), agg.get("sensitivity"), agg.get("specificity"),
        agg.get("worst_site_accuracy"), eps,
        record.get("seconds"),
    ]
    return "  ".join(_fmt(v, w, 1 if name in ("secs",) else 2 if name == "max eps" else 3)
                     for v, (name, w) in zip(cells, COLUMNS))


def warnings(record: Mapping[str, Any], classes: Sequence[str] = ()) -> list[str]:
    """Lines under a round's row when its model is one-class, inverted or weak at a site
    (`fedmed.common.model_health`); none when all is well."""
    return [f"  ! round {record.get('round')}: {line}" for line in describe(record, classes)]


def final_words(record: Mapping[str, Any] | None, classes: Sequence[str] = ()) -> str | None:
    """What the end of a run must say instead of a bare "completed" when its last round's
    model is not usable as it is; None when nothing was flagged."""
    if not record:
        return None
    lines = describe(record, classes)
    if not lines:
        return None
    return (f"warning: the final model (round {record.get('round')}): " + "; ".join(lines)
            + ". Check it with `fedmed evaluate` before any use; what helps: more images per site, "
            "a larger privacy budget, a pretrained start (--init-from).")


# Audit events that change who takes part, as the operator reads them.
NOTICES = {
    "update-rejected": "  ! round {round}: update from site {site} rejected ({reason}); left out of this round",
    "site-declined": "  ! round {round}: site {site} declined ({reason})",
    "site-joined": "  + site {site} joined (round {round})",
    "site-left": "  - site {site} left (round {round})",
    "site-name-mismatch": "  ! site {site} replied under the name {claimed!r}; recorded as {site}",
    "site-refused": "  ! a connection was refused at the public port ({reason})",
    "fleet-refused": "  ! site {site}: {call} refused at the public port ({reason})",
    "reply-rejected": "  ! round {round}: {stage} reply from site {site} rejected ({reason}); left out of this round",
}


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def notice(event: Mapping[str, Any]) -> str | None:
    """A line for the operator about an audit event that changes who takes part; None
    for the events the table already shows (or that need no attention)."""
    template = NOTICES.get(str(event.get("event")))
    return None if template is None else template.format_map(_Fields(event))
