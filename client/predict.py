"""Predict with a saved fedmed model, preprocessing exactly as training did.

A checkpoint carries the model's name, its classes and the image settings it was trained
with (`fedmed.common.checkpoint`); every file goes through the same `load_image` the sites
train on, with those settings. The predicted class follows the model's operating
threshold when it carries one (`fedmed.common.operating_point`), else the most probable
class. A file that cannot be used gets a `Prediction` with its reason and the batch goes on; a model file that is not a usable fedmed model is refused
up front with `ModelMismatch`.

A file unlike what the model was trained on still gets scores, with a `warning`: another
modality than the model's declared ones, a colour image for a model of greyscale
modalities, an image smaller than the model's input (upscaled) or stretched by more than
2:1. What the model was trained on is its checkpoint's `trained_on` (the run's declared
image settings; older models: their image settings), never a statistic of any site's
images. A multi-frame file under the model's "all" frame policy is scored frame by frame
and gets the mean of its frames' probabilities.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedmed.client.imaging import UnusableImage, image_kind, load_images, quiet_pydicom
from fedmed.client.sitedata.labels import LABELS_FILE
from fedmed.client.training import predict_proba
from fedmed.common.checkpoint import load_checkpoint, saved_threshold
from fedmed.common.models import build_model
from fedmed.common.operating_point import decide
from fedmed.common.settings import GREYSCALE_MODALITIES, ImageSettings, trained_on

__all__ = ["LoadedModel", "ModelMismatch", "Prediction", "expand_inputs", "load_model",
           "predict_files", "unlike_training", "write_predictions_csv"]

# Files are decoded and scored this many at a time, bounding memory on large folders.
_CHUNK = 256


class ModelMismatch(ValueError):
    """The model file is not a fedmed model, or its weights do not fit what it declares."""


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    name: str
    classes: tuple[str, ...]
    settings: ImageSettings
    trained_on: dict = field(default_factory=dict)
    threshold: float | None = None  # cut-off on P(class 1); None: arg-max


@dataclass
class Prediction:
    """One input file's result: class probabilities, or the reason it has none."""

    path: str
    probabilities: dict[str, float] = field(default_factory=dict)  # class -> probability
    error: str = ""
    warning: str = ""  # how the file differs from the model's training data, if it does
    threshold: float | None = None  # the model's cut-off on P(class 1); None: arg-max

    @property
    def predicted(self) -> str:
        """The class at the model's operating threshold (the most probable class when it
        has none); "" for a file that could not be used."""
        if not self.probabilities:
            return ""
        names = list(self.probabilities)
        row = np.asarray([[self.probabilities[c] for c in names]])
        return names[int(decide(row, self.threshold)[0])]


def load_model(model_path: str | os.PathLike[str]) -> LoadedModel:
    """A checkpoint as a ready model. Raises ModelMismatch naming the file and what is wrong."""
    path = Path(model_path)
    if not path.is_file():
        raise ModelMismatch(f"{path}: no such model file; give a run's model-final.pt")
    try:
        payload = load_checkpoint(path)
    except ValueError as exc:
        raise ModelMismatch(str(exc)) from None
    missing = [k for k in ("model", "classes", "image", "state_dict") if k not in payload]
    if missing:
        raise ModelMismatch(f"{path}: fedmed model file without {', '.join(missing)}; it cannot be used")
    try:
        classes = tuple(str(c) for c in payload["classes"])
        settings = ImageSettings.from_dict(payload["image"])
        model = build_model(str(payload["model"]), len(classes), settings.size)
        threshold = saved_threshold(payload)
    except (TypeError, ValueError) as exc:
        raise ModelMismatch(f"{path}: {exc}") from None
    _check_weights(path, model, payload["state_dict"], len(classes))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    recorded = payload.get("trained_on")
    return LoadedModel(model, str(payload["model"]), classes, settings,
                       recorded if isinstance(recorded, dict) else trained_on(settings), threshold)


