"""Local training and evaluation at a site: arrays in, weights and aggregate numbers out.

Per-image predictions and losses stay inside these functions; what they return is the
model and site-level aggregates only.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmed.client.augmentation import AugmentSettings, augment
from fedmed.client.optimizers import SGD, Adam, LocalOptimizer
from fedmed.common.federation import FederationConfig
from fedmed.common.metrics import classification_metrics

BatchCallback = Callable[[int, int, int], None]  # (epoch, batch, batches per epoch)


def pick_device() -> torch.device:
    """The site's GPU when it has one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def round_seed(seed: int, site: str, server_round: int) -> int:
    """A seed per (run seed, site, round): reproducible, different across sites and rounds."""
    digest = hashlib.sha256(f"{seed}:{site}:{server_round}".encode()).digest()
    return int.from_bytes(digest[:4], "little")




def dp_round_lr(config: FederationConfig, server_round: int) -> float:
    """The DP learning rate of round `server_round` of `config.rounds`: cosine decay from
    `dp_lr` (Loshchilov & Hutter 2017, "SGDR"), by round, so every site lowers it alike.

    The last rounds' smaller steps add less noise to the final model: with DP-SGD the last
    iterate carries the noise of its last steps, scaled by the learning rate.
    """
    progress = (min(max(server_round, 1), config.rounds) - 1) / config.rounds
    return config.dp_lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: FederationConfig, dp: bool = False,
                   server_round: int = 1) -> LocalOptimizer:
    """The local optimiser: the run's `optimizer`/`lr`, or with DP SGD at `dp_round_lr`
    (cosine-decayed `dp_lr`) with momentum `dp_momentum` (none by default: measured best
    for the `scatternet` model, docs/privacy.md).

    DP-SGD's averaged gradient has a fixed norm bound (the clipping norm) plus noise; plain
    SGD turns that into steps proportional to the signal, while Adam's
    per-weight normalisation gives every weight -- even one whose gradient is pure noise -- a
    step of about lr, and a freshly built Adam's first step is lr·sign(g) on every weight.

    fedmed's own SGD and Adam (`fedmed.client.optimizers`: torch's update rules without
    `torch.optim`, whose first use imports the compiler into the site's executor).
    """
    if dp:
        return SGD(model.parameters(), lr=dp_round_lr(config, server_round), momentum=config.dp_momentum)
    if config.optimizer == "sgd":
        return SGD(model.parameters(), lr=config.lr, momentum=0.9)
    return Adam(model.parameters(), lr=config.lr)


def make_loader(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    dataset = TensorDataset(torch.from_numpy(np.asarray(x, dtype=np.float32)),
                            torch.from_numpy(np.asarray(y, dtype=np.int64)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)


@dataclass
class TrainResult:
    num_examples: int
    loss: float          # mean training loss over the last epoch
    steps: int


def train_local(
    model: nn.Module,
    loader: DataLoader,
    optimizer: LocalOptimizer | torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    on_batch: BatchCallback | None = None,
    augmentation: AugmentSettings | None = None,
    seed: int = 0,
) -> TrainResult:
    """Plain local epochs; with `augmentation`, every batch is a fresh random version of
    its images (drawn from `seed`)."""
    model.to(device).train()
    criterion = nn.CrossEntropyLoss()
    steps = 0
    last_epoch_loss = math.nan
    for epoch in range(epochs):
        total, count = 0.0, 0
        batches = len(loader)
        generator = torch.Generator().manual_seed(seed + epoch) if augmentation else None
        for batch, (xb, yb) in enumerate(loader):
            if len(xb) == 0:  # Poisson sampling can draw an empty batch
                continue
            if augmentation is not None:
                xb = augment(xb, augmentation, generator)
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
            total += float(loss.detach()) * len(xb)
            count += len(xb)
            if on_batch is not None:
                on_batch(epoch, batch, batches)
        last_epoch_loss = total / count if count else math.nan
    return TrainResult(num_examples=len(loader.dataset), loss=last_epoch_loss, steps=steps)


# Images scored per forward pass. A batch's activations are the peak of an evaluation:
# with 256, a site's evaluation of 64x64 images through `cnn` peaked 84 MiB above the
# training round before it (28x28: 24 MiB); with 32 it stays below the training peak at
# the usual training batch of 32 (activations kept for the backward pass). Batches of 32
# and 256 give bit-identical probabilities on CPU (measured for every model, one and two
# threads), so the figures a site releases do not change.
PREDICT_BATCH = 32


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, device: torch.device,
                  batch_size: int = PREDICT_BATCH) -> np.ndarray:
    model.to(device).eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.asarray(x[start : start + batch_size], dtype=np.float32)).to(device)
        out.append(torch.softmax(model(xb), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> dict[str, float]:
    """Loss, accuracy, AUC, sensitivity and specificity on a held-out split."""
    if len(x) == 0:
        return {"loss": math.nan, "accuracy": math.nan, "auc": math.nan,
                "sensitivity": math.nan, "specificity": math.nan}
    probs = predict_proba(model, x, device)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))
    return classification_metrics(probs, y, loss)
