"""`fedmed evaluate`: a hospital checks a saved model on its own labelled test set.

Everything runs on this machine and nothing is sent. A DICOM folder goes through exactly
what `fedmed client` and `fedmed data check` use (`load_dicom_site`: the same scan, the
same labels.csv or class folders, the same decoding and preprocessing with the model's
image settings); every usable labelled image is evaluated (no split). A MedMNIST-style
`.npz` is read with `read_medmnist` and preprocessed as a simulated site's arrays are.

Decisions are taken at the model's operating threshold (`fedmed.common.operating_point`;
arg-max when it has none). The ROC AUC comes with a 95 % confidence interval
(`fedmed.common.auc_interval`: DeLong for two classes, a stratified bootstrap for more).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmed.client.predict import LoadedModel, load_model
from fedmed.client.training import predict_proba
from fedmed.common.auc_interval import AucInterval, auc_interval
from fedmed.common.operating_point import ARGMAX_RULE, balanced_threshold, check_threshold, decide

__all__ = ["Evaluation", "evaluate_arrays", "evaluate_model", "load_test_set"]

Progress = Callable[[int, int], None]


@dataclass
class Evaluation:
    """What `fedmed evaluate` prints and writes (`to_dict` is the --json file)."""

    model: str
    data: str
    classes: tuple[str, ...]
    images_per_class: dict[str, int]
    loss: float
    accuracy: float
    balanced_accuracy: float
    auc: AucInterval
    threshold: float | None        # None: arg-max
    threshold_source: str          # "model", "--threshold" or ARGMAX_RULE
    sensitivity: float             # two classes: of class 1; more: macro one-vs-rest
    specificity: float
    confusion: list[list[int]]     # [true class][predicted class]
    # Two classes: the cut-off that would balance sensitivity and specificity on this data,
    # and the rates there. Information for the site, not a change to the model.
    balanced: dict[str, float] | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files (DICOM)

    @property
    def num_images(self) -> int:
        return sum(self.images_per_class.values())

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "model": self.model, "data": self.data, "classes": list(self.classes),
            "num_images": self.num_images, "images_per_class": dict(self.images_per_class),
            "skipped": dict(self.skipped),
            "loss": clean(self.loss), "accuracy": clean(self.accuracy),
            "balanced_accuracy": clean(self.balanced_accuracy),
            "auc": {k: clean(v) for k, v in self.auc.to_dict().items()},
            "threshold": self.threshold, "threshold_source": self.threshold_source,
            "sensitivity": clean(self.sensitivity), "specificity": clean(self.specificity),
            "confusion": self.confusion,
            "balanced_threshold": ({k: clean(v) for k, v in self.balanced.items()}
                                   if self.balanced else None),
        }


def _rates(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, float, float, float]:
    """Confusion matrix, balanced accuracy, sensitivity, specificity."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = confusion.sum(axis=1)
    present = per_class > 0
    recall = np.divide(np.diag(confusion), per_class, out=np.zeros(num_classes), where=present)
    balanced = float(recall[present].mean()) if present.any() else math.nan
    # Specificity of class c: the images of other classes not called c.
    negatives = len(labels) - per_class
    true_neg = negatives - (confusion.sum(axis=0) - np.diag(confusion))
    spec = np.divide(true_neg, negatives, out=np.full(num_classes, np.nan), where=negatives > 0)
    sens = np.where(present, recall, np.nan)
    if num_classes == 2:
        return confusion, balanced, float(sens[1]), float(spec[1])
    both = present & (negatives > 0)
    return (confusion, balanced, float(np.mean(sens[both])) if both.any() else math.nan,
            float(np.mean(spec[both])) if both.any() else math.nan)


