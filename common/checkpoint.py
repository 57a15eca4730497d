"""The saved-model format: weights plus everything needed to use them again.

A checkpoint holds the model's name, its classes and the image settings it was trained
with, so prediction preprocesses exactly as training did and a mismatch is refused.

Optional top-level keys (passed through `extra`):
  threshold        the operating cut-off on P(class 1) of a binary model; absent or None
                   means arg-max (`fedmed.common.operating_point`)
  threshold_rule   where the threshold came from, in words
  strategy_state   the coordinator's strategy state after the round (for --resume)
  pretrained       how `fedmed pretrain` made the model (data file name, epochs, ...)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedmed.common import torch_file
from fedmed.common.federation import FederationConfig
from fedmed.common.settings import trained_on
from fedmed.common.operating_point import check_threshold

FORMAT = "fedmed-model/1"
EXTENSION = ".pt"


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (torch is then imported already)
        return value.detach().cpu().numpy()
    return np.asarray(value)


def save_checkpoint(path: Path, state_dict: Mapping[str, Any], config: FederationConfig,
                    server_round: int, extra: dict[str, Any] | None = None) -> Path:
    """Write atomically: a reader never sees a half-written model.

    `state_dict` holds tensors or numpy arrays; the file is torch's format either way
    (`torch_file`), written without torch so that the coordinator never imports it."""
    payload = {
        "format": FORMAT,
        "round": server_round,
        "model": config.model,
        "classes": list(config.classes),
        "image": config.image.to_dict(),
        # Optional (older models lack it): what predict compares a file with.
        "trained_on": trained_on(config.image),
        "federation": config.to_dict(),
        "state_dict": {k: _as_numpy(v) for k, v in state_dict.items()},
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch_file.write(tmp, payload)
    os.replace(tmp, path)
    return path


def load_checkpoint_arrays(path: Path) -> dict[str, Any]:
    """As `load_checkpoint`, without torch: tensors come back as numpy arrays (the
    coordinator's ServerApp resumes from these)."""
    try:
        payload = torch_file.read(path)
    except Exception as exc:  # noqa: BLE001 — a bad zip or pickle raises many kinds
        raise ValueError(f"{path}: not a fedmed model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fedmed model file (expected format {FORMAT})")
    return payload


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; raise ValueError naming the file when it is not one of ours."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — torch raises many kinds for a bad file
        raise ValueError(f"{path}: not a fedmed model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fedmed model file (expected format {FORMAT})")
    return payload


def saved_threshold(payload: dict[str, Any], path: Path | str | None = None) -> float | None:
    """The checkpoint's operating threshold, or None for arg-max; ValueError naming the
    file for a value that is not a cut-off in [0, 1] on a two-class model."""
    return check_threshold(payload.get("threshold"), len(payload.get("classes") or ()),
                           f"{path}: threshold" if path else "threshold")
