"""The fast pass over a site folder: which files are usable labelled images.

Only headers are read (the pixel data is skipped, not decoded). A file is left out, with
its reason counted in a `SkipReport`, when it is not DICOM, is cut short or corrupt,
holds no image the pipeline accepts, lacks a SOPInstanceUID, repeats a
SOPInstanceUID already seen (the first file in path order is kept), or has no usable
label. Rows of labels.csv whose key matches no file are counted too.

Layouts (see `fedmed.client.sitedata.labels`):
(a) `labels.csv` at the top of the folder: DICOM files anywhere below it, matched to rows
    by SOPInstanceUID or by relative path;
(b) no labels.csv: top-level folders named after classes, every file below a folder
    taking its name as label.
A folder with both uses labels.csv. A folder with neither is an error, not an empty site.
Hidden files and folders (".DS_Store", ".git", ...) are ignored, as is the top-level
labels.csv; any other file that is not DICOM is counted as "not a DICOM file". A
sub-folder that cannot be listed is counted too ("unreadable folder", under its relative
path followed by "/"), so its files never disappear without a word.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from fedmed.client.imaging import UnusableImage, check_image_header, quiet_pydicom, read_dicom

from .files import SiteFile, list_files
from .labels import LABELS_FILE, LabelTable, read_labels_csv, resolve_label
from .report import SkipReport

__all__ = ["UNREADABLE_FOLDER", "SiteFile", "list_files", "patient_key", "scan_site"]

UNREADABLE_FOLDER = "unreadable folder"


@dataclass(frozen=True)
class _Header:
    relpath: str
    size: int
    mtime_ns: int
    sop_uid: str
    patient: str
    modality: str


def scan_site(
    data_dir: str | os.PathLike[str],
    classes: Sequence[str],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[SiteFile], SkipReport]:
    """List a site folder's usable labelled images, in relative-path order.

    exclude: folders inside `data_dir` to leave alone (the site's own state folder when
        it lies inside the data folder).
    progress: called as progress(done, total) while headers are read.

    Raises ValueError for a folder with neither labels.csv nor a class-named folder, and
    for a malformed labels.csv.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: expected a folder of DICOM files, found none")
    classes = tuple(classes)
    table = read_labels_csv(root / LABELS_FILE) if (root / LABELS_FILE).is_file() else None
    if table is None and not any(
        entry.is_dir() and resolve_label(entry.name, classes) is not None
        for entry in root.iterdir()
    ):
        raise ValueError(
            f"{root}: no labels: expected a {LABELS_FILE} or class-named folders "
            f"({', '.join(c + '/' for c in classes)})"
        )
    report = SkipReport()
    relpaths, unreadable = list_files(root, exclude)
    for folder in unreadable:
        report.add(folder, UNREADABLE_FOLDER)

    headers: list[_Header] = []
    read_uids: set[str] = set()
    kept_uids: set[str] = set()
    for done, rel in enumerate(relpaths, start=1):
        if progress is not None:
            progress(done, len(relpaths))
        header = _read_header(root, rel, report, read_uids)
        if header is None:
            continue
        if header.sop_uid in kept_uids:
            report.add(rel, "duplicate SOPInstanceUID")
            continue
        kept_uids.add(header.sop_uid)
        headers.append(header)

    if table is not None:
        labels = _labels_from_table(table, classes, headers, relpaths, read_uids, report)
    else:
        labels = _labels_from_folders(classes, headers)

    files = []
    for header in headers:
        label = labels.get(header.relpath)
        if isinstance(label, str):
            report.add(header.relpath, label)
            continue
        files.append(SiteFile(header.relpath, header.size, header.mtime_ns, header.sop_uid,
                              header.patient, label, header.modality))
    return files, report


def _read_header(root: Path, rel: str, report: SkipReport, read_uids: set[str]) -> _Header | None:
    path = root / rel
    try:
        try:
            ds = read_dicom(path, header_only=True)
        except UnusableImage as e:
            # A file cut short still names its SOPInstanceUID; its labels.csv row then
            # is not reported as matching no file on top of the file's own reason.
            if e.partial is not None and (uid := _sop_uid(e.partial)):
                read_uids.add(uid)
            raise
        with quiet_pydicom():
            sop_uid = _sop_uid(ds)
            if sop_uid:
                read_uids.add(sop_uid)
            check_image_header(ds)
            if not sop_uid:
                raise UnusableImage("no SOPInstanceUID")
            patient = patient_key(ds, sop_uid)
            modality = str(ds.get("Modality") or "").strip().upper()
        stat = path.stat()
    except UnusableImage as e:
        report.add(rel, e.reason)
        return None
    except OSError:
        report.add(rel, "unreadable file")
        return None
    return _Header(rel, stat.st_size, stat.st_mtime_ns, sop_uid, patient, modality)


def _sop_uid(ds: Dataset) -> str:
    try:
        with quiet_pydicom():
            uid = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID")
    except Exception:
        return ""
    return str(uid or "").strip()


def patient_key(ds: Dataset, sop_uid: str) -> str:
    """Who an image belongs to, for the patient-level split: its PatientID; a file without
    one is its own patient, keyed by its study (or, lacking that, by the image itself)."""
    patient_id = str(ds.get("PatientID") or "").strip()
    if patient_id:
        return f"patient:{patient_id}"
    study = str(ds.get("StudyInstanceUID") or "").strip()
    return f"study:{study}" if study else f"image:{sop_uid}"


def _labels_from_table(
    table: LabelTable,
    classes: tuple[str, ...],
    headers: list[_Header],
    relpaths: list[str],
    read_uids: set[str],
    report: SkipReport,
) -> dict[str, int | str]:
    by_uid = table.key_column == "SOPInstanceUID"
    # A row may name a file that exists but is unusable; that file's own reason is
    # counted, so the row is not "unknown" as well.
    known = read_uids if by_uid else set(relpaths)
    wanted: dict[str, set[str]] = {}
    for row in table.rows:
        if row.key not in known:
            report.add(f"{LABELS_FILE} row {row.row}", "label key matches no file")
            continue
        wanted.setdefault(row.key, set()).add(row.label)
    labels: dict[str, int | str] = {}
    for header in headers:
        texts = wanted.get(header.sop_uid if by_uid else header.relpath)
        labels[header.relpath] = _one_label(texts, classes)
    return labels


def _one_label(texts: set[str] | None, classes: tuple[str, ...]) -> int | str:
    # A str result is the reason the file is left out.
    if not texts:
        return "no label"
    indices = {resolve_label(text, classes) for text in texts}
    if None in indices:
        return "label not in class list"
    if len(indices) > 1:
        return "conflicting labels in labels.csv"
    return indices.pop()


def _labels_from_folders(classes: tuple[str, ...], headers: list[_Header]) -> dict[str, int | str]:
    labels: dict[str, int | str] = {}
    for header in headers:
        folder, sep, _ = header.relpath.partition("/")
        if not sep:
            labels[header.relpath] = "no label"
            continue
        index = resolve_label(folder, classes)
        labels[header.relpath] = "folder name not in class list" if index is None else index
    return labels
