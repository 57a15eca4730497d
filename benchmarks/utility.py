"""Section 1: what a model is worth on real data, federated or not, with and without DP.

Every figure is measured on PneumoniaMNIST's official *test* split, which no run trains
or selects on: the final global model's checkpoint (``model-final.pt``) is loaded and
scored with fedmed's own `evaluate`. The only exception is the worst-site accuracy, which
comes from the last round's ``metrics.jsonl`` (``aggregate.worst_site_accuracy``), i.e.
from the sites' own validation splits, as a coordinator would see it.

The no-DP rows train ``dpcnn`` on 28×28 and the DP rows the federation's default model
(``scatternet``, the DP recipe's), for the same number of passes over the data: R rounds ×
1 local epoch federated, R epochs centralised or local-only. DP rows train with the
federation's DP recipe (SGD at ``dp_lr`` with momentum ``dp_momentum`` on Poisson batches of
``dp_batch_size``), with the federation's default augmentation setting (which, with DP,
augments only with two or more views per record).

Besides the arg-max figures, each row reports sensitivity, specificity and balanced
accuracy at an operating threshold on P(pneumonia) chosen on the sites' validation splits
by fedmed's own rule (`fedmed.common.metrics.choose_threshold` on the pooled validation
images' score histograms, here without noise); a federated row also keeps the same at the
run's own threshold (chosen by the coordinator on the sites' histograms of the run's second
half, pooled; noised when DP is on), which is what the trained model ships with.

Rows keyed ``drift-*`` (one seed, `DRIFT_SEED`) try, where the no-DP federation falls
furthest short of centralised training, whether `scatternet` or server momentum closes
the gap (`drift_candidates`).

A separate set of rows (keys ``pretrained-start``, ``pretrained-dp-eps<E>``; select them
with ``FEDMED_UTILITY_ROWS``) starts the DP federations from a model pretrained on half of
the official val split, which no site then holds (`_pretrained_start`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
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
from fedmed.client.augmentation import settings_for
from fedmed.client.training import evaluate, make_loader, make_optimizer, train_local
from fedmed.common.checkpoint import load_checkpoint
from fedmed.common.metrics import binary_auc, choose_threshold, score_histograms
from fedmed.common.operating_point import threshold_from_round
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
MODEL = "dpcnn"                    # the pretrained start's model (its rows keep it)
METRICS = ("accuracy", "auc", "sensitivity", "specificity")
THRESHOLD_METRICS = ("balanced_accuracy", "threshold", "sensitivity_at_threshold",
                     "specificity_at_threshold", "balanced_accuracy_at_threshold")


_DP = FederationConfig()
DP_MODEL = _DP.model               # the DP rows: the DP recipe's model


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
    dp_strategy: str = _DP.strategy  # the coordinator's strategy in the DP rows
    pretrain_epochs: int = 40        # the pretrained start's epochs on its images (few, so many epochs)
    dp_momentum: float = _DP.dp_momentum
    model: str = MODEL               # the no-DP rows' model (centralised, local-only, FedAvg)
    augment: bool = True             # whether the no-DP rows augment
    optimizer: str = "adam"          # the no-DP rows' local optimiser (FederationConfig.optimizer)


# Non-DP training: Adam at 1e-3 with batches of 64 learns this task in a few epochs. DP
# rows use the federation's DP recipe (FederationConfig.dp_batch_size, dp_lr: SGD with
# momentum on large Poisson batches; docs/privacy.md, "The DP recipe"). Every seed of
# every ε is run: a DP row must learn at each seed, not on average.
FULL = Plan(rounds=15, seeds=(0, 1, 2), batch=64, lr=1e-3, dp_batch=_DP.dp_batch_size, dp_lr=_DP.dp_lr,
            epsilons=(1.0, 3.0, 8.0), headline_epsilon=3.0, subset=None,
            variants=("local", "dp", "dp-all-seeds", "ablations", "pretrained", "drift"))
SMOKE = Plan(rounds=2, seeds=(0,), batch=64, lr=1e-3, dp_batch=_DP.dp_batch_size, dp_lr=_DP.dp_lr,
             epsilons=(3.0,), headline_epsilon=3.0,
             subset={"train": 450, "val": 120, "test": None},
             variants=("local", "fedadam", "fedavgm", "dp", "pretrained", "drift"), pretrain_epochs=2)


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


def _balanced(scores: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float, float]:
    pred = scores >= threshold
    sens = float(np.mean(pred[y == 1])) if np.any(y == 1) else math.nan
    spec = float(np.mean(~pred[y == 0])) if np.any(y == 0) else math.nan
    return sens, spec, (sens + spec) / 2


def _median_logit(scores: np.ndarray) -> float:
    if not len(scores):
        return math.nan
    p = float(np.clip(np.median(np.asarray(scores, dtype=np.float64)), 1e-12, 1 - 1e-12))
    return math.log(p / (1 - p))


def _val_threshold(model: torch.nn.Module, val: tuple[np.ndarray, np.ndarray]) -> float:
    """The operating threshold the coordinator would choose from the sites' pooled
    validation histograms were they not noised: fedmed's own rule (`choose_threshold`) on
    the exact histograms of the validation images' scores."""
    from fedmed.client.training import predict_proba

    scores = predict_proba(model, val[0], torch.device("cpu"))[:, 1]
    return choose_threshold(score_histograms(scores, val[1]))


