"""What a run leaves in its output folder, written as the run goes.

RUN_DIR/
  config.json           the federation's configuration and how the run was started
  metrics.jsonl         one JSON object per completed round (see `RunRecorder.round_record`)
  checkpoints/round-NNN.pt   the global model after each round (+ the strategy's state,
                        + the round's operating threshold when its metrics row has one)
  starting-point.pt     round 1's weights and the frozen names (`server/starting_point.py`)
  model-final.pt        the final global model, with the last round's operating threshold
                        (chosen on the pooled evaluations of the run's second half)
                        (`fedmed.common.operating_point`; arg-max when there is none)
  status.json           how the run ended: {"status": "completed"|"failed", "reason": ...}
  audit.jsonl           who started and stopped the run, sites joined/left/refused, who
                        contributed to each round, rejected updates (`server/audit.py`)

A round is complete once its metrics row is written (after its checkpoint); a resumed
run (`last_completed_round`) carries on after the last complete round.

Only aggregate numbers the sites chose to send are here; no site data ever reaches it.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from fedmed.common.checkpoint import EXTENSION, save_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.file_replace import replace_text
from fedmed.common.metrics import METRIC_NAMES, aggregate_sites, threshold_pool_start
from fedmed.common.operating_point import ARGMAX_RULE, SITES_RULE, threshold_from_round

if TYPE_CHECKING:
    # Flower and the strategy only for annotations: `fedmed server start`, which follows
    # the run folder for the whole run, reads it without loading them.
    from flwr.app import ArrayRecord

    from fedmed.server.strategy.fedavg import SiteReply

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
FINAL_MODEL = f"model-final{EXTENSION}"


def _clean(value: Any) -> Any:
    """JSON has no NaN: undefined metrics (AUC on a one-class split) are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    try:
        return version("fedmed")
    except PackageNotFoundError:
        return "unknown"


def _weights(arrays: ArrayRecord) -> dict[str, Any]:
    """numpy arrays, not tensors: the ServerApp writes checkpoints without torch."""
    return {name: array.numpy() for name, array in arrays.items()}


