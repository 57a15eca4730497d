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
* Compressed transfer syntaxes are decoded by whatever pydicom plugins are installed
  (RLE natively, JPEG and JPEG 2000 through pylibjpeg); a syntax no plugin can decode
  is "cannot decode transfer syntax <UID>".
* Multi-frame images (Number of Frames > 1: cine loops, volumes, tomosynthesis) are
  refused: a site labels a file, and picking one frame of a volume to stand for that
  label would silently train on a slice nobody looked at.
* Colour images (RGB and the YBR family, which pydicom converts to RGB) are turned into
  grey with the ITU-R BT.601 luma weights, so secondary captures and exported
  screenshots of grey images still count. Their values have no modality meaning, so the
  pipeline scales them by their nominal range instead of windowing them (see
  `fedmed.client.imaging.pipeline`). PALETTE COLOR and the retired colour models are
  refused: their stored values are indices or components whose grey level is undefined.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from .quiet import quiet_pydicom
from .steps import luma
from .unusable import UnusableImage

__all__ = [
    "UnusableImage",
    "check_image_header",
    "is_colour",
    "pixel_array",
    "read_dicom",
]

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
# Defined terms of PS3.3 C.7.6.3.1.2 that are refused; only these may be named in a reason.
_REFUSED_PHOTOMETRIC = (
    "PALETTE COLOR",
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

    Raises UnusableImage("no pixel data" | "multi-frame image (N frames) not supported" |
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
    if frames > 1:
        raise UnusableImage(f"multi-frame image ({frames} frames) not supported")
    if photometric in GREY:
        expected_samples = 1
    elif photometric in COLOUR:
        expected_samples = 3
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
    return str(ds.get("PhotometricInterpretation") or "").strip().upper() in COLOUR


def pixel_array(ds: Dataset) -> np.ndarray:
    """The dataset's pixels as one 2-D array: stored values for a greyscale image (the
    modality LUT is not applied here), BT.601 luma (float64) for a colour image.

    Raises UnusableImage for a dataset `check_image_header` refuses, pixel data shorter
    than the image needs ("truncated pixel data") and pixel data no installed plugin can
    decode ("cannot decode transfer syntax <UID>").
    """
    check_image_header(ds)
    tsyntax = _transfer_syntax(ds)
    if not _is_compressed(tsyntax) and _native_too_short(ds):
        raise UnusableImage("truncated pixel data")
    with quiet_pydicom():
        try:
            arr = ds.pixel_array
        except Exception:
            raise UnusableImage(_decode_failure(tsyntax)) from None
    arr = np.asarray(arr)
    if is_colour(ds):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise UnusableImage("undecodable pixel data")
        return luma(arr)
    if arr.ndim != 2:
        raise UnusableImage("undecodable pixel data")
    return arr


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
    with quiet_pydicom():
        try:
            bits = int(ds.BitsAllocated)
            pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
            expected = (pixels * bits + 7) // 8
            return len(ds.PixelData) < expected
        except Exception:
            raise UnusableImage("undecodable pixel data") from None


def _decode_failure(tsyntax: UID | None) -> str:
    if tsyntax is None:
        return "undecodable pixel data"
    # Only a UID from the standard's registry is named: it identifies a codec, never a
    # patient. A private syntax UID is an organisation's root and is not repeated.
    if tsyntax.is_private:
        return "cannot decode private transfer syntax"
    if _is_compressed(tsyntax) and tsyntax.name != str(tsyntax):
        return f"cannot decode transfer syntax {tsyntax}"
    return "undecodable pixel data"
