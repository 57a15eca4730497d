"""Synthetic DICOM files with known pixel values, for tests.

`write_ct` writes a single-frame CT Image Storage file (any photometric interpretation,
signed or unsigned 16-bit, optionally compressed) and returns a `Written` record;
`write_labels_csv` turns such records into a site's labels.csv. The other writers make
the kinds of file a site must skip.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

BASIC_TEXT_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.11")


@dataclass(frozen=True)
class Written:
    path: Path
    sop_uid: str
    patient_id: str | None
    label: str | int | None


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _base(sop_class: str, sop_uid: str, patient_id: str | None, study_uid: str | None) -> Dataset:
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    if patient_id is not None:
        ds.PatientID = patient_id
        ds.PatientName = f"Test^{patient_id}"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20240101"
    return ds


def write_ct(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    patient_id: str | None,
    sop_uid: str | None = None,
    photometric: str = "MONOCHROME2",
    slope: float | None = 1,
    intercept: float | None = -1024,
    signed: bool = False,
    compress: str | None = None,
    label: str | int | None = None,
    window: tuple[float, float] | None = None,
    study_uid: str | None = None,
) -> Written:
    """Write a 16-bit single-frame CT file whose stored values are `pixels` (rows, cols).

    slope / intercept: Rescale Slope / Intercept; None leaves both out.
    compress: a transfer syntax UID to compress with (e.g. pydicom.uid.RLELossless).
    label: recorded in the returned `Written` for `write_labels_csv`; not stored in the file.
    window: (center, width) stored as Window Center / Width.
    """
    path = Path(path)
    pixels = np.asarray(pixels)
    dtype = np.int16 if signed else np.uint16
    if pixels.ndim != 2 or not np.array_equal(pixels.astype(dtype), pixels):
        raise ValueError(f"pixels: expected a 2-D array of {np.dtype(dtype).name} values")
    sop_uid = sop_uid or generate_uid()
    ds = _base(CTImageStorage, sop_uid, patient_id, study_uid)
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None and intercept is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(dtype).tobytes()
    if compress is not None:
        # Keep the requested SOPInstanceUID (pydicom gives a compressed copy a new one).
        ds.compress(compress, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Written(path, sop_uid, patient_id, label)


def write_non_image(
    path: str | os.PathLike[str], *, patient_id: str | None = "P-SR", sop_uid: str | None = None
) -> Written:
    """A structured-report-like object: valid DICOM without pixel data."""
    path = Path(path)
    sop_uid = sop_uid or generate_uid()
    ds = _base(BASIC_TEXT_SR_STORAGE, sop_uid, patient_id, None)
    ds.Modality = "SR"
    ds.ContentDate = "20240101"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Written(path, sop_uid, patient_id, None)


def write_random_bytes(path: str | os.PathLike[str], size: int = 2048, seed: int = 0) -> Path:
    """A file of random bytes (not DICOM)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def write_truncated(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """`source` cut to its first half."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_labels_csv(
    site_dir: str | os.PathLike[str],
    written: Iterable[Written],
    *,
    key: str = "SOPInstanceUID",
    extra_rows: Iterable[tuple[str, str]] = (),
) -> Path:
    """labels.csv for the records that carry a label, keyed by SOPInstanceUID or by path
    relative to `site_dir`; `extra_rows` are appended as (key, label)."""
    site_dir = Path(site_dir)
    path = site_dir / "labels.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([key, "label"])
        for w in written:
            if w.label is None:
                continue
            k = w.sop_uid if key == "SOPInstanceUID" else w.path.relative_to(site_dir).as_posix()
            out.writerow([k, w.label])
        for row in extra_rows:
            out.writerow(row)
    return path
