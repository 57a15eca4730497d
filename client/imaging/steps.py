"""The pixel rules, one pure function each: an array (and the dataset it came from) in,
an array out.

The order of the greyscale chain is fixed by PS3.3 C.11 and PS3.4 N.2: stored values ->
modality LUT -> VOI LUT -> presentation (MONOCHROME1 inversion); resizing and the model's
normalisation come after, on the displayed [0, 1] image, so that every site's images look
alike whatever scanner or export wrote them. Multi-frame files add three rules: which
frames are used (`select_frames`), each frame's own rescale and window from an enhanced
object's functional groups (`frame_header`), and the maximum-intensity projection
(`max_projection`). Colour has two: the palette lookup (`palette_colour`) and luma.
`fedmed.client.imaging.pipeline` runs them.
"""

from __future__ import annotations

import math

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi

from .unusable import UnusableImage

__all__ = [
    "frame_header",
    "invert_monochrome1",
    "luma",
    "max_projection",
    "min_max",
    "modality_lut",
    "normalise",
    "palette_colour",
    "palette_range",
    "resize_square",
    "scale_nominal_range",
    "select_frames",
    "voi",
    "voi_lut_sequence",
    "window",
    "window_from_file",
]


def luma(rgb: np.ndarray) -> np.ndarray:
    """Grey level of an RGB image (..., 3): the ITU-R BT.601 luma Y' = .299 R + .587 G +
    .114 B, the weighting the YBR_FULL photometric interpretation itself uses
    (PS3.3 C.7.6.3.1.2), so a YBR image's grey level is its own Y component."""
    weights = np.array([0.299, 0.587, 0.114])
    return np.asarray(rgb, dtype=np.float64) @ weights