def _test_metrics(model: torch.nn.Module, test: tuple[np.ndarray, np.ndarray],
                  val: tuple[np.ndarray, np.ndarray] | None = None,
                  run_threshold: float | None = None) -> dict[str, float]:
    """The test split's metrics at the arg-max, at the threshold chosen on `val`, and at
    `run_threshold` (the run's own, chosen on the sites' noised histograms) when given."""
    from fedmed.client.training import predict_proba

    values = evaluate(model, test[0], test[1], torch.device("cpu"))
    out = {k: float(values[k]) for k in METRICS}
    out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2
    scores = predict_proba(model, test[0], torch.device("cpu"))[:, 1]
    if val is not None:
        threshold = _val_threshold(model, val)
        sens, spec, bal = _balanced(scores, test[1], threshold)
        out.update(threshold=threshold, sensitivity_at_threshold=sens, specificity_at_threshold=spec,
                   balanced_accuracy_at_threshold=bal)
        # Where each split's images of each class score (median logit): a threshold set on
        # validation data carries over to the test split only as far as these agree.
        val_scores = predict_proba(model, val[0], torch.device("cpu"))[:, 1]
        for split, (s, y) in (("val", (val_scores, val[1])), ("test", (scores, test[1]))):
            for k, name in ((0, "negative"), (1, "positive")):
                out[f"{split}_{name}_median_logit"] = _median_logit(s[np.asarray(y) == k])
        assert math.isclose(binary_auc(scores, test[1] == 1), out["auc"], abs_tol=1e-9) or math.isnan(out["auc"])
    if run_threshold is not None:
        sens, spec, bal = _balanced(scores, test[1], run_threshold)
        out.update(run_threshold=run_threshold, sensitivity_at_run_threshold=sens,
                   specificity_at_run_threshold=spec, balanced_accuracy_at_run_threshold=bal)
    return out


def _train_in_process(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, plan: Plan) -> tuple[torch.nn.Module, float]:
    """A model trained on (x, y) alone, as the federation would initialise and train it."""
    config = FederationConfig(batch_size=plan.batch, lr=plan.lr, model=plan.model, image=IMAGE, seed=seed,
                              augment=plan.augment, optimizer=plan.optimizer)
    # Same initial weights as the federated runs of this seed (fedmed.server.app.initial_arrays).
    torch.manual_seed(seed)
    model = build_model(plan.model, len(config.classes), IMAGE.size)
    optimizer = make_optimizer(model, config)
    started = time.perf_counter()
    for epoch in range(epochs):
        loader = make_loader(x, y, plan.batch, seed * 1000 + epoch)
        train_local(model, loader, optimizer, 1, torch.device("cpu"),
                    augmentation=settings_for(config), seed=seed * 1000 + epoch)
    return model, time.perf_counter() - started


