"""A run's metrics as TensorBoard scalars (`--tensorboard DIR`).

Written from the same per-round records as `metrics.jsonl`, so the event files hold
nothing the run folder does not: aggregate and per-site metrics, each site's cumulative
ε, who trained. Tags:

  aggregate/<metric>        loss, accuracy, auc, sensitivity, specificity, worst_site_*
  site/<metric>/<site>      loss, accuracy, auc, balanced_accuracy: TensorBoard draws a
                            metric's sites in one chart
  privacy/epsilon/<site>    the site's cumulative ε after the round (DP sites only)
  participation/trained     sites whose update entered the round's average
  time/round_seconds

The step is the round number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from fedmed.server.outputs import read_metrics

AGGREGATE = ("loss", "accuracy", "auc", "sensitivity", "specificity",
             "worst_site_accuracy", "worst_site_auc")
PER_SITE = ("loss", "accuracy", "auc", "balanced_accuracy")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLog:
    """Append rounds to one TensorBoard event file in `log_dir`."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package itself
            raise ValueError("--tensorboard needs the tensorboard package: "
                             "pip install 'fedmed[tensorboard]'") from None
        self.log_dir = Path(log_dir)
        try:
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        except OSError as exc:
            raise ValueError(f"--tensorboard {self.log_dir}: cannot write there ({exc.strerror or exc}); "
                             "give a folder you can create files in") from None

    def round(self, record: Mapping[str, Any]) -> None:
        step = int(record["round"])
        scalars: dict[str, float] = {}
        for key in AGGREGATE:
            scalars[f"aggregate/{key}"] = record.get("aggregate", {}).get(key)
        sites = record.get("sites", {})
        for site, values in sorted(sites.items()):
            for key in PER_SITE:
                scalars[f"site/{key}/{site}"] = values.get(key)
            scalars[f"privacy/epsilon/{site}"] = values.get("epsilon")
        scalars["participation/trained"] = sum(1 for s in sites.values() if s.get("status", "ok") == "ok")
        scalars["time/round_seconds"] = record.get("seconds")
        for tag, value in scalars.items():
            if _number(value):
                self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def export_run(run_dir: Path, log_dir: Path) -> int:
    """Write a finished (or running) run's rounds to `log_dir`; the number written."""
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'}: no rounds to export (is this a run folder?)")
    log = TensorBoardLog(log_dir)
    try:
        for row in rows:
            log.round(row)
    finally:
        log.close()
    return len(rows)