def write_json(path: Path, data: Any) -> None:
    replace_text(path, json.dumps(_clean(data), indent=2, sort_keys=True) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_run_report(run_dir: Path) -> str:
    """Write the run's report.html and plots; a line saying where, or why not.

    A report that cannot be drawn must not turn a finished run into a failed one."""
    from fedmed.server.report import write_report

    try:
        return f"report {write_report(Path(run_dir))}"
    except Exception as exc:  # noqa: BLE001
        return f"no report ({type(exc).__name__}: {exc}); retry with `fedmed report {run_dir}`"


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_interrupted(run_dir: Path, how: str) -> dict[str, Any]:
    """Record in status.json that the run was stopped by the operator (`how`: Ctrl-C,
    SIGTERM) after its last completed round; returns what was written."""
    run_dir = Path(run_dir)
    try:
        planned = json.loads((run_dir / CONFIG_FILE).read_text())["federation"]["rounds"]
    except (OSError, ValueError, KeyError, TypeError):
        planned = None
    status = {"status": "interrupted", "reason": f"stopped by {how}",
              "rounds_completed": last_completed_round(run_dir), "rounds_planned": planned}
    write_json(run_dir / STATUS_FILE, status)
    return status


def privacy_summary(sites: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The largest cumulative ε any site reported, and which sites trained without DP."""
    eps = [v["epsilon"] for v in sites.values()
           if isinstance(v.get("epsilon"), float) and math.isfinite(v["epsilon"])]
    return {
        "max_epsilon": max(eps) if eps else None,
        "no_dp_sites": sorted(k for k, v in sites.items() if v.get("dp") is False),
    }


def last_completed_round(run_dir: Path) -> int:
    """The last round with both a metrics row and a checkpoint; 0 when there is none."""
    rounds = [r["round"] for r in read_metrics(run_dir)]
    for server_round in sorted(rounds, reverse=True):
        if (Path(run_dir) / "checkpoints" / f"round-{server_round:03d}{EXTENSION}").exists():
            return server_round
    return 0


class RunRecorder:
    """Observer of a SiteAwareFedAvg run that writes the run folder."""

    def __init__(self, out_dir: Path, config: FederationConfig, meta: dict[str, Any] | None = None,
                 on_round: Callable[[dict[str, Any]], None] | None = None,
                 resume_after: int = 0,
                 checkpoint_extra: Callable[[], dict[str, Any]] | None = None) -> None:
        """`resume_after`: rounds already complete in this folder (kept, not rewritten)."""
        self.out_dir = Path(out_dir)
        self.config = config
        self.on_round = on_round
        self.checkpoint_extra = checkpoint_extra
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "checkpoints").mkdir(exist_ok=True)
        # When and with which fedmed the run was started, for the report.
        write_json(self.out_dir / CONFIG_FILE, {"federation": config.to_dict(), "started_at": _now(),
                                                "fedmed_version": _version(), **(meta or {})})
        (self.out_dir / STATUS_FILE).unlink(missing_ok=True)
        if resume_after:
            kept = [r for r in read_metrics(self.out_dir) if r["round"] <= resume_after]
            (self.out_dir / METRICS_FILE).write_text(
                "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        else:
            (self.out_dir / METRICS_FILE).unlink(missing_ok=True)
        self._train: dict[int, list[SiteReply]] = {}
        self._round_started = time.perf_counter()
        self.last_arrays: ArrayRecord | None = None
        self.rounds_done = resume_after
        # The round whose checkpoint was written last, with its weights and extras: its
        # operating threshold is known only once the round's evaluation is in.
        self._checkpointed: tuple[int, ArrayRecord, dict[str, Any]] | None = None
        kept = read_metrics(self.out_dir) if resume_after else []
        self.last_threshold = threshold_from_round(kept[-1]) if kept and len(config.classes) == 2 else None

    def checkpoint_path(self, server_round: int) -> Path:
        return self.out_dir / "checkpoints" / f"round-{server_round:03d}{EXTENSION}"

    def on_train(self, server_round: int, replies: list[SiteReply], arrays: ArrayRecord | None) -> None:
        self._train[server_round] = replies
        if arrays is not None:
            self.last_arrays = arrays
            extra = {"strategy_state": self.checkpoint_extra()} if self.checkpoint_extra else {}
            save_checkpoint(self.checkpoint_path(server_round), _weights(arrays),
                            self.config, server_round, extra)
            self._checkpointed = (server_round, arrays, extra)

    def round_record(self, server_round: int, evaluated: list[SiteReply],
                     pooled: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """{"round", "sites": {name: {...}}, "aggregate": {...}, "seconds"} for one round;
        `pooled`: the strategy's pooled metrics at the operating threshold, when the sites
        sent histograms (`fedmed.common.metrics.evaluation_round`)."""
        sites: dict[str, dict[str, Any]] = {}
        for reply in self._train.get(server_round, []):
            entry = sites.setdefault(reply.site, {})
            entry["status"] = reply.status
            if reply.reason:
                entry["reason"] = reply.reason
            for key in ("train_seconds", "epsilon", "noise_multiplier", "delta", "steps"):
                if key in reply.metrics:
                    entry[key] = float(reply.metrics[key])
            if "num-examples" in reply.metrics:
                entry["num_train_examples"] = int(reply.metrics["num-examples"])
            if "dp" in reply.metrics:
                entry["dp"] = bool(reply.metrics["dp"])
        for reply in evaluated:
            entry = sites.setdefault(reply.site, {"status": reply.status})
            if reply.status != "ok":
                entry.setdefault("eval_status", reply.status)
                continue
            entry["num_examples"] = int(reply.metrics.get("num-examples", 0))
            for name in (*METRIC_NAMES, "balanced_accuracy", "eval_seconds"):
                if name in reply.metrics:
                    entry[name] = float(reply.metrics[name])
            for name in ("confusion", "roc"):
                if name in reply.metrics:
                    entry[name] = reply.metrics[name]
            if "dp_metrics" in reply.metrics:
                entry["dp_metrics"] = bool(reply.metrics["dp_metrics"])
            if "epsilon" in reply.metrics:  # the release's row comes after the round's training
                entry["epsilon"] = max(float(reply.metrics["epsilon"]), entry.get("epsilon", 0.0))
        evaluated_sites = {k: v for k, v in sites.items() if "num_examples" in v}
        aggregate = aggregate_sites(evaluated_sites)
        if pooled is not None:
            aggregate.update({name: pooled[name] for name in (
                "accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "confusion", "roc",
                "threshold")})
        return {
            "round": server_round,
            "sites": dict(sorted(sites.items())),
            "aggregate": aggregate,
            "privacy": privacy_summary(sites),
            "seconds": time.perf_counter() - self._round_started,
        }

    def threshold_extra(self, threshold: float | None, server_round: int) -> dict[str, Any]:
        """The checkpoint keys saying how the model turns probabilities into a decision."""
        if threshold is None:
            return {"threshold_rule": ARGMAX_RULE}
        first = threshold_pool_start(self.config.rounds)
        rounds = f"rounds {first}-{server_round}" if first < server_round else f"round {server_round}"
        return {"threshold": threshold, "threshold_rule": f"{SITES_RULE}, {rounds}"}

    def on_evaluate(self, server_round: int, replies: list[SiteReply],
                    pooled: Mapping[str, Any] | None = None) -> None:
        record = _clean(self.round_record(server_round, replies, pooled))
        # A cut-off on P(class 1) means something for two classes only.
        self.last_threshold = threshold_from_round(record) if len(self.config.classes) == 2 else None
        if self.last_threshold is not None and self._checkpointed and self._checkpointed[0] == server_round:
            # Before the metrics row: a round is complete only with both, and then its
            # checkpoint already carries the threshold its evaluation chose.
            _, arrays, extra = self._checkpointed
            if self.checkpoint_extra:  # the strategy's state now holds this round's evaluation too
                extra = {**extra, "strategy_state": self.checkpoint_extra()}
            save_checkpoint(self.checkpoint_path(server_round), _weights(arrays), self.config,
                            server_round, {**extra, **self.threshold_extra(self.last_threshold, server_round)})
        with open(self.out_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        self.rounds_done = server_round
        self._round_started = time.perf_counter()
        if self.on_round is not None:
            self.on_round(record)

    def finish(self, status: str, reason: str = "", final_arrays: ArrayRecord | None = None) -> None:
        arrays = final_arrays or self.last_arrays
        if arrays is not None:
            save_checkpoint(self.out_dir / FINAL_MODEL, _weights(arrays),
                            self.config, self.rounds_done,
                            self.threshold_extra(self.last_threshold, self.rounds_done))
        write_json(self.out_dir / STATUS_FILE, {
            "status": status, "reason": reason, "rounds_completed": self.rounds_done,
            "rounds_planned": self.config.rounds, "finished_at": _now(),
        })
