"""Section 3: the part of a round that is neither training nor evaluation, and the bytes
a site sends and receives per round.

Definition. A round is a training phase and an evaluation phase, each ending at a barrier
(the coordinator waits for every site). If `k` sites can compute at once, the least time
a phase with per-site compute times t_1..t_n can take is

    C(t, k) = max(max_i t_i, sum_i t_i / k)

-- the slowest site, or the total work spread perfectly over `k` workers. The round's
*overhead* is its wall time minus C(train) - C(eval): message passing, serialisation,
scheduling, process and actor start-up, data loading before training, polling waits and
aggregation. Since C is a lower bound on the compute's critical path, the overhead is an
upper bound (a schedule that packs the sites less than perfectly counts as overhead).
`k` is the number of Ray actors in a simulation (one per core with one CPU per site) and
the number of sites in a deployment (each SuperNode runs its own ClientApp processes).

Training times are each site's ``train_seconds`` in ``metrics.jsonl``; that file keeps no
evaluation times, so evaluation is re-timed outside the run (`simrun.site_costs`).
Round 1 is left out everywhere: it carries Ray's or the SuperNodes' start-up.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common import serde

from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model
from fedmed.common.settings import ImageSettings
from fedmed.simulations.sites import dicom_sites
from fedmed.simulations.synthetic_dicom import write_sites

from benchmarks import deployment, simrun

SITES = ("A", "B", "C")
IMAGE_SIZE = 28
BATCH = 32
FULL = {"rounds": 5, "images_per_site": 120}
SMOKE = {"rounds": 2, "images_per_site": 24}


def _log(msg: str) -> None:
    print(f"[overhead] {msg}", file=sys.stderr, flush=True)


def phase_time(times: list[float], k: int) -> float:
    """C(t, k) from the module docstring."""
    return max(max(times), sum(times) / k) if times else 0.0


def breakdown(rounds: list[dict[str, Any]], k: int, eval_estimate: dict[str, float] | None = None
              ) -> list[dict[str, float]]:
    """Per round after the first: wall, compute (training + evaluation) and overhead."""
    out = []
    for r in rounds[1:]:
        train = [float(v) for v in r["train"].values()]
        evals = r.get("eval") or eval_estimate or {}
        ev = [float(evals[s]) for s in r["train"] if s in evals]
        compute = phase_time(train, k) + phase_time(ev, k)
        out.append({"round": r["round"], "wall_s": float(r["seconds"]), "train_s": phase_time(train, k),
                    "eval_s": phase_time(ev, k), "compute_s": compute,
                    "overhead_s": float(r["seconds"]) - compute})
    return out


def summarise(per_round: list[dict[str, float]]) -> dict[str, float]:
    if not per_round:
        return {}
    mean = {key: statistics.fmean(r[key] for r in per_round)
            for key in ("wall_s", "train_s", "eval_s", "compute_s", "overhead_s")}
    mean["overhead_fraction"] = mean["overhead_s"] / mean["wall_s"] if mean["wall_s"] else float("nan")
    mean["rounds"] = len(per_round)
    return mean


def model_bytes(model: str, image_size: int, classes: int = 2) -> dict[str, int]:
    """The floor (float32 weights) and what Flower's ArrayRecord serialises them to."""
    state = build_model(model, classes, image_size).state_dict()
    record = ArrayRecord(state)
    return {
        "parameters": int(sum(t.numel() for t in state.values())),
        "float32_bytes": int(sum(t.numel() * t.element_size() for t in state.values())),
        "arrayrecord_proto_bytes": int(serde.array_record_to_proto(record).ByteSize()),
    }


def _deployment_bytes(rounds: list[dict[str, Any]]) -> dict[str, float]:
    later = rounds[1:] or rounds
    up = [v for r in later for v in r["bytes_up"].values()]
    down = [v for r in later for v in r["bytes_down"].values()]
    return {"up_per_site_round": statistics.fmean(up) if up else float("nan"),
            "down_per_site_round": statistics.fmean(down) if down else float("nan")}