def _centralised(npz: Path, test, val, plan: Plan, row: Row) -> None:
    x, y = pneumonia.model_inputs(npz, "train", IMAGE)
    for seed in plan.seeds:
        model, seconds = _train_in_process(x, y, plan.rounds, seed, plan)
        row.seeds.append(seed)
        row.test.append(_test_metrics(model, test, val))
        row.wall_s.append(seconds)
        row.per_round_s.append(seconds / plan.rounds)
        _log(f"centralised seed {seed}: AUC {row.test[-1]['auc']:.3f} in {seconds:.0f} s")


def _local_only(npz: Path, test, val, plan: Plan, row: Row) -> None:
    """Each site of the non-IID split trains alone; the row reports their mean and worst."""
    seed = plan.seeds[0]
    x, y = pneumonia.model_inputs(npz, "train", IMAGE)
    # The same partition npz_sites gives the federated non-IID runs of this seed.
    parts = _site_train_parts(npz, NON_IID, seed)
    total = 0.0
    for i, idx in enumerate(parts):
        model, seconds = _train_in_process(x[idx], y[idx], plan.rounds, seed, plan)
        total += seconds
        metrics = _test_metrics(model, test, val)
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


def _federated(npz: Path, test, val, plan: Plan, row: Row, work: Path, seed: int, partition: str,
               strategy: str = "fedavg", epsilon: float | None = None, augment: bool | None = None,
               views: int = 1, start: "PretrainedStart | None" = None) -> dict[str, Any]:
    """One federated run of `row` at `seed`; `start`: begin from the pretrained model, the
    sites holding only the val images it was not trained on. `augment` None: the plan's
    setting without DP, the federation's default with DP."""
    dp = epsilon is not None
    privacy = PrivacyPolicy(enabled=True, epsilon=epsilon) if dp else PrivacyPolicy(enabled=False)
    # A pretrained start fixes the model (its weights); otherwise DP rows train the DP
    # recipe's model and the no-DP rows the plan's.
    model_name = MODEL if start is not None else DP_MODEL if dp else plan.model
    if augment is None:
        augment = _DP.augment if dp else plan.augment
    config = FederationConfig(
        rounds=plan.rounds, epochs=1, model=model_name, image=IMAGE, seed=seed, strategy=strategy,
        batch_size=plan.batch, lr=plan.lr, optimizer=plan.optimizer, dp_batch_size=plan.dp_batch, dp_lr=plan.dp_lr,
        dp_momentum=plan.dp_momentum,
        augment=augment, augment_views=views,
        # With DP a site may decline a run whose noise would exceed its cap; the others
        # still train, as they would in a real federation.
        min_sites=1 if dp else SITES,
    )
    name = f"{row.key}-seed{seed}"
    sites = npz_sites(npz, SITES, partition, seed, work / name / "state", privacy,
                      kept_back_val=None if start is None else start.val_indices)
    meta = {}
    if start is not None:
        from fedmed.common.starting_model import transfer_meta

        meta = transfer_meta(start.model, "none", config)
    # FEDMED_UTILITY_CPUS_PER_SITE=2 on a 2-core machine: one Ray actor takes the sites in
    # turn, half the memory of two (a machine shared with other jobs can run out of it).
    cpus = float(os.environ.get("FEDMED_UTILITY_CPUS_PER_SITE", "1"))
    run = simrun.run(name, sites, config, work / name / "run", cpus_per_site=cpus,
                     time_eval=row.key == "fedavg-noniid", meta=meta)
    if run.status != "completed":
        row.notes.append(f"seed {seed}: run {run.status}: {run.reason}")
        _log(f"{name}: {run.status}: {run.reason}")
        return run.to_dict()
    model = build_model(model_name, len(config.classes), IMAGE.size)
    model.load_state_dict(load_checkpoint(work / name / "run" / "model-final.pt")["state_dict"])
    row.seeds.append(seed)
    last = run.rounds[-1]
    row.test.append(_test_metrics(model, test, val, run_threshold=threshold_from_round(last)))
    if start is None:  # with a pretrained start the sites hold only part of the val split
        row.test[-1].update(_held_out(model, val, npz, partition, seed))
    if "run_threshold" in row.test[-1]:
        t = row.test[-1]
        row.notes.append(f"seed {seed}: the run's own operating threshold (chosen by the coordinator on the "
                         f"sites' {'noised ' if dp else ''}histograms) {t['run_threshold']:.4f}: test sensitivity "
                         f"{t['sensitivity_at_run_threshold']:.3f}, specificity {t['specificity_at_run_threshold']:.3f}, "
                         f"balanced accuracy {t['balanced_accuracy_at_run_threshold']:.3f}")
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


