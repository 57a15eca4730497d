"""Section 1: what a model is worth on real data, federated or not, with and without DP.

Every figure is measured on PneumoniaMNIST's official *test* split, which no run trains
or selects on: the final global model's checkpoint (``model-final.pt``) is loaded and
scored with fedmed's own `evaluate`. The only exception is the worst-site accuracy, which
comes from the last round's ``metrics.jsonl`` (``aggregate.worst_site_accuracy``), i.e.
from the sites' own validation splits, as a coordinator would see it.

All rows train the same model (``cnn`` on 28×28) for the same number of passes over
the data: R rounds × 1 local epoch federated, R epochs centralised or local-only.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.client.sitedata import read_medmnist
from fedmed.client.training import evaluate, make_loader, make_optimizer, train_local
from fedmed.common.checkpoint import load_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model
from fedmed.common.settings import ImageSettings
from fedmed.simulations.partition import partition_indices
from fedmed.simulations.sites import npz_sites

from benchmarks import pneumonia, simrun

NON_IID = "dirichlet:0.5"
QUANTITY = "quantity:0.5"
SITES = 3
IMAGE = ImageSettings(size=28)
MODEL = "cnn"
METRICS = ("accuracy", "auc", "sensitivity", "specificity")


@dataclass(frozen=True)
class Plan:
    """How big the section is. The smoke size exists to prove every path runs."""

    rounds: int
    seeds: tuple[int, ...]           # the headline rows repeat over these
    batch: int
    lr: float
    dp_batch: int
    dp_lr: float
    epsilons: tuple[float, ...]
    headline_epsilon: float
    subset: dict[str, int | None] | None  # images per split, None = the whole file
    variants: tuple[str, ...]        # which single-seed rows run


# Non-DP training: Adam at 1e-3 with batches of 64 is the federation's default optimiser
# and learns this task in a few epochs. DP-SGD adds noise of std σC/B per coordinate to
# each averaged gradient, so it wants large batches: docs/privacy.md found batch 256 and
# Adam (whose steps do not grow with the noise) workable. Its lr of 1e-2 is halved here:
# in the worst case every Adam step moves every weight by lr, and 13 such steps (the
# largest non-IID site's epoch at batch 256) at 1e-2 would move this 420 k-weight model
# (norm 8.7) by about 9.7 times its norm, too close to a tight update-size limit for
# comfort (the coordinator's default allows 50×).
FULL = Plan(rounds=15, seeds=(0, 1, 2), batch=64, lr=1e-3, dp_batch=256, dp_lr=5e-3,
            epsilons=(1.0, 3.0, 8.0), headline_epsilon=3.0, subset=None,
            variants=("local", "iid", "quantity", "fedadam", "dp"))
SMOKE = Plan(rounds=2, seeds=(0,), batch=64, lr=1e-3, dp_batch=256, dp_lr=5e-3,
             epsilons=(3.0,), headline_epsilon=3.0,
             subset={"train": 450, "val": 120, "test": None},
             variants=("local", "fedadam", "dp"))


@dataclass
class Row:
    """One table row; per-seed values are kept so the report can show mean ± std."""

    key: str
    label: str
    rounds: int
    seeds: list[int] = field(default_factory=list)
    test: list[dict[str, float]] = field(default_factory=list)  # per seed
    worst_site_val_acc: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    per_round_s: list[float] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)  # per seed: val AUC per round
    local_sites: list[dict[str, float]] = field(default_factory=list)  # local-only rows

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _log(msg: str) -> None:
    print(f"[utility] {msg}", file=sys.stderr, flush=True)


def _test_metrics(model: torch.nn.Module, test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    values = evaluate(model, test[0], test[1], torch.device("cpu"))
    return {k: float(values[k]) for k in METRICS}


def _train_in_process(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, plan: Plan) -> tuple[torch.nn.Module, float]:
    """A model trained on (x, y) alone, as the federation would initialise and train it."""
    config = FederationConfig(batch_size=plan.batch, lr=plan.lr, model=MODEL, image=IMAGE, seed=seed)
    # Same initial weights as the federated runs of this seed (fedmed.server.app.initial_arrays).
    torch.manual_seed(seed)
    model = build_model(MODEL, len(config.classes), IMAGE.size)
    optimizer = make_optimizer(model, config)
    started = time.perf_counter()
    for epoch in range(epochs):
        loader = make_loader(x, y, plan.batch, seed * 1000 + epoch)
        train_local(model, loader, optimizer, 1, torch.device("cpu"))
    return model, time.perf_counter() - started


def _centralised(npz: Path, test, plan: Plan, row: Row) -> None:
    x, y = pneumonia.model_inputs(npz, "train", IMAGE)
    for seed in plan.seeds:
        model, seconds = _train_in_process(x, y, plan.rounds, seed, plan)
        row.seeds.append(seed)
        row.test.append(_test_metrics(model, test))
        row.wall_s.append(seconds)
        row.per_round_s.append(seconds / plan.rounds)
        _log(f"centralised seed {seed}: AUC {row.test[-1]['auc']:.3f} in {seconds:.0f} s")


def _local_only(npz: Path, test, plan: Plan, row: Row) -> None:
    """Each site of the non-IID split trains alone; the row reports their mean and worst."""
    seed = plan.seeds[0]
    x, y = pneumonia.model_inputs(npz, "train", IMAGE)
    # The same partition npz_sites gives the federated non-IID runs of this seed.
    parts = partition_indices(y, SITES, NON_IID, seed)
    total = 0.0
    for i, idx in enumerate(parts):
        model, seconds = _train_in_process(x[idx], y[idx], plan.rounds, seed, plan)
        total += seconds
        metrics = _test_metrics(model, test)
        row.local_sites.append({"site": f"site{i}", "train_images": int(len(idx)),
                                "train_normal": int(np.sum(y[idx] == 0)), **metrics})
    row.seeds.append(seed)
    row.test.append({k: statistics.fmean(s[k] for s in row.local_sites) for k in METRICS})
    row.wall_s.append(total)
    row.per_round_s.append(total / plan.rounds)
    _log(f"local-only: site AUCs {[round(s['auc'], 3) for s in row.local_sites]}")


def _strategy_was_adaptive(run_dir: Path, rounds: int) -> bool:
    """Whether the run's strategy kept server-side Adam moments (only FedAdam does)."""
    payload = load_checkpoint(run_dir / "checkpoints" / f"round-{rounds:03d}.pt")
    return bool((payload.get("strategy_state") or {}).get("moments"))


