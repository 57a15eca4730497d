"""Section 1b: the no-DP gap at the hard seed, remedy by remedy, in a plain loop.

At the no-DP federation's hardest partition (`utility.DRIFT_SEED`: one site holds about
3,000 pneumonia images and a handful of normal ones, the other two most of the normal
images) FedAvg ends well below centralised training of the same model on the same images.
This section replays that federation in a plain in-process loop — no Flower, no DP, the
utility section's no-DP recipe otherwise: the same model, partition, augmentation, Adam
at 1e-3 on batches of 64, R rounds of one local epoch, weights averaged by example count —
and changes one thing at a time, to tell what the gap comes from and whether a published
remedy for client drift closes it:

- ``centralised``: one site holding every training image (the loop is then centralised
  training, with a fresh optimiser each epoch as a federation's sites have);
- ``iid``: the same images split at random over three sites;
- ``uniform``: the sites' models averaged with equal weights;
- ``fednova``: each site's update divided by its number of local steps, the average then
  scaled by the mean step count (Wang et al. 2020, "Tackling the objective inconsistency
  problem in heterogeneous federated optimization");
- ``class-weighted``: each site weights its loss by the inverse of its local class counts;
- ``logit-adjusted``: each site adds the log of its local class prior to the logits in its
  loss (Menon et al. 2021, "Long-tail learning via logit adjustment"; applied per site as in
  FedLC, Zhang et al. 2022);
- ``fedprox``: a proximal term (μ/2)·‖w − w_global‖², μ = 0.1 (Li et al. 2020, "Federated
  optimization in heterogeneous networks");
- ``scaffold``: control variates (Karimireddy et al. 2020, "SCAFFOLD"): each step's gradient
  is corrected by c − c_i, c_i being the site's mean gradient over its previous local epoch
  and c their example-weighted mean; local SGD with momentum 0.9 at lr 0.05, as the method
  is stated for SGD;
- ``server-lr``: local Adam at 3e-4 and a server step of 3 × the averaged update (a server
  learning rate, Reddi et al. 2021, "Adaptive federated optimization").

Only the federation's data split and the averaging are mimicked here; fedmed's own
federation is measured in section 1.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fedmed.client.augmentation import augment, settings_for
from fedmed.client.training import make_loader, make_optimizer
from fedmed.common.federation import FederationConfig
from fedmed.common.metrics import binary_auc
from fedmed.common.models import build_model

from benchmarks import pneumonia
from benchmarks.utility import DRIFT_SEED, FULL, IMAGE, NON_IID, _site_train_parts

VARIANTS = ("fedavg", "centralised", "iid", "uniform", "fednova", "class-weighted", "logit-adjusted",
            "fedprox", "scaffold", "server-lr")
SMOKE_VARIANTS = ("fedavg", "centralised", "scaffold")
FEDPROX_MU = 0.1
SCAFFOLD_LR = 0.05
SERVER_LR, SERVER_LR_LOCAL = 3.0, 3e-4


@dataclass(frozen=True)
class Variant:
    """What a variant changes in the loop."""

    partition: str = "noniid"        # noniid, iid or pooled (one site holding everything)
    weights: str = "examples"        # examples, uniform or fednova
    loss: str = "plain"              # plain, class-weighted or logit-adjusted
    prox_mu: float = 0.0
    scaffold: bool = False
    optimizer: str = "adam"
    lr: float = FULL.lr
    server_lr: float = 1.0


SETTINGS: dict[str, Variant] = {
    "fedavg": Variant(),
    "centralised": Variant(partition="pooled"),
    "iid": Variant(partition="iid"),
    "uniform": Variant(weights="uniform"),
    "fednova": Variant(weights="fednova"),
    "class-weighted": Variant(loss="class-weighted"),
    "logit-adjusted": Variant(loss="logit-adjusted"),
    "fedprox": Variant(prox_mu=FEDPROX_MU),
    "scaffold": Variant(scaffold=True, optimizer="sgd", lr=SCAFFOLD_LR),
    "server-lr": Variant(lr=SERVER_LR_LOCAL, server_lr=SERVER_LR),
}


def _criterion(variant: Variant, labels: np.ndarray) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    if variant.loss == "class-weighted":
        weight = torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=weight)
    if variant.loss == "logit-adjusted":
        log_prior = torch.tensor(np.log((counts + 1) / (counts + 1).sum()), dtype=torch.float32)
        plain = nn.CrossEntropyLoss()
        return lambda logits, y: plain(logits + log_prior, y)
    return nn.CrossEntropyLoss()


def _local_epoch(model: nn.Module, x: np.ndarray, y: np.ndarray, config: FederationConfig,
                 variant: Variant, seed: int, correction: dict[str, torch.Tensor] | None
                 ) -> tuple[int, dict[str, torch.Tensor]]:
    """One local epoch; returns its number of steps and, for SCAFFOLD, its mean raw
    gradient (the site's c_i; empty otherwise)."""
    optimizer = make_optimizer(model, config)
    criterion = _criterion(variant, y)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()} if variant.prox_mu else {}
    mean_grad = {n: torch.zeros_like(p) for n, p in model.named_parameters()} if variant.scaffold else {}
    generator = torch.Generator().manual_seed(seed)
    augmentation = settings_for(config)
    steps = 0
    model.train()
    for xb, yb in make_loader(x, y, config.batch_size, seed):
        if augmentation is not None:
            xb = augment(xb, augmentation, generator)
        optimizer.zero_grad(set_to_none=True)
        criterion(model(xb), yb).backward()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if variant.scaffold:
                    mean_grad[name] += p.grad
                if correction is not None:
                    p.grad += correction[name]
                if variant.prox_mu:
                    p.grad += variant.prox_mu * (p - anchor[name])
        optimizer.step()
        steps += 1
    return steps, {n: g / max(steps, 1) for n, g in mean_grad.items()}