def evaluate_arrays(loaded: LoadedModel, x: np.ndarray, y: np.ndarray, *, model_name: str = "",
                    data_name: str = "", threshold: float | None = None,
                    skipped: dict[str, int] | None = None) -> Evaluation:
    """Evaluate preprocessed images `x` (N, 1, S, S) with labels `y` (class indices).

    threshold: a cut-off on P(class 1) to use instead of the model's own.
    """
    classes = loaded.classes
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError(f"{data_name}: no labelled image to evaluate")
    if y.min() < 0 or y.max() >= len(classes):
        raise ValueError(f"{data_name}: labels must be class indices 0..{len(classes) - 1} for the "
                         f"model's classes {', '.join(classes)}; found {int(y.max())}")
    source = "model" if loaded.threshold is not None else ARGMAX_RULE
    if threshold is not None:
        threshold = check_threshold(threshold, len(classes), "--threshold")
        source = "--threshold"
    else:
        threshold = loaded.threshold
    # CPU: the numbers then do not depend on the card.
    probs = predict_proba(loaded.model, x, torch.device("cpu"))
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))
    pred = decide(probs, threshold)
    confusion, balanced_acc, sens, spec = _rates(pred, y, len(classes))
    balanced = None
    if len(classes) == 2 and (cut := balanced_threshold(probs[:, 1], y == 1)) is not None:
        _, b_acc, b_sens, b_spec = _rates(decide(probs, cut), y, 2)
        balanced = {"threshold": cut, "sensitivity": b_sens, "specificity": b_spec, "balanced_accuracy": b_acc}
    return Evaluation(
        model=model_name, data=data_name, classes=classes,
        images_per_class={c: int(np.sum(y == i)) for i, c in enumerate(classes)},
        loss=loss, accuracy=float(np.mean(pred == y)), balanced_accuracy=balanced_acc,
        auc=auc_interval(probs, y), threshold=threshold, threshold_source=source,
        sensitivity=sens, specificity=spec, confusion=confusion.tolist(), balanced=balanced,
        skipped=dict(skipped or {}),
    )


def load_test_set(loaded: LoadedModel, *, data_dir: str | os.PathLike[str] | None = None,
                  npz: str | os.PathLike[str] | None = None, split: str = "test",
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, int], str]:
    """(images, labels, skipped files by reason, a description) preprocessed for `loaded`."""
    if (data_dir is None) == (npz is None):
        raise ValueError("give exactly one of --data DIR or --npz FILE")
    if npz is not None:
        from fedmed.client.sitedata import load_npz_arrays, read_medmnist
        from fedmed.client.sitedata.medmnist import SPLITS

        if split not in SPLITS:
            raise ValueError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
        images, labels = read_medmnist(npz)[split]
        labels = labels.reshape(-1).astype(np.int64)
        x = load_npz_arrays(images, labels, loaded.settings)
        if progress is not None:
            progress(len(labels), len(labels))
        return x, labels, {}, f"{Path(npz).name} ({split} split)"
    from fedmed.client.sitedata import load_dicom_site

    # The decoded-image cache load_dicom_site keeps goes to a private folder that is
    # removed afterwards: evaluation leaves no copy of the pixels behind.
    with tempfile.TemporaryDirectory(prefix="fedmed-evaluate-") as state:
        data = load_dicom_site(data_dir, state, loaded.settings, loaded.classes,
                               val_fraction=0.0, seed=0, progress=progress)
    return data.train_x, data.train_y, dict(data.skipped.counts), str(data_dir)


def evaluate_model(model_path: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None,
                   npz: str | os.PathLike[str] | None = None, split: str = "test",
                   threshold: float | None = None, progress: Progress | None = None) -> Evaluation:
    """Evaluate a saved model on a labelled DICOM folder or an `.npz` split.

    Raises ValueError (`ModelMismatch` for the model file) with one line naming the file
    or option and what was expected.
    """
    loaded = load_model(model_path)
    x, y, skipped, name = load_test_set(loaded, data_dir=data_dir, npz=npz, split=split, progress=progress)
    return evaluate_arrays(loaded, x, y, model_name=str(model_path), data_name=name,
                           threshold=threshold, skipped=skipped)