def select_frames(count: int, policy: str) -> list[int]:
    """The frames of a `count`-frame image the policy uses (see `ImageSettings.frames`):
    "middle" the frame at count // 2 (the centre of a volume or loop, the frame most
    likely to show what the file was labelled for), "all" and "mip" every frame."""
    if count < 1:
        raise ValueError(f"frame count: expected at least 1, got {count}")
    if policy == "middle":
        return [count // 2]
    if policy in ("all", "mip"):
        return list(range(count))
    raise ValueError(f"frame policy: expected middle, all or mip, got {policy!r}")


# The Image Pixel, Modality LUT and VOI LUT attributes the greyscale steps read.
_PIXEL_KEYWORDS = ("PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
                   "PixelRepresentation", "SamplesPerPixel", "Rows", "Columns")
_LUT_KEYWORDS = ("ModalityLUTSequence", "RescaleSlope", "RescaleIntercept", "RescaleType",
                 "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction")
# Functional group macros (PS3.3 C.7.6.16.2) that carry the same attributes per frame.
_FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def frame_header(ds: Dataset, index: int) -> Dataset:
    """The attributes the greyscale steps read, as they hold for frame `index`.

    An enhanced multi-frame object (enhanced CT/MR/XA, PS3.3 C.7.6.16) keeps its rescale
    and window in functional groups, not at the top level: the Shared Functional Groups
    apply to every frame, and a frame's own Per-Frame Functional Groups item overrides
    them. A classic object's top-level values are returned unchanged. Returns a small new
    dataset (never the pixel data), so the steps stay pure.
    """
    out = Dataset()
    for keyword in _PIXEL_KEYWORDS + _LUT_KEYWORDS:
        if keyword in ds:
            setattr(out, keyword, ds.data_element(keyword).value)
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and 0 <= index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for macro in _FRAME_MACROS:
            items = group.get(macro)
            if not items:
                continue
            for keyword in _LUT_KEYWORDS:
                if keyword in items[0]:
                    setattr(out, keyword, items[0].data_element(keyword).value)
    return out


def max_projection(frames: list[np.ndarray]) -> np.ndarray:
    """Maximum-intensity projection: the pixel-wise maximum over frames of one size,
    taken on modality values (before windowing), as a radiologist's MIP of a volume or
    a tomosynthesis stack is."""
    if not frames:
        raise ValueError("max projection: expected at least one frame")
    out = np.asarray(frames[0], dtype=np.float64).copy()
    for frame in frames[1:]:
        np.maximum(out, frame, out=out)
    return out


def palette_colour(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """PALETTE COLOR stored indices -> RGB through the file's Palette Color Lookup Table
    (PS3.3 C.7.6.3.1.5, C.7.9), by pydicom's `apply_color_lut`; entry values keep the
    LUT's own bit depth (see `palette_range`)."""
    try:
        return np.asarray(apply_color_lut(arr, ds), dtype=np.float64)
    except Exception:
        raise UnusableImage("invalid palette colour lookup table") from None


def palette_range(grey: np.ndarray, ds: Dataset) -> np.ndarray:
    """Luma of palette colours onto [0, 1] by the LUT entries' nominal range
    2**bits - 1, bits being the third value of the Red LUT Descriptor (8 or 16)."""
    try:
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception:
        raise UnusableImage("invalid palette colour lookup table") from None
    if bits not in (8, 16):
        raise UnusableImage("invalid palette colour lookup table")
    return np.clip(np.asarray(grey, dtype=np.float64) / float(2**bits - 1), 0.0, 1.0)


def modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (Hounsfield units for CT), PS3.3 C.11.1.

    A Modality LUT Sequence, when present, takes precedence; otherwise
    value = stored * Rescale Slope + Rescale Intercept (C.11.1.1.2), an absent slope
    being 1 and an absent intercept 0, so modalities without the module pass unchanged.
    """
    try:
        if ds.get("ModalityLUTSequence"):
            return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        slope = _first(ds.get("RescaleSlope"), 1.0)
        intercept = _first(ds.get("RescaleIntercept"), 0.0)
    except Exception:
        raise UnusableImage("invalid modality LUT") from None
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        raise UnusableImage("invalid modality LUT")
    return np.asarray(arr, dtype=np.float64) * slope + intercept


def window(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A window (center, width) onto [0, 1], by the VOI LUT Function of PS3.3 C.11.2.1.

    LINEAR (C.11.2.1.2.1, the default): the standard's half-pixel-offset ramp, which
    needs width >= 1. LINEAR_EXACT (C.11.2.1.3.2): a ramp from center - width/2 to
    center + width/2. SIGMOID (C.11.2.1.3.1): 1 / (1 + exp(-4 (x - center) / width)).
    """
    x = np.asarray(arr, dtype=np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width: expected > 0 for SIGMOID, got {width}")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width: expected > 0 for LINEAR_EXACT, got {width}")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise ValueError(f"window width: expected >= 1 for LINEAR, got {width}")
    if width == 1:
        # The ramp collapses to a threshold at center - 0.5.
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def window_from_file(arr: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The file's own Window Center / Width (PS3.3 C.11.2.1.2) and VOI LUT Function.

    Multi-valued windows are alternative views; the first is the file's default. Returns
    None when the file has no usable window (absent, unparsable or a width the function
    does not allow), so the caller can fall back.
    """
    try:
        center = _first(ds.get("WindowCenter"), None)
        width = _first(ds.get("WindowWidth"), None)
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    except Exception:
        return None
    if center is None or width is None or not (math.isfinite(center) and math.isfinite(width)):
        return None
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    try:
        return window(arr, center, width, function)
    except ValueError:
        return None


def voi_lut_sequence(arr: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The file's first VOI LUT Sequence item (PS3.3 C.11.2.1.1) onto [0, 1].

    The LUT maps modality values to output values; the output is scaled by the LUT's own
    smallest and largest entries rather than by the bit depth in the LUT Descriptor,
    which writers often get wrong. Returns None when the file has no usable VOI LUT.
    """
    if not ds.get("VOILUTSequence"):
        return None
    try:
        # The LUT is indexed by integer input values; modality values are rounded onto it.
        indices = np.rint(np.asarray(arr, dtype=np.float64)).astype(np.int64)
        out = np.asarray(apply_voi(indices, ds, index=0), dtype=np.float64)
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries = int(descriptor[0]) or 2**16
        domain = int(descriptor[1]) + np.arange(entries, dtype=np.int64)
        table = np.asarray(apply_voi(domain, ds, index=0), dtype=np.float64)
    except Exception:
        return None
    lo, hi = float(table.min()), float(table.max())
    if hi <= lo:
        return np.zeros_like(out)
    return (out - lo) / (hi - lo)


def min_max(arr: np.ndarray) -> np.ndarray:
    """The image's own range onto [0, 1]: the fallback for files with no VOI at all
    (PS3.3 C.11.2 leaves the choice to the display). A constant image becomes 0."""
    x = np.asarray(arr, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def voi(arr: np.ndarray, ds: Dataset, configured: tuple[float, float] | None = None) -> np.ndarray:
    """Modality values -> [0, 1] by the first VOI that applies.

    1. `configured` (center, width), the run's window, overrides the file so that every
       site sees the same tissue range; it is a plain LINEAR_EXACT ramp
       (center - width/2 -> 0, center + width/2 -> 1).
    2. The file's VOI LUT Sequence.
    3. The file's Window Center / Width.
    4. min_max.
    """
    if configured is not None:
        return window(arr, float(configured[0]), float(configured[1]), "LINEAR_EXACT")
    for step in (voi_lut_sequence, window_from_file):
        out = step(arr, ds)
        if out is not None:
            return out
    return min_max(arr)


def scale_nominal_range(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour-derived grey onto [0, 1] by its nominal range 0 .. 2**BitsStored - 1.

    Colour images carry no modality values (the Modality and VOI LUT modules apply to
    greyscale only), so they are not windowed."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    return np.clip(np.asarray(arr, dtype=np.float64) / float(2**bits - 1), 0.0, 1.0)


def invert_monochrome1(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """MONOCHROME1 (PS3.3 C.7.6.3.1.2): the minimum value is displayed white *after* the
    VOI transformation, so the [0, 1] VOI output is inverted; after this every image is
    high = bright, whichever convention its site stores."""
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if photometric == "MONOCHROME1":
        return 1.0 - np.asarray(arr, dtype=np.float64)
    return arr


def resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    """An image (H, W) or a stack (N, H, W) resized to (size, size) as float32.

    Bilinear with antialiasing (a triangle filter, so downsampling averages instead of
    aliasing and values stay inside the input's range); the aspect ratio is not kept,
    as in the usual resize of public chest X-ray sets. Deterministic on CPU.
    """
    x = np.asarray(arr, dtype=np.float32)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"resize: expected an (H, W) or (N, H, W) array, got shape {arr.shape}")
    if x.shape[1:] == (size, size):
        out = x.copy()
    else:
        # torch only here: scanning a site's headers (`fedmed client`, `data check`) needs none.
        import torch
        import torch.nn.functional as F

        tensor = torch.from_numpy(np.ascontiguousarray(x))[:, None]
        out = F.interpolate(
            tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[:, 0].numpy()
    return out[0] if single else out


def normalise(arr: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(x - mean) / std as float32: the model's input scale."""
    return ((np.asarray(arr, dtype=np.float32) - np.float32(mean)) / np.float32(std)).astype(
        np.float32, copy=False
    )


def _first(value: object, default: float | None) -> float | None:
    # Multi-valued attributes (DS with VM > 1) hold alternatives; the first is the default.
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) == 0:
            return default
        value = value[0]
    return float(value)
