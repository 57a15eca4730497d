"""`fedmed pretrain`: a starting model trained centrally on data the coordinator may use.

Transfer learning for small hospital data sets: train once on public (or otherwise
shareable) images, then start the federation from the result (`--init-from`). This runs
the site's image pipeline on this machine's data, so it lives on the image side of fedmed:
the coordinator's code (`fedmed.server`) only ever loads the saved model file.

A DICOM folder is read exactly as a site reads its own (`load_dicom_site`, split by
patient with the config's validation fraction and seed), and a folder of such folders (one
per scanner or source, each with its labels.csv) as their union; a MedMNIST-style `.npz` trains
on its `train` split and validates on its `val` split. The held-out part picks the model's
operating threshold (fedmed's threshold rule, `fedmed.common.operating_point`) and reports its
AUC; both are stored in the model file. Make sure the pretraining data does not overlap
any data the federated model will later be evaluated on.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmed.client.training import make_loader, make_optimizer, pick_device, predict_proba, train_local
from fedmed.common.auc_interval import auc_interval
from fedmed.common.checkpoint import save_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model
from fedmed.common.operating_point import balanced_threshold
from fedmed.common.starting_model import load_starting_model

__all__ = ["PretrainResult", "pretrain"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PretrainResult:
    path: Path
    train_images: int
    val_images: int
    train_loss: float
    val_auc: float
    threshold: float | None


def _load(config: FederationConfig, data_dir, npz, progress: Progress | None):
    """(train x, train y, val x, val y, a description of the data)."""
    if (data_dir is None) == (npz is None):
        raise ValueError("give exactly one of --data DIR or --npz FILE")
    if npz is not None:
        from fedmed.client.sitedata import load_npz_arrays, read_medmnist

        splits = read_medmnist(npz)
        (tx, ty), (vx, vy) = splits["train"], splits["val"]
        ty, vy = ty.reshape(-1).astype(np.int64), vy.reshape(-1).astype(np.int64)
        for name, labels in (("train", ty), ("val", vy)):
            if len(labels) and labels.max() >= len(config.classes):
                raise ValueError(f"{npz}: {name} labels go up to {int(labels.max())}; expected class "
                                 f"indices for {len(config.classes)} classes (--classes)")
        return (load_npz_arrays(tx, ty, config.image), ty, load_npz_arrays(vx, vy, config.image), vy,
                Path(npz).name)
    from fedmed.client.sitedata import load_dicom_site

    folders = _dicom_folders(Path(data_dir))
    parts = []
    # The decoded-image cache goes to a private folder removed afterwards.
    with tempfile.TemporaryDirectory(prefix="fedmed-pretrain-") as state:
        for i, folder in enumerate(folders):
            parts.append(load_dicom_site(folder, Path(state) / str(i), config.image, config.classes,
                                         val_fraction=config.val_fraction, seed=config.seed, progress=progress))
    return (np.concatenate([d.train_x for d in parts]), np.concatenate([d.train_y for d in parts]),
            np.concatenate([d.val_x for d in parts]), np.concatenate([d.val_y for d in parts]),
            Path(data_dir).name)


def _dicom_folders(root: Path) -> list[Path]:
    """The labelled folders under `root`: `root` itself, or, when it has no labels of its
    own, each sub-folder that has a labels.csv (a folder of sites, as `fedmed data synth`
    writes them: public data from several scanners)."""
    from fedmed.client.sitedata.scan import LABELS_FILE

    if root.is_dir() and not (root / LABELS_FILE).is_file():
        sites = sorted(p for p in root.iterdir() if p.is_dir() and (p / LABELS_FILE).is_file())
        if sites:
            return sites
    return [root]


def pretrain(config: FederationConfig, out: str | os.PathLike[str], *,
             data_dir: str | os.PathLike[str] | None = None, npz: str | os.PathLike[str] | None = None,
             init_from: str | os.PathLike[str] | None = None,
             decode_progress: Progress | None = None, train_progress: Progress | None = None) -> PretrainResult:
    """Train `config.model` for `config.epochs` epochs on all of the data's training part and
    save it to `out` as a fedmed model (round 0) that `--init-from` accepts.

    init_from: start from this model instead of random weights (as `--init-from` does).
    train_progress(done, total) is called after every batch.
    """
    train_x, train_y, val_x, val_y, name = _load(config, data_dir, npz, decode_progress)
    if len(train_y) == 0:
        raise ValueError(f"{name}: no training images")
    torch.manual_seed(config.seed)
    model = build_model(config.model, len(config.classes), config.image.size)
    if init_from is not None:
        model.load_state_dict(load_starting_model(init_from, config).state_dict)
    loader = make_loader(train_x, train_y, config.batch_size, config.seed)
    total = config.epochs * len(loader)

    def on_batch(epoch: int, batch: int, batches: int) -> None:
        if train_progress is not None:
            train_progress(epoch * batches + batch + 1, total)

    result = train_local(model, loader, make_optimizer(model, config), config.epochs, pick_device(), on_batch)
    model = model.cpu()
    val_auc, threshold = math.nan, None
    if len(val_y):
        probs = predict_proba(model, val_x, torch.device("cpu"))
        val_auc = auc_interval(probs, val_y).auc
        if len(config.classes) == 2:
            threshold = balanced_threshold(probs[:, 1], val_y == 1)
    extra = {
        "threshold_rule": ("balanced accuracy on the pretraining data's held-out part"
                           if threshold is not None else "argmax"),
        "pretrained": {"data": name, "epochs": config.epochs, "train_images": int(len(train_y)),
                       "val_images": int(len(val_y)), "val_auc": None if math.isnan(val_auc) else val_auc},
    }
    if threshold is not None:
        extra["threshold"] = threshold
    path = save_checkpoint(Path(out), model.state_dict(), config, server_round=0, extra=extra)
    return PretrainResult(path, int(len(train_y)), int(len(val_y)), result.loss, val_auc, threshold)
