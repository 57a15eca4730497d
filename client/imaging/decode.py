"""Read a DICOM file and get the one 2-D greyscale pixel array the pipeline works on.

Every way a file can be unusable ends in one exception type, `UnusableImage`, whose
`reason` is a short fixed phrase ("not a DICOM file", "no pixel data", ...). Reasons are
counted per site and the counts may be reported beyond the site, so a reason never
carries a value from the file's header (names, IDs, UIDs, dates) nor the file's path;
the only variable parts are a frame count, a well-known photometric interpretation and a
well-known transfer syntax UID, none of which says anything about a patient. Exceptions
raised by pydicom are never chained (`from None`): their text may quote header values.

Decisions
---------
* Only DICOM Part 10 files (128-byte preamble and "DICM") are read; a bare data set
  without a preamble is reported as "not a DICOM file".
* Every transfer syntax pydicom can decode with the plugins installed is accepted (native
  and deflated, RLE natively; JPEG, JPEG-LS, JPEG 2000 and HTJ2K through pylibjpeg or
  pillow), and one folder may mix them. A skip reason names the syntax by its name in the
  standard's registry, never by a bare UID: "cannot decode JPEG Extended (Process 2 and
  4): no decoder installed (install pylibjpeg, pylibjpeg-libjpeg)" when a plugin is
  missing, "corrupt <syntax> pixel data" when a plugin fails on the data.
* Documented exceptions: video transfer syntaxes (MPEG-2, H.264, HEVC), JPEG 2000 Part 2
  multi-component and JPIP-referenced pixel data, which pydicom itself cannot decode
  ("<syntax> is not supported: pydicom has no decoder for it"); floating-point pixel data
  (parametric maps: no stored values for the modality and VOI rules); retired colour
  models and the partial-YBR family.
* Multi-frame images (cine loops, enhanced CT/MR, tomosynthesis) are decoded frame by
  frame; which frames become model inputs is the run's `ImageSettings.frames` policy
  (`fedmed.client.imaging.pipeline`). An enhanced object's per-frame rescale and window
  come from its functional groups (`steps.frame_header`).
* Colour images (RGB and the YBR family, which pydicom converts to RGB) are turned into
  grey with the ITU-R BT.601 luma weights, so secondary captures and exported
  screenshots of grey images still count. PALETTE COLOR images go through their own
  colour lookup table (pydicom's `apply_color_lut`) first, then the same luma. Neither has
  modality values, so the pipeline scales them by their nominal range instead of
  windowing them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.pixels import pixel_array as decode_pixels
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from . import steps
from .quiet import quiet_pydicom
from .unusable import UnusableImage

__all__ = [
    "UnusableImage",
    "check_image_header",
    "decode_frame",
    "frame_count",
    "image_kind",
    "is_colour",
    "pixel_array",
    "read_dicom",
    "syntax_name",
]

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
PALETTE = "PALETTE COLOR"
# Defined terms of PS3.3 C.7.6.3.1.2 that are refused; only these may be named in a reason.
_REFUSED_PHOTOMETRIC = (
    "YBR_PARTIAL_420",
    "YBR_PARTIAL_422",
    "XYB",
    "HSV",
    "ARGB",
    "CMYK",
)
# A header read skips values larger than this instead of loading them (the pixel data).
_DEFER_BYTES = 4096
_UNDEFINED_LENGTH = 0xFFFFFFFF


def read_dicom(path: str | os.PathLike[str], *, header_only: bool = False) -> Dataset:
    """Read a DICOM Part 10 file.

    header_only: skip over the pixel data (and any other large value) without loading it,
        for a fast pass over many files; the dataset still tells whether pixel data is
        present and the file is checked for being cut short.

    Raises UnusableImage("not a DICOM file" | "unreadable file" | "corrupt file" |
    "truncated file").
    """
    path = Path(path)
    with quiet_pydicom():
        try:
            size = path.stat().st_size
            ds = dcmread(path, defer_size=_DEFER_BYTES if header_only else None)
        except InvalidDicomError:
            raise UnusableImage("not a DICOM file") from None
        except OSError:
            raise UnusableImage("unreadable file") from None
        except Exception:
            # pydicom's parser raises many types on garbage (struct, Unicode, value
            # errors); for the site they all mean the same thing.
            raise UnusableImage("corrupt file") from None
        if _ends_past_eof(ds, size):
            raise UnusableImage("truncated file", partial=ds)
    return ds


def _ends_past_eof(ds: Dataset, size: int) -> bool:
    # pydicom stops silently at the end of a file, so a file cut short reads as a
    # dataset whose last value (typically the pixel data) claims more bytes than exist.
    # A deflated file's offsets refer to the inflated stream and cannot be checked.
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED_LENGTH:
            continue
        if elem.value_tell + elem.length > size:
            return True
    return False


def check_image_header(ds: Dataset) -> None:
    """Refuse, from the header alone, a dataset the pipeline cannot turn into an image.

    Raises UnusableImage("no pixel data" | "invalid number of frames" |
    "unsupported photometric interpretation ..." | ...).
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnusableImage("floating-point pixel data not supported")
        raise UnusableImage("no pixel data")
    with quiet_pydicom():
        try:
            rows = int(ds.get("Rows") or 0)
            cols = int(ds.get("Columns") or 0)
            frames = int(ds.get("NumberOfFrames") or 1)
            samples = int(ds.get("SamplesPerPixel") or 1)
            photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
        except (TypeError, ValueError):
            raise UnusableImage("invalid image pixel description") from None
    if rows <= 0 or cols <= 0 or not ds.get("BitsAllocated"):
        raise UnusableImage("invalid image pixel description")
    if frames < 1:
        raise UnusableImage("invalid number of frames")
    if photometric in GREY:
        expected_samples = 1
    elif photometric in COLOUR:
        expected_samples = 3
    elif photometric == PALETTE:
        expected_samples = 1
        if not all(f"{c}PaletteColorLookupTableDescriptor" in ds for c in ("Red", "Green", "Blue")):
            raise UnusableImage("PALETTE COLOR without a colour lookup table")
    elif photometric in _REFUSED_PHOTOMETRIC:
        raise UnusableImage(f"unsupported photometric interpretation {photometric}")
    elif not photometric:
        raise UnusableImage("missing photometric interpretation")
    else:
        # An unknown value is free text from the header and is not repeated.
        raise UnusableImage("unknown photometric interpretation")
    if samples != expected_samples:
        raise UnusableImage("samples per pixel do not match photometric interpretation")