def run(work: Path, smoke: bool, utility: dict[str, Any] | None = None) -> dict[str, Any]:
    """Simulation and deployment on the same synthetic sites, plus the real-data runs of
    the utility section when it ran in this invocation or an earlier one."""
    size = SMOKE if smoke else FULL
    data = work / "synthetic"
    _log(f"writing {len(SITES)} synthetic sites × {size['images_per_site']} images")
    write_sites(data, SITES, images_per_site=size["images_per_site"], seed=0)
    config = FederationConfig(rounds=size["rounds"], batch_size=BATCH, image=ImageSettings(size=IMAGE_SIZE),
                              min_sites=len(SITES), seed=0)
    rows: list[dict[str, Any]] = []

    _log("simulation on the synthetic sites")
    sim = simrun.run("overhead-simulation", dicom_sites(data, work / "sim-state", PrivacyPolicy(enabled=False)),
                     config, work / "sim-run", time_eval=True)
    sim_rounds = breakdown(sim.rounds, sim.concurrent)
    rows.append({"setting": "simulation", "data": f"synthetic DICOM, {len(SITES)} sites",
                 "concurrent": sim.concurrent, "status": sim.status, "startup_s": sim.startup_s,
                 "total_s": sim.total_s, "load_s": sim.load_s, **summarise(sim_rounds), "per_round": sim_rounds})

    _log("deployment on loopback: SuperLink + 3 SuperNodes")
    dep = deployment.run(data, SITES, work / "deployment", rounds=size["rounds"], image_size=IMAGE_SIZE,
                         batch_size=BATCH, timeout=600.0)
    dep_sites = dicom_sites(data, work / "deployment-eval-state", PrivacyPolicy(enabled=False))
    # A deployed site runs its ClientApp outside Ray, with torch's default thread count.
    dep_costs = simrun.site_costs(dep_sites, config, threads=torch.get_num_threads())
    dep_rounds = breakdown(dep["rounds"], len(SITES), dep_costs["eval"])
    rows.append({"setting": "deployment", "data": f"synthetic DICOM, {len(SITES)} sites",
                 "concurrent": len(SITES), "status": "completed" if dep["completed"] else
                 f"failed (exit {dep['exit_code']})", "startup_s": dep["time_to_round1_s"],
                 "total_s": dep["total_s"], "load_s": dep_costs["load"], **summarise(dep_rounds),
                 "per_round": dep_rounds})

    for r in (utility or {}).get("runs", []):
        if r.get("label", "").startswith("fedavg-noniid") and r.get("status") == "completed":
            per_round = breakdown(r["rounds"], r["concurrent"])
            rows.append({"setting": "simulation", "data": f"PneumoniaMNIST, {r['sites']} sites non-IID "
                         f"({r['label'].rsplit('-', 1)[-1]})", "concurrent": r["concurrent"],
                         "status": r["status"], "startup_s": r["startup_s"], "total_s": r["total_s"],
                         "load_s": r.get("load_s"), **summarise(per_round), "per_round": per_round})

    floor = model_bytes(config.model, IMAGE_SIZE)
    measured = _deployment_bytes(dep["rounds"])
    return {
        # The deployment ran with fedmed's request pacing (`client/fleet_polling.py`, `server/fast_grid.py`).
        "paced": True,
        "config": {"rounds": config.rounds, "batch": BATCH, "image": IMAGE_SIZE, "model": config.model,
                   "images_per_site": size["images_per_site"]},
        "rows": rows,
        "bytes": {
            "model": floor,
            "deployment_measured": measured,
            # In a simulation the messages never touch a socket: a site receives the
            # global model twice per round (training, evaluation) and returns it once.
            "simulation_computed": {"up_per_site_round": floor["arrayrecord_proto_bytes"],
                                    "down_per_site_round": 2 * floor["arrayrecord_proto_bytes"]},
        },
        "deployment": dep,
        "simulation_memory": sim.memory,
    }
