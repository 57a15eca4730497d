"""MedMNIST-style arrays: `.npz` files of small uint8 greyscale images with labels.

Such images are already windowed for display (0 = black, 255 = white), so they skip the
DICOM rules and go straight to [0, 1], resize and normalisation: the same tail as a DICOM
image, so models trained on either see the same input scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedmed.client.imaging import steps
from fedmed.common.settings import ImageSettings

__all__ = ["load_npz_arrays", "read_medmnist"]

SPLITS = ("train", "val", "test")
# Resizing runs in slices to bound the memory of the float copies.
_CHUNK = 2048


def load_npz_arrays(images: np.ndarray, labels: np.ndarray, settings: ImageSettings) -> np.ndarray:
    """uint8 (N, H, W) images as float32 (N, 1, size, size) model inputs.

    labels: the images' labels, checked to be one per image.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images: expected a uint8 array shaped (N, H, W), got {images.dtype} {images.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(f"labels: expected {len(images)} labels, one per image, got {len(labels)}")
    out = np.empty((len(images), 1, settings.size, settings.size), dtype=np.float32)
    for start in range(0, len(images), _CHUNK):
        part = images[start : start + _CHUNK].astype(np.float32) / 255.0
        resized = steps.resize_square(part, settings.size)
        out[start : start + _CHUNK, 0] = steps.normalise(resized, settings.mean, settings.std)
    return out


def read_medmnist(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train" | "val" | "test": (uint8 images (N, H, W), int64 labels (N,))}.

    Reads the `<split>_images` / `<split>_labels` fields of a MedMNIST `.npz`. Labels may
    be shaped (N, 1) or (N,); any number of samples is accepted. Raises ValueError naming
    the file, the field and what was expected for a missing field or a bad shape.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; expected a MedMNIST-style .npz") from None
    except (ValueError, OSError):
        raise ValueError(f"{path}: not a readable .npz file") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected a .npz archive of arrays, found a single array")
    out = {}
    with data:
        for split in SPLITS:
            images = _field(data, path, f"{split}_images")
            labels = _field(data, path, f"{split}_labels")
            if images.ndim != 3 or images.dtype != np.uint8:
                raise ValueError(
                    f"{path}: field '{split}_images': expected uint8 greyscale images shaped "
                    f"(N, H, W), got {images.dtype} {images.shape}"
                )
            n = images.shape[0]
            if not (labels.shape == (n,) or labels.shape == (n, 1)):
                raise ValueError(
                    f"{path}: field '{split}_labels': expected shape ({n},) or ({n}, 1) to "
                    f"match '{split}_images', got {labels.shape}"
                )
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"{path}: field '{split}_labels': expected integer labels, got {labels.dtype}"
                )
            out[split] = (images, labels.reshape(n).astype(np.int64))
    return out


def _field(data: np.lib.npyio.NpzFile, path: Path, name: str) -> np.ndarray:
    if name not in data.files:
        raise ValueError(
            f"{path}: missing field '{name}': expected the MedMNIST fields "
            + ", ".join(f"'{s}_images', '{s}_labels'" for s in SPLITS)
        )
    return data[name]