def _check_weights(path: Path, model: torch.nn.Module, weights: dict, num_classes: int) -> None:
    # load_state_dict's own error spans many lines; one line says what to do instead.
    expected = model.state_dict()
    if not isinstance(weights, dict):
        raise ModelMismatch(f"{path}: state_dict is not a mapping of weights")
    absent = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if absent or extra:
        raise ModelMismatch(
            f"{path}: weights do not match the declared model ({len(absent)} missing, "
            f"{len(extra)} unexpected, e.g. {(absent or extra)[0]!r}); the file is damaged "
            "or was saved by another program"
        )
    for key, tensor in expected.items():
        shape = tuple(weights[key].shape)
        if shape != tuple(tensor.shape):
            raise ModelMismatch(
                f"{path}: weight {key!r} has shape {shape}, but a model for the file's "
                f"{num_classes} classes needs {tuple(tensor.shape)}; the classes stored "
                "with the model do not match its weights"
            )


def expand_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, and every file below each folder given (sorted), skipping hidden
    files and a site's labels.csv. Paths that do not exist are kept, to be reported."""
    out: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            out.append(path)
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [Path(dirpath) / n for n in filenames
                      if not n.startswith(".") and n != LABELS_FILE]
        out += sorted(found)
    return out


def predict_files(
    model_path: str | os.PathLike[str] | LoadedModel,
    paths: Sequence[str | os.PathLike[str]],
) -> list[Prediction]:
    """One Prediction per input file (folders are expanded, see `expand_inputs`), in order.

    Raises ModelMismatch for an unusable model file; never for an input file.
    """
    loaded = model_path if isinstance(model_path, LoadedModel) else load_model(model_path)
    files = expand_inputs(paths)
    out: list[Prediction] = []
    for start in range(0, len(files), _CHUNK):
        out += _predict_chunk(loaded, files[start : start + _CHUNK])
    return out


def _predict_chunk(loaded: LoadedModel, files: list[Path]) -> list[Prediction]:
    results = [Prediction(str(f), threshold=loaded.threshold) for f in files]
    images, owner = [], []
    for i, f in enumerate(files):
        if not f.exists():
            results[i].error = "file not found"
            continue
        try:
            x, ds = load_images(f, loaded.settings)
        except UnusableImage as e:
            results[i].error = e.reason
            continue
        except OSError:
            results[i].error = "unreadable file"
            continue
        results[i].warning = unlike_training(ds, loaded.trained_on)
        images.extend(x)
        owner.extend([i] * len(x))
    if images:
        # CPU: scoring files needs no GPU, and the numbers then do not depend on the card.
        probs = predict_proba(loaded.model, np.stack(images)[:, None], torch.device("cpu"))
        owner_arr = np.asarray(owner)
        for i in sorted(set(owner)):
            # One file's frames ("all" policy): the mean of their probabilities.
            mean = probs[owner_arr == i].mean(axis=0)
            results[i].probabilities = {c: float(v) for c, v in zip(loaded.classes, mean)}
    return results


def unlike_training(ds, recorded: dict) -> str:
    """How a file differs from what the model says it was trained on; "" when it does not
    (or when the model does not say). Only the file's categorical header values and its
    size are compared; the text names well-known codes, never a free-text header value."""
    with quiet_pydicom():
        modality = str(ds.get("Modality") or "").strip().upper()
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    notes = []
    declared = [str(m) for m in recorded.get("modalities") or []]
    shown = "no" if not modality else (modality if modality.isalnum() and len(modality) <= 16 else "another")
    if declared and modality not in declared:
        notes.append(f"{shown} modality (the model was trained on {', '.join(declared)})")
    if declared and set(declared) <= GREYSCALE_MODALITIES and image_kind(ds) != "grey":
        notes.append(f"colour image (the model was trained on greyscale {', '.join(declared)})")
    size = int(recorded.get("input_size") or 0)
    if size and rows and cols and min(rows, cols) < size:
        notes.append(f"image of {rows}x{cols} pixels upscaled to the model's {size}x{size} input")
    if rows and cols and max(rows, cols) > 2 * min(rows, cols):
        notes.append(f"image of {rows}x{cols} pixels stretched to a square")
    return "; ".join(notes)


def write_predictions_csv(path: str | os.PathLike[str], predictions: Sequence[Prediction],
                          classes: Sequence[str]) -> Path:
    """`path,predicted,prob_<class>...,error,warning`: one row per file; a file that could
    not be used has empty probabilities and its reason in `error`; a file unlike the
    model's training data has its scores and the difference in `warning`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "predicted", *(f"prob_{c}" for c in classes), "error", "warning"])
        for p in predictions:
            probs = [f"{p.probabilities[c]:.6f}" if p.probabilities else "" for c in classes]
            writer.writerow([p.path, p.predicted, *probs, p.error, p.warning])
    return path
