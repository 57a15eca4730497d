"""One `fedmed` simulation, timed: start-up, time per round, peak memory of the tree.

Every `simulate` call starts Ray (its daemons, then one actor per concurrent site, each
importing torch) and stops it again. That start-up is paid once per run, not per round,
so it is reported apart:

- ``per_round_s``: the mean wall time of rounds 2..R, from ``metrics.jsonl``'s
  ``seconds`` (the coordinator's clock from the end of one round to the end of the next);
- ``startup_s``: ``total_s - R * per_round_s`` -- Ray's start and stop, the actors'
  start, and each site's first data load, which all land in round 1;
- ``total_s``: the whole `simulate` call.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedmed.client.site import Site
from fedmed.client.training import evaluate
from fedmed.common.models import build_model
from fedmed.common.federation import FederationConfig
from fedmed.server.outputs import read_metrics
from fedmed.simulations.runner import simulate

from benchmarks.proctree import TreeMemory


def concurrent_sites(num_sites: int, cpus_per_site: float = 1.0) -> int:
    """How many sites Flower's Ray backend trains at once: one actor per `cpus_per_site`
    of the machine's cores, never more actors than there are sites to run."""
    actors = max(1, int((os.cpu_count() or 1) / cpus_per_site))
    return min(actors, num_sites)


@dataclass
class SimRun:
    """The timing of one simulation and the per-round numbers the benchmarks use."""

    label: str
    status: str
    reason: str
    sites: int
    rounds_planned: int
    total_s: float
    per_round_s: float
    startup_s: float
    round_s: list[float]
    concurrent: int
    memory: dict[str, Any]
    load_before: float
    load_after: float
    # Per round: {"round", "seconds", "train": {site: s}, "eval": {site: s} | None,
    # "status": {site: status}, "aggregate": {...}}
    rounds: list[dict[str, Any]] = field(default_factory=list)
    load_s: dict[str, float] | None = None  # per site, when timed (see `site_costs`)
    cpu_marks: list[float] = field(default_factory=list)  # the tree's CPU seconds at each round's end

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    sites = record.get("sites", {})
    evals = {k: v["eval_seconds"] for k, v in sites.items() if "eval_seconds" in v}
    return {
        "round": record["round"],
        "seconds": record["seconds"],
        "train": {k: v.get("train_seconds", 0.0) for k, v in sites.items()},
        # metrics.jsonl keeps only the sites' metrics, not how long evaluation took;
        # None tells the overhead benchmark to time evaluation itself.
        "eval": evals or None,
        "status": {k: v.get("status", "?") for k, v in sites.items()},
        "epsilon": {k: v["epsilon"] for k, v in sites.items() if v.get("epsilon") is not None},
        "noise_multiplier": {k: v["noise_multiplier"] for k, v in sites.items()
                             if v.get("noise_multiplier") is not None},
        "aggregate": record.get("aggregate", {}),
    }


def site_costs(sites: list[Site], config: FederationConfig, threads: int = 1,
               repeats: int = 3) -> dict[str, dict[str, float]]:
    """Each site's evaluation time and data-load time, timed here: the fastest of `repeats`.

    `metrics.jsonl` does not keep the sites' evaluation times, and the overhead of a
    round is its wall time minus training *and* evaluation. A site's evaluation is one
    forward pass over its validation split, so it can be re-timed outside the run with
    the same data, model and thread count (a Ray actor with one CPU runs one thread).
    The load time is what a site pays when its process has to load its data again.

    Returns {"eval": {site: s}, "load": {site: s}}.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out: dict[str, dict[str, float]] = {"eval": {}, "load": {}}
        for site in sites:
            started = time.perf_counter()
            data = site.load_data(config)
            out["load"][site.name] = time.perf_counter() - started
            model = build_model(config.model, len(config.classes), config.image.size)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                evaluate(model, data.val_x, data.val_y, torch.device("cpu"))
                times.append(time.perf_counter() - started)
            out["eval"][site.name] = min(times)
        return out
    finally:
        torch.set_num_threads(previous)


def run(label: str, sites: list[Site], config: FederationConfig, run_dir: Path,
        cpus_per_site: float = 1.0, time_eval: bool = False, meta: dict[str, Any] | None = None) -> SimRun:
    """Simulate `sites` under `config` into `run_dir` and time it.

    time_eval: also time each site's evaluation and data load here (see `site_costs`)
        and put the evaluation times in the rounds whose records lack them.
    meta: more of config.json's run description, e.g. a starting model (`init_from`, `freeze`).
    """
    # `fedmed client` creates a site's state folder before the site trains; the sites of
    # `npz_sites` get none, and a DP site writes its privacy plan there in round 1.
    for site in sites:
        Path(site.state_dir).mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    cpu_marks: list[float] = []
    with TreeMemory() as memory:
        status = simulate(sites, config, run_dir, cpus_per_site=cpus_per_site, meta={"benchmark": label, **(meta or {})},
                          on_round=lambda _record: cpu_marks.append(memory.cpu_seconds()))
    total = time.perf_counter() - started
    records = read_metrics(run_dir)
    round_s = [float(r["seconds"]) for r in records]
    later = round_s[1:] or round_s
    per_round = statistics.fmean(later) if later else float("nan")
    rounds = [_compact(r) for r in records]
    costs = None
    if time_eval and rounds:
        costs = site_costs(sites, config, threads=max(1, int(cpus_per_site)))
        for r in rounds:
            if r["eval"] is None:
                r["eval"], r["eval_timed_here"] = costs["eval"], True
    return SimRun(
        label=label,
        status=str(status.get("status")),
        reason=str(status.get("reason") or ""),
        sites=len(sites),
        rounds_planned=config.rounds,
        total_s=total,
        per_round_s=per_round,
        startup_s=total - len(round_s) * per_round if round_s else total,
        round_s=round_s,
        concurrent=concurrent_sites(len(sites), cpus_per_site),
        memory=memory.summary(),
        load_before=load_before,
        load_after=os.getloadavg()[0],
        rounds=rounds,
        load_s=costs["load"] if costs else None,
        cpu_marks=cpu_marks,
    )