def is_colour(ds: Dataset) -> bool:
    """Whether the dataset's pixels are colour (and so were converted to grey on decode)."""
    return image_kind(ds) != "grey"


def image_kind(ds: Dataset) -> str:
    """"grey", "colour" (RGB / YBR) or "palette": which chain of steps the pixels take."""
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if photometric in COLOUR:
        return "colour"
    return "palette" if photometric == PALETTE else "grey"


def frame_count(ds: Dataset) -> int:
    """Number of Frames, 1 when absent (valid after `check_image_header`)."""
    with quiet_pydicom():
        return max(1, int(ds.get("NumberOfFrames") or 1))


def decode_frame(ds: Dataset, index: int) -> np.ndarray:
    """Frame `index` of the dataset as decoded by pydicom: stored values (H, W) for a
    greyscale or palette image, RGB (H, W, 3) for a colour one (YBR converted).

    Raises UnusableImage for pixel data shorter than the image needs ("truncated pixel
    data") and pixel data that cannot be decoded (the reason names the syntax).
    """
    tsyntax = _transfer_syntax(ds)
    if not _is_compressed(tsyntax) and _native_too_short(ds):
        raise UnusableImage("truncated pixel data")
    with quiet_pydicom():
        try:
            if frame_count(ds) == 1:
                arr = ds.pixel_array
            else:
                # One frame at a time: a long cine loop or volume is never held whole.
                arr = decode_pixels(ds, index=index)
        except Exception:
            raise UnusableImage(_decode_failure(tsyntax)) from None
    arr = np.asarray(arr)
    if image_kind(ds) == "colour":
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise UnusableImage("undecodable pixel data")
    elif arr.ndim != 2:
        raise UnusableImage("undecodable pixel data")
    return arr


def pixel_array(ds: Dataset, index: int | None = None) -> np.ndarray:
    """One frame (default: the middle one) as a 2-D array: stored values for a greyscale
    image (the modality LUT is not applied here), BT.601 luma (float64) of the RGB
    values for a colour image, and of the palette's colours for a PALETTE COLOR one.

    Raises UnusableImage for a dataset `check_image_header` refuses, and as
    `decode_frame` does.
    """
    check_image_header(ds)
    arr = decode_frame(ds, frame_count(ds) // 2 if index is None else index)
    kind = image_kind(ds)
    if kind == "colour":
        return steps.luma(arr)
    if kind == "palette":
        return steps.luma(steps.palette_colour(arr, ds))
    return arr


def syntax_name(ds: Dataset) -> str:
    """The file's transfer syntax by its registered name; "(missing)" or "private or
    unknown" otherwise (an unregistered UID is an organisation's and is not repeated)."""
    tsyntax = _transfer_syntax(ds)
    if tsyntax is None:
        return "(missing)"
    if tsyntax.is_transfer_syntax and tsyntax.name != str(tsyntax):
        return tsyntax.name
    return "private or unknown"


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(tsyntax)) if tsyntax else None


def _is_compressed(tsyntax: UID | None) -> bool:
    # A missing or unregistered syntax is treated as native: pydicom decodes it as such.
    if tsyntax is None or not tsyntax.is_transfer_syntax:
        return False
    return bool(tsyntax.is_compressed)


def _native_too_short(ds: Dataset) -> bool:
    # pydicom's own expected length counts frames, packed bits and YBR_FULL_422's
    # subsampling (two bytes per pixel pair of chroma, not three).
    with quiet_pydicom():
        try:
            return len(ds.PixelData) < get_expected_length(ds, unit="bytes")
        except Exception:
            raise UnusableImage("undecodable pixel data") from None


def _decode_failure(tsyntax: UID | None) -> str:
    if tsyntax is None:
        return "undecodable pixel data"
    # Only a syntax from the standard's registry is named, and by its name: it identifies
    # a codec, never a patient. A private syntax UID is an organisation's root and is not
    # repeated.
    if tsyntax.is_private or not tsyntax.is_transfer_syntax or tsyntax.name == str(tsyntax):
        return "cannot decode private transfer syntax"
    if not _is_compressed(tsyntax):
        return "undecodable pixel data"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return f"{tsyntax.name} is not supported: pydicom has no decoder for it"
    if not decoder.is_available:
        needs = sorted({_package(text) for text in decoder.missing_dependencies})
        hint = f" (install {' or '.join(needs)})" if needs else ""
        return f"cannot decode {tsyntax.name}: no decoder installed{hint}"
    return f"corrupt {tsyntax.name} pixel data"


def _package(missing: str) -> str:
    # pydicom words a missing plugin as "label - requires pkg>=1.0 and other>=2.0".
    needs = missing.partition("requires ")[2] or missing.partition(" - ")[0]
    return " and ".join(part.split(">")[0].split("=")[0].strip() for part in needs.split(" and "))