def _federated(npz: Path, test, plan: Plan, row: Row, work: Path, seed: int, partition: str,
               strategy: str = "fedavg", epsilon: float | None = None) -> dict[str, Any]:
    dp = epsilon is not None
    privacy = PrivacyPolicy(enabled=True, epsilon=epsilon) if dp else PrivacyPolicy(enabled=False)
    config = FederationConfig(
        rounds=plan.rounds, epochs=1, model=MODEL, image=IMAGE, seed=seed, strategy=strategy,
        batch_size=plan.dp_batch if dp else plan.batch, lr=plan.dp_lr if dp else plan.lr,
        # With DP a site may decline a run whose noise would exceed its cap; the others
        # still train, as they would in a real federation.
        min_sites=1 if dp else SITES,
    )
    name = f"{row.key}-seed{seed}"
    sites = npz_sites(npz, SITES, partition, seed, work / name / "state", privacy)
    run = simrun.run(name, sites, config, work / name / "run", time_eval=row.key == "fedavg-noniid")
    if run.status != "completed":
        row.notes.append(f"seed {seed}: run {run.status}: {run.reason}")
        _log(f"{name}: {run.status}: {run.reason}")
        return run.to_dict()
    model = build_model(MODEL, len(config.classes), IMAGE.size)
    model.load_state_dict(load_checkpoint(work / name / "run" / "model-final.pt")["state_dict"])
    row.seeds.append(seed)
    row.test.append(_test_metrics(model, test))
    last = run.rounds[-1]
    row.worst_site_val_acc.append(float(last["aggregate"].get("worst_site_accuracy") or float("nan")))
    row.wall_s.append(run.total_s)
    row.per_round_s.append(run.per_round_s)
    row.startup_s.append(run.startup_s)
    row.curves.append([float(r["aggregate"].get("auc") or float("nan")) for r in run.rounds])
    left_out = sorted({f"{site} {status}" for r in run.rounds for site, status in r["status"].items()
                       if status != "ok"})
    if left_out:
        row.notes.append(f"seed {seed}: not every site trained every round ({', '.join(left_out)})")
    if dp:
        spent = [max(r["epsilon"].values()) for r in run.rounds if r["epsilon"]]
        sigma = next((r["noise_multiplier"] for r in reversed(run.rounds) if r["noise_multiplier"]), {})
        if spent:
            row.notes.append(f"seed {seed}: largest ε a site spent: {spent[-1]:.2f}; noise multipliers "
                             + ", ".join(f"{k} {v:.2f}" for k, v in sorted(sigma.items())))
    if strategy == "fedadam" and not _strategy_was_adaptive(work / name / "run", plan.rounds):
        row.notes.append("the ServerApp ignored `strategy = fedadam` (no server-side Adam state "
                         "in the checkpoints): this row is FedAvg")
    _log(f"{name}: test AUC {row.test[-1]['auc']:.3f}, {run.per_round_s:.1f} s/round, "
         f"start-up {run.startup_s:.0f} s")
    return run.to_dict()


