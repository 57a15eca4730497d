"""From a DICOM file to the model's inputs: decode, then the steps in the standard's order.

    frames:    which frames of the file are used (ImageSettings.frames: middle | all | mip)
    greyscale: stored values -> modality LUT (per frame) -> [mip: max over frames]
               -> VOI (configured window, else the file's VOI LUT / window, else min-max)
               -> MONOCHROME1 inversion
    colour:    BT.601 luma -> nominal range                      [mip: max over frames]
    palette:   colour lookup table -> BT.601 luma -> LUT range   [mip: max over frames]
    then:      resize to (size, size) -> (x - mean) / std

A single-frame file gives one image under every policy. The chain depends only on the
file and `ImageSettings`, which travel with every run and every saved model, so training
at each site and prediction later preprocess alike. `PIPELINE_VERSION` names the chain;
caches of preprocessed images are keyed by it.
"""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset

from fedmed.common.settings import ImageSettings

from . import steps
from .decode import check_image_header, decode_frame, frame_count, image_kind, read_dicom
from .version import PIPELINE_VERSION

__all__ = ["PIPELINE_VERSION", "load_image", "load_images", "preprocess", "preprocess_images"]


def preprocess_images(ds: Dataset, settings: ImageSettings) -> np.ndarray:
    """A read dataset as float32 (N, size, size) model inputs: N = 1 except for a
    multi-frame file under the "all" policy (one per frame, in frame order).

    Raises UnusableImage when the dataset's pixels cannot be used.
    """
    check_image_header(ds)
    indices = steps.select_frames(frame_count(ds), settings.frames)
    kind = image_kind(ds)
    if settings.frames == "mip":
        shown = [_projection(ds, indices, kind, settings)]
    elif kind == "grey":
        shown = [_grey_frame(ds, i, settings) for i in indices]
    else:
        shown = [_colour_frame(ds, i, kind) for i in indices]
    resized = steps.resize_square(np.stack(shown), settings.size)
    return steps.normalise(resized, settings.mean, settings.std)


def _grey_frame(ds: Dataset, index: int, settings: ImageSettings) -> np.ndarray:
    header = steps.frame_header(ds, index)
    values = steps.modality_lut(decode_frame(ds, index), header)
    return steps.invert_monochrome1(steps.voi(values, header, settings.window), header)


def _colour_frame(ds: Dataset, index: int, kind: str) -> np.ndarray:
    arr = decode_frame(ds, index)
    if kind == "palette":
        return steps.palette_range(steps.luma(steps.palette_colour(arr, ds)), ds)
    return steps.scale_nominal_range(steps.luma(arr), ds)


def _projection(ds: Dataset, indices: list[int], kind: str, settings: ImageSettings) -> np.ndarray:
    if kind != "grey":
        return steps.max_projection([_colour_frame(ds, i, kind) for i in indices])
    # The projection is of modality values (Hounsfield units for CT), each frame through
    # its own rescale; the window is the middle frame's, as for the "middle" policy.
    values = steps.max_projection([
        steps.modality_lut(decode_frame(ds, i), steps.frame_header(ds, i)) for i in indices
    ])
    header = steps.frame_header(ds, indices[len(indices) // 2])
    return steps.invert_monochrome1(steps.voi(values, header, settings.window), header)


def preprocess(ds: Dataset, settings: ImageSettings) -> np.ndarray:
    """A read dataset as one float32 (size, size) model input.

    For the policies that give one image per file ("middle", "mip", or any policy on a
    single-frame file); a multi-frame file under "all" needs `preprocess_images`.
    Raises UnusableImage when the dataset's pixels cannot be used.
    """
    images = preprocess_images(ds, settings)
    if len(images) != 1:
        raise ValueError("preprocess: this file gives one image per frame (frames='all'); "
                         "use preprocess_images")
    return images[0]


def load_images(path: str | os.PathLike[str], settings: ImageSettings) -> tuple[np.ndarray, Dataset]:
    """Read, decode and preprocess one file: (float32 (N, size, size) inputs, its dataset).

    Raises UnusableImage with a header-free reason for any file that cannot be used.
    """
    ds = read_dicom(path)
    return preprocess_images(ds, settings), ds


def load_image(path: str | os.PathLike[str], settings: ImageSettings) -> tuple[np.ndarray, Dataset]:
    """Read, decode and preprocess one file: (float32 (size, size) input, its dataset);
    see `preprocess` for the one-image rule.

    Raises UnusableImage with a header-free reason for any file that cannot be used.
    """
    ds = read_dicom(path)
    return preprocess(ds, settings), ds