def _parts(npz: Path, variant: Variant, cap: int | None) -> list[np.ndarray]:
    parts = _site_train_parts(npz, "iid" if variant.partition == "iid" else NON_IID, DRIFT_SEED)
    if cap is not None:  # the smoke size: a few images per site
        parts = [p[:cap] for p in parts]
    return [np.concatenate(parts)] if variant.partition == "pooled" else parts


def replay(npz: Path, name: str, rounds: int, cap: int | None = None) -> dict[str, Any]:
    """The federation at `DRIFT_SEED` with variant `name`; test AUC after every round."""
    variant = SETTINGS[name]
    x, y = pneumonia.model_inputs(npz, "train", IMAGE)
    xt, yt = pneumonia.model_inputs(npz, "test", IMAGE)
    parts = _parts(npz, variant, cap)
    config = FederationConfig(batch_size=FULL.batch, lr=variant.lr, model=FULL.model, image=IMAGE,
                              seed=DRIFT_SEED, augment=FULL.augment, optimizer=variant.optimizer)
    torch.manual_seed(DRIFT_SEED)
    model = build_model(FULL.model, len(config.classes), IMAGE.size)
    sizes = np.array([len(p) for p in parts], dtype=np.float64)
    variates: dict[int, dict[str, torch.Tensor]] = {}
    global_variate = None
    curve = []
    started = time.perf_counter()
    for rnd in range(1, rounds + 1):
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        updates, steps, fresh = [], [], {}
        for i, idx in enumerate(parts):
            local = copy.deepcopy(model)
            correction = None
            if variant.scaffold and global_variate is not None and i in variates:
                correction = {k: global_variate[k] - variates[i][k] for k in global_variate}
            n_steps, fresh[i] = _local_epoch(local, x[idx], y[idx], config, variant,
                                             DRIFT_SEED * 100_000 + rnd * 10 + i, correction)
            updates.append({k: v.detach() - start[k] for k, v in local.state_dict().items()})
            steps.append(n_steps)
        share = sizes / sizes.sum()
        if variant.weights == "uniform":
            weights = np.full(len(parts), 1 / len(parts))
        elif variant.weights == "fednova":
            weights = share / np.array(steps) * float(share @ np.array(steps))
        else:
            weights = share
        model.load_state_dict({k: (start[k].float() + variant.server_lr * sum(
            float(w) * u[k].float() for w, u in zip(weights, updates))).to(start[k].dtype) for k in start})
        if variant.scaffold:
            variates.update(fresh)
            global_variate = {k: sum(float(s) * variates[i][k] for i, s in enumerate(share)) for k in fresh[0]}
        model.eval()
        with torch.no_grad():
            scores = torch.softmax(model(torch.from_numpy(xt)), dim=1)[:, 1].numpy()
        curve.append(float(binary_auc(scores, yt)))
    return {"key": name, "auc": curve[-1], "curve": curve, "rounds": rounds,
            "sites": [{"images": int(len(p)), "normal": int(np.sum(y[p] == 0))} for p in parts],
            "seconds": time.perf_counter() - started}


def run(smoke: bool) -> dict[str, Any]:
    npz = pneumonia.locate()
    if npz is None:
        return pneumonia.skipped("drift")
    torch.set_num_threads(1)
    rounds, variants, cap = (2, SMOKE_VARIANTS, 150) if smoke else (FULL.rounds, VARIANTS, None)
    rows = []
    for name in variants:
        rows.append(replay(npz, name, rounds, cap))
        print(f"[drift] {name}: test AUC {rows[-1]['auc']:.3f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    return {"seed": DRIFT_SEED, "model": FULL.model, "rounds": rounds, "rows": rows,
            "settings": {"fedprox_mu": FEDPROX_MU, "scaffold_lr": SCAFFOLD_LR, "server_lr": SERVER_LR,
                         "server_lr_local": SERVER_LR_LOCAL, "lr": FULL.lr, "batch": FULL.batch}}