def run(work: Path, smoke: bool) -> dict[str, Any]:
    """Run the section; returns {"rows": [...], "runs": [...], "plan": ..., "data": ...}."""
    plan = SMOKE if smoke else FULL
    source = pneumonia.locate()
    if source is None:
        return pneumonia.skipped("utility")
    npz = source
    if plan.subset:
        npz = pneumonia.write_subset(source, work / "pneumoniamnist-subset.npz", plan.subset, seed=0)
    test = pneumonia.model_inputs(npz, "test", IMAGE)
    rows: list[Row] = []
    runs: list[dict[str, Any]] = []

    def new(key: str, label: str) -> Row:
        rows.append(Row(key=key, label=label, rounds=plan.rounds))
        return rows[-1]

    _centralised(npz, test, plan, new("centralised", "Centralised (pooled train split)"))
    if "local" in plan.variants:
        _local_only(npz, test, plan, new("local", f"Local only, each of {SITES} non-IID sites alone"))
    if "iid" in plan.variants:
        runs.append(_federated(npz, test, plan, new("fedavg-iid", "FedAvg, 3 sites IID"), work,
                               plan.seeds[0], "iid"))
    noniid = new("fedavg-noniid", f"FedAvg, 3 sites non-IID ({NON_IID})")
    for seed in plan.seeds:
        runs.append(_federated(npz, test, plan, noniid, work, seed, NON_IID))
    if "quantity" in plan.variants:
        runs.append(_federated(npz, test, plan, new("fedavg-quantity", f"FedAvg, quantity skew ({QUANTITY})"),
                               work, plan.seeds[0], QUANTITY))
    if "fedadam" in plan.variants:
        runs.append(_federated(npz, test, plan, new("fedadam-noniid", f"FedAdam, non-IID ({NON_IID})"),
                               work, plan.seeds[0], NON_IID, strategy="fedadam"))
    if "dp" in plan.variants:
        for eps in plan.epsilons:
            seeds = plan.seeds if eps == plan.headline_epsilon else plan.seeds[:1]
            row = new(f"dp-eps{eps:g}", f"FedAvg + DP-SGD ε={eps:g}, non-IID")
            for seed in seeds:
                runs.append(_federated(npz, test, plan, row, work, seed, NON_IID, epsilon=eps))

    sizes = pneumonia.split_sizes(npz)
    partition_sizes = {}
    for partition in (NON_IID, QUANTITY, "iid"):
        y = read_medmnist(npz)["train"][1]
        partition_sizes[partition] = [
            {"images": int(len(p)), "normal": int(np.sum(y[p] == 0))}
            for p in partition_indices(y, SITES, partition, plan.seeds[0])
        ]
    return {
        "plan": dict(plan.__dict__),
        "data": {"file": pneumonia.NPZ_DISPLAY, "subset": plan.subset, "splits": sizes,
                 "partitions_seed0": partition_sizes},
        "rows": [r.to_dict() for r in rows],
        "runs": runs,
    }