def _site_parts(npz: Path, partition: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each site's (train indices, val indices), exactly as `npz_sites` splits the file:
    one partition over train and val together, each site keeping its part of each."""
    splits = read_medmnist(npz)
    n_train = len(splits["train"][1])
    labels = np.concatenate([splits["train"][1], splits["val"][1]])
    return [(p[p < n_train], p[p >= n_train] - n_train) for p in partition_indices(labels, SITES, partition, seed)]


def _site_train_parts(npz: Path, partition: str, seed: int) -> list[np.ndarray]:
    """The training indices each site holds (`_site_parts`)."""
    return [train for train, _ in _site_parts(npz, partition, seed)]


def _held_out(model: torch.nn.Module, val: tuple[np.ndarray, np.ndarray], npz: Path, partition: str,
              seed: int) -> dict[str, Any]:
    """The final model's exact AUC on the sites' held-out images (their val parts, which
    together are the val split): pooled, and per site with its count of each class."""
    from fedmed.client.training import predict_proba

    scores = predict_proba(model, val[0], torch.device("cpu"))[:, 1]
    y = np.asarray(val[1]) == 1
    per_site = []
    for _, part in _site_parts(npz, partition, seed):
        auc = binary_auc(scores[part], y[part]) if 0 < y[part].sum() < len(part) else math.nan
        per_site.append({"auc": float(auc), "positive": int(y[part].sum()), "negative": int((~y[part]).sum())})
    return {"heldout_auc": float(binary_auc(scores, y)), "heldout_sites": per_site}


def run(work: Path, smoke: bool) -> dict[str, Any]:
    """Run the section; returns {"rows": [...], "runs": [...], "plan": ..., "data": ...}.

    After every row's run the rows so far are also written to ``work/utility-partial.json``,
    so a long run that is stopped still leaves what it measured. ``FEDMED_UTILITY_ROWS``
    (comma-separated row keys) runs only those rows, ``FEDMED_UTILITY_DP_SEEDS`` only those
    seeds of the DP rows: a long section can then be split across processes and their rows
    joined into one results.json."""
    plan = SMOKE if smoke else FULL
    source = pneumonia.locate()
    if source is None:
        return pneumonia.skipped("utility")
    npz = source
    if plan.subset:
        npz = pneumonia.write_subset(source, work / "pneumoniamnist-subset.npz", plan.subset, seed=0)
    test = pneumonia.model_inputs(npz, "test", IMAGE)
    val = pneumonia.model_inputs(npz, "val", IMAGE)
    rows: list[Row] = []
    runs: list[dict[str, Any]] = []
    partial = Path(work) / "utility-partial.json"
    only = {k.strip() for k in os.environ.get("FEDMED_UTILITY_ROWS", "").split(",") if k.strip()}
    only_seeds = {int(k) for k in os.environ.get("FEDMED_UTILITY_DP_SEEDS", "").split(",") if k.strip()}

    def wanted(key: str) -> bool:
        return not only or key in only

    def new(key: str, label: str) -> Row:
        rows.append(Row(key=key, label=label, rounds=plan.rounds))
        return rows[-1]

    def keep(result: dict[str, Any]) -> None:
        runs.append(result)
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps([r.to_dict() for r in rows], default=float))

    if wanted("centralised"):
        _centralised(npz, test, val, plan, new("centralised", "Centralised (pooled train split)"))
    if "local" in plan.variants and wanted("local"):
        _local_only(npz, test, val, plan, new("local", f"Local only, each of {SITES} non-IID sites alone"))
    if wanted("fedavg-noniid"):
        noniid = new("fedavg-noniid", f"FedAvg, 3 sites non-IID ({NON_IID})")
        for seed in plan.seeds:
            keep(_federated(npz, test, val, plan, noniid, work, seed, NON_IID))
    if "iid" in plan.variants and wanted("fedavg-iid"):
        keep(_federated(npz, test, val, plan, new("fedavg-iid", "FedAvg, 3 sites IID"), work,
                        plan.seeds[0], "iid"))
    if "quantity" in plan.variants and wanted("fedavg-quantity"):
        keep(_federated(npz, test, val, plan, new("fedavg-quantity", f"FedAvg, quantity skew ({QUANTITY})"),
                        work, plan.seeds[0], QUANTITY))
    if "fedadam" in plan.variants and wanted("fedadam-noniid"):
        keep(_federated(npz, test, val, plan, new("fedadam-noniid", f"FedAdam, non-IID ({NON_IID})"),
                        work, plan.seeds[0], NON_IID, strategy="fedadam"))
    if "fedavgm" in plan.variants and wanted("fedavgm-noniid"):
        keep(_federated(npz, test, val, plan, new("fedavgm-noniid", f"FedAvgM, non-IID ({NON_IID})"),
                        work, plan.seeds[0], NON_IID, strategy="fedavgm"))
    if "dp" in plan.variants:
        every_seed = "dp-all-seeds" in plan.variants
        for eps in sorted(plan.epsilons, key=lambda e: e != plan.headline_epsilon):
            if not wanted(f"dp-eps{eps:g}"):
                continue
            seeds = plan.seeds if every_seed or eps == plan.headline_epsilon else plan.seeds[:1]
            if only_seeds:
                seeds = tuple(sd for sd in seeds if sd in only_seeds)
            row = new(f"dp-eps{eps:g}", f"{_strategy_label(plan.dp_strategy)} + DP-SGD ε={eps:g}, non-IID")
            for seed in seeds:
                keep(_federated(npz, test, val, plan, row, work, seed, NON_IID, strategy=plan.dp_strategy,
                                epsilon=eps))
    for key, label, kwargs in (ablations(plan) if "ablations" in plan.variants else ()):
        if wanted(key):
            keep(_federated(npz, test, val, plan, new(key, label), work, plan.seeds[0], NON_IID, **kwargs))
    for key, label, changes in (drift_candidates(plan) if "drift" in plan.variants else ()):
        if wanted(key):
            varied = dataclasses.replace(plan, seeds=(DRIFT_SEED,), **changes.get("plan", {}))
            if changes.get("centralised"):
                _centralised(npz, test, val, varied, new(key, label))
            else:
                keep(_federated(npz, test, val, varied, new(key, label), work, DRIFT_SEED, NON_IID,
                                strategy=changes.get("strategy", "fedavg")))
    pretraining = None
    pretrained_keys = ["pretrained-start"] + [f"pretrained-dp-eps{eps:g}" for eps in plan.epsilons]
    if "pretrained" in plan.variants and any(wanted(k) for k in pretrained_keys):
        start = _pretrained_start(npz, work, plan)
        pretraining = {**start.describe(),
                       "dp_recipe": f"`{MODEL}`'s DP-SGD at lr {plan.dp_lr:g} (cosine-decayed) with momentum "
                                    f"{plan.dp_momentum:g}, Poisson batches of {plan.dp_batch}"}
        held = (val[0][start.sites_val], val[1][start.sites_val])  # the val images the sites hold
        if wanted("pretrained-start"):
            row = new("pretrained-start", "Pretrained start alone (no federated training)")
            model = build_model(MODEL, 2, IMAGE.size)
            model.load_state_dict(load_checkpoint(start.model)["state_dict"])
            row.seeds.append(0)
            row.test.append(_test_metrics(model, test, held))
        for eps in sorted(plan.epsilons, reverse=True):
            if not wanted(f"pretrained-dp-eps{eps:g}"):
                continue
            row = new(f"pretrained-dp-eps{eps:g}", f"Pretrained start + {_strategy_label(plan.dp_strategy)} "
                      f"+ DP-SGD ε={eps:g}, non-IID")
            seeds = tuple(sd for sd in plan.seeds if not only_seeds or sd in only_seeds)
            for seed in seeds:
                keep(_federated(npz, test, held, plan, row, work, seed, NON_IID, strategy=plan.dp_strategy,
                                epsilon=eps, start=start))

    sizes = pneumonia.split_sizes(npz)
    partition_sizes = {}
    y = read_medmnist(npz)["train"][1]
    for partition in (NON_IID, QUANTITY, "iid"):
        partition_sizes[partition] = [
            {"images": int(len(p)), "normal": int(np.sum(y[p] == 0))}
            for p in _site_train_parts(npz, partition, plan.seeds[0])
        ]
    drift_sizes = [{"images": int(len(p)), "normal": int(np.sum(y[p] == 0))}
                   for p in _site_train_parts(npz, NON_IID, DRIFT_SEED)]
    return {
        "plan": dict(plan.__dict__),
        "model": plan.model,
        "dp_model": DP_MODEL,
        "pretrained_model": MODEL,
        "data": {"file": pneumonia.NPZ_DISPLAY, "subset": plan.subset, "splits": sizes,
                 "partitions_seed0": partition_sizes, "partitions_drift_seed": drift_sizes},
        "rows": [r.to_dict() for r in rows],
        "runs": runs,
        **({"pretraining": pretraining} if pretraining else {}),
    }


# The pretrained start's data: a fixed half of the official val split, drawn once
# (stratified, its own seed) and the same for every run seed. No site holds those images
# (the partition is unchanged, the sites' val parts lose them), the test split is
# untouched, and the sites' training parts are the train split's: nothing a run trains
# or is scored on overlaps it. The other half stays with the sites as their val data.
PRETRAIN_VAL_SHARE = 0.5
PRETRAIN_DRAW_SEED = 2024


@dataclass(frozen=True)
class PretrainedStart:
    model: Path
    val_indices: np.ndarray   # the val-split images it was trained (and checked) on
    sites_val: np.ndarray     # the rest of the val split: what the sites hold
    train_images: int
    check_images: int
    check_auc: float
    epochs: int
    seconds: float

    def describe(self) -> dict[str, Any]:
        return {"data": f"`{Path(pneumonia.NPZ_DISPLAY).name}`'s official val split, a stratified half "
                        f"({len(self.val_indices)} of {len(self.val_indices) + len(self.sites_val)} images)",
                "train_images": self.train_images, "check_images": self.check_images,
                "check_auc": self.check_auc, "epochs": self.epochs, "seconds": self.seconds,
                "sites_val_images": int(len(self.sites_val))}


def _pretrained_start(npz: Path, work: Path, plan: Plan) -> PretrainedStart:
    """Train the starting model with `fedmed pretrain`'s function on half of the val split
    (80 % to train, 20 % to check and set its threshold)."""
    from fedmed.client.pretrain import pretrain

    splits = read_medmnist(npz)
    vx, vy = splits["val"]
    rng = np.random.default_rng(PRETRAIN_DRAW_SEED)
    chosen = pneumonia._stratified(vy, int(round(len(vy) * PRETRAIN_VAL_SHARE)), rng)
    order = rng.permutation(chosen)
    cut = int(round(len(order) * 0.8))
    fit, check = np.sort(order[:cut]), np.sort(order[cut:])
    source = Path(work) / "pretraining.npz"
    source.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(source, train_images=vx[fit], train_labels=vy[fit].reshape(-1, 1),
                        val_images=vx[check], val_labels=vy[check].reshape(-1, 1),
                        test_images=vx[check][:0], test_labels=vy[check][:0].reshape(-1, 1))
    config = FederationConfig(model=MODEL, image=IMAGE, epochs=plan.pretrain_epochs, batch_size=plan.batch,
                              lr=plan.lr, seed=0)
    started = time.perf_counter()
    result = pretrain(config, Path(work) / "pretrained.pt", npz=source)
    seconds = time.perf_counter() - started
    _log(f"pretrained start: {result.train_images} images, check AUC {result.val_auc:.3f}, {seconds:.0f} s")
    return PretrainedStart(model=result.path, val_indices=np.sort(chosen),
                           sites_val=np.setdiff1d(np.arange(len(vy)), chosen), train_images=result.train_images,
                           check_images=result.val_images, check_auc=float(result.val_auc),
                           epochs=plan.pretrain_epochs, seconds=seconds)


def ablations(plan: Plan) -> list[tuple[str, str, dict[str, Any]]]:
    """One-seed rows that each change one part of the recipe, to show what it is worth."""
    headline = plan.headline_epsilon
    other = "fedavgm" if plan.dp_strategy == "fedavg" else "fedavg"
    return [
        ("fedavg-noniid-no-augment", "FedAvg, non-IID, without augmentation (no DP)", {"augment": False}),
        (f"dp-eps{headline:g}-views4", f"{_strategy_label(plan.dp_strategy)} + DP-SGD ε={headline:g}, "
         "augmentation with 4 views per record",
         {"strategy": plan.dp_strategy, "epsilon": headline, "augment": True, "views": 4}),
        # The other averaging: with server momentum if the recipe has none, and without if it has.
        (f"dp-eps{headline:g}-{other}", f"{_strategy_label(other)} + DP-SGD ε={headline:g}",
         {"strategy": other, "epsilon": headline}),
    ]


# The no-DP row's hard seed: its large site holds 2 930 training images of which 6 are
# normal, and carries three quarters of FedAvg's average.
DRIFT_SEED = 2


def drift_candidates(plan: Plan) -> list[tuple[str, str, dict[str, Any]]]:
    """One-seed rows (seed `DRIFT_SEED`) that try what might close the no-DP federation's gap
    to centralised training there: the `scatternet` model (a linear head on fixed
    features), without augmentation (the transform would run on every augmented batch), at
    two learning rates, and with server momentum; with centralised training of it to
    compare against."""
    scatter = {"model": "scatternet", "augment": False}
    label = f"scatternet, Adam, batch {plan.batch}, no augmentation, seed {DRIFT_SEED}"
    return [
        ("drift-centralised-scatternet", f"Centralised, {label}, lr {plan.lr:g}",
         {"plan": scatter, "centralised": True}),
        ("drift-fedavg-scatternet", f"FedAvg non-IID, {label}, lr {plan.lr:g}", {"plan": scatter}),
        ("drift-fedavg-scatternet-lr1e-4", f"FedAvg non-IID, {label}, lr 0.0001",
         {"plan": {**scatter, "lr": 1e-4}}),
        ("drift-fedavgm-scatternet", f"FedAvgM non-IID, {label}, lr {plan.lr:g}",
         {"plan": scatter, "strategy": "fedavgm"}),
    ]


def _strategy_label(strategy: str) -> str:
    return {"fedavg": "FedAvg", "fedavgm": "FedAvgM", "fedadam": "FedAdam"}[strategy]
