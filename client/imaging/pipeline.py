"""From a DICOM file to the model's input: decode, then the steps in the standard's order.

    greyscale: stored values -> modality LUT -> VOI (configured window, else the file's
               VOI LUT / window, else min-max) -> MONOCHROME1 inversion
    colour:    BT.601 luma -> nominal range
    then:      resize to (size, size) -> (x - mean) / std

The chain depends only on the file and `ImageSettings`, which travel with every run and
every saved model, so training at each site and prediction later preprocess alike.
`PIPELINE_VERSION` names the chain; caches of preprocessed images are keyed by it.
"""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset

from fedmed.common.settings import ImageSettings

from . import steps
from .decode import is_colour, pixel_array, read_dicom

__all__ = ["PIPELINE_VERSION", "load_image", "preprocess"]

# Change whenever a step's output changes, so that cached arrays are rebuilt.
PIPELINE_VERSION = "1"


def preprocess(ds: Dataset, settings: ImageSettings) -> np.ndarray:
    """A read dataset as a float32 (size, size) model input.

    Raises UnusableImage when the dataset's pixels cannot be used.
    """
    pixels = pixel_array(ds)
    if is_colour(ds):
        shown = steps.scale_nominal_range(pixels, ds)
    else:
        values = steps.modality_lut(pixels, ds)
        shown = steps.voi(values, ds, settings.window)
        shown = steps.invert_monochrome1(shown, ds)
    resized = steps.resize_square(shown, settings.size)
    return steps.normalise(resized, settings.mean, settings.std)


def load_image(path: str | os.PathLike[str], settings: ImageSettings) -> tuple[np.ndarray, Dataset]:
    """Read, decode and preprocess one file: (float32 (size, size) input, its dataset).

    Raises UnusableImage with a header-free reason for any file that cannot be used.
    """
    ds = read_dicom(path)
    return preprocess(ds, settings), ds
