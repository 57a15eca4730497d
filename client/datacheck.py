"""`fedmed data check`: what a site folder holds and whether it can train, before joining.

The check runs at the site and sends nothing. It goes through the folder the way training
will (`scan_site` for the headers and labels, then the real image pipeline on every
labelled file), so "decodable" here means exactly "an image training would use", and the
skip reasons are the ones a training run would count.

A fresh PACS export has no labels yet: the check then inventories every file (decodable,
modalities, sizes, syntaxes, patients, skip reasons) and names "no labels yet" as the one
problem; a folder of site folders is recognised and named as such. `preflight` is the
header-only part (labels, folder layout, I/O problems) that `fedmed client` and
`fedmed simulate` run before joining, so a site with wrong labels stops here, in words,
not at round 1 as a `train-error`.

What the report may contain: counts, the aggregate categorical header values a site admin
needs to spot a wrong export (modality, photometric interpretation, transfer syntax, image
size, pixel spacing range) and, for the admin's eyes only, the relative paths of skipped
or suspicious files. No other header value (names, IDs, dates, UIDs) is ever repeated:
a privacy warning says *which kind* of identifying text a path holds, never the text.
"""

from __future__ import annotations

import os
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from fedmed.client.imaging import (
    UnusableImage,
    frame_count,
    preprocess,
    quiet_pydicom,
    read_dicom,
    syntax_name,
)
from fedmed.client.sitedata import SiteFile, SkipReport, scan_site
from fedmed.client.sitedata.labels import LABELS_FILE, read_labels_csv, resolve_label
from fedmed.client.sitedata.scan import UNREADABLE_FOLDER, list_files, patient_key
from fedmed.common.settings import ImageSettings

__all__ = ["DataCheckReport", "Preflight", "PrivacyWarning", "check_site", "preflight"]

# progress(done, total, what): what is "reading headers" or "decoding images".
Progress = Callable[[int, int, str], None]

# The only skip reason `scan_site` gives a labels.csv row rather than a file.
_ROW_REASON = "label key matches no file"
# Skip reasons that are label problems rather than image problems, and their report keys.
_LABEL_REASONS = {
    "no label": "unlabelled_images",
    "label not in class list": "labels_not_in_class_list",
    "conflicting labels in labels.csv": "conflicting_labels",
    "folder name not in class list": "folders_not_in_class_list",
}
_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
                "YBR_RCT", "PALETTE COLOR", "YBR_PARTIAL_420", "YBR_PARTIAL_422")
# Modality is a short code string; anything else is free text and is not repeated.
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
# Secondary Capture Image Storage and its multi-frame variants (…1.1.7.1 to …1.1.7.4).
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Identifiers shorter than this match too many unrelated names to be worth a warning.
_MIN_ID_CHARS = 3
_PERSON_NAME = re.compile(r"[A-Za-z]{2,}\^[A-Za-z]{2,}|[A-Za-z]{2,}, ?[A-Za-z]{2,}")
_DATE = re.compile(
    r"(?<!\d)(?:(?:19|20)\d\d[-_]?(?:0[1-9]|1[0-2])[-_]?(?:0[1-9]|[12]\d|3[01])"
    r"|(?:0[1-9]|[12]\d|3[01])[-._](?:0[1-9]|1[0-2])[-._](?:19|20)\d\d)(?!\d)"
)
# A UID-named file or folder ("1.2.840....") is digits and dots only; its parts can look
# like dates but say nothing about a patient.
_UID_LIKE = re.compile(r"^\d+(\.\d+){3,}$")

_WARNING_TEXT = {
    "burned-in-annotation": "BurnedInAnnotation is YES: the pixels show identifying text",
    "burned-in-annotation-missing": (
        "ultrasound or secondary capture without BurnedInAnnotation: such images often "
        "show identifying text in the pixels; check them or set the tag"),
    "path-patient-id": "file or folder name contains the file's PatientID",
    "path-patient-name": "file or folder name contains the file's PatientName",
    "path-accession-number": "file or folder name contains the file's AccessionNumber",
    "path-birth-date": "file or folder name contains the patient's birth date",
    "path-person-name": "file or folder name looks like a person's name (LAST^FIRST or LAST, FIRST)",
    "path-date": "file or folder name contains a date (a birth date would identify the patient)",
}


@dataclass
class PrivacyWarning:
    """One kind of identifying content and the files that show it (local report only)."""

    kind: str
    message: str
    files: list[str] = field(default_factory=list)


@dataclass
class DataCheckReport:
    """What `check_site` found. `problems` stop training; `warnings` do not.

    skipped_files, and the files of each privacy warning, are relative paths for the site
    admin: they may name patients and are for this machine only.
    """

    data_dir: str
    classes: tuple[str, ...]
    files_found: int = 0
    labelled: int = 0
    decodable: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    images_per_class: dict[str, int] = field(default_factory=dict)
    patients_per_class: dict[str, int] = field(default_factory=dict)
    patients: int = 0
    images_per_patient: dict[str, float] | None = None  # min, median, max
    modalities: dict[str, int] = field(default_factory=dict)
    photometric: dict[str, int] = field(default_factory=dict)
    transfer_syntaxes: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # "ROWSxCOLS" -> images
    frames: dict[str, int] = field(default_factory=dict)  # "1" / "2-9" / "10-99" / "100+" -> files
    pixel_spacing_mm: dict[str, float | int | None] = field(default_factory=dict)
    label_problems: dict[str, int] = field(default_factory=dict)
    label_values: dict[str, int] = field(default_factory=dict)  # label text -> rows / images
    labelled_layout: bool = True  # False: no labels (yet); every file was inventoried
    site_folders: list[str] = field(default_factory=list)
    privacy_warnings: list[PrivacyWarning] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def can_train(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "classes": list(self.classes),
            "can_train": self.can_train,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "files": {
                "found": self.files_found,
                "labelled": self.labelled,
                "decodable": self.decodable,
                "skipped": self.files_found - self.decodable,
            },
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped_files],
            "images_per_class": dict(self.images_per_class),
            "patients_per_class": dict(self.patients_per_class),
            "patients": self.patients,
            "images_per_patient": self.images_per_patient,
            "modalities": _sorted_counts(self.modalities),
            "photometric_interpretations": _sorted_counts(self.photometric),
            "transfer_syntaxes": _sorted_counts(self.transfer_syntaxes),
            "image_sizes": _sorted_counts(self.sizes),
            "frames_per_file": dict(self.frames),
            "pixel_spacing_mm": dict(self.pixel_spacing_mm),
            "label_problems": dict(self.label_problems),
            "label_values": dict(self.label_values),
            "labels_found": self.labelled_layout,
            "site_folders": list(self.site_folders),
            "privacy_warnings": [
                {"kind": w.kind, "message": w.message, "count": len(w.files), "files": list(w.files)}
                for w in self.privacy_warnings
            ],
        }


@dataclass
class Preflight:
    """The header-only part of the check: labels, layout and I/O problems.

    files / skips: what `scan_site` found (empty when the folder has no usable labels).
    labelled: whether the folder has labels at all (labels.csv or class-named folders).
    """

    files: list[SiteFile]
    skips: SkipReport
    labelled: bool
    label_values: dict[str, int]
    site_folders: list[str]
    problems: list[str]
    warnings: list[str]


def preflight(
    data_dir: str | os.PathLike[str],
    classes: Sequence[str],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    progress: Progress | None = None,
) -> Preflight:
    """Read headers and labels only (no decoding): the checks a site runs before it joins.

    Raises ValueError for a path that does not exist or is not a folder, and for fewer
    than two class names. Every other finding is a problem or warning line, each naming
    the file or folder it is about.
    """
    root = Path(data_dir)
    classes = tuple(classes)
    if not root.exists():
        raise ValueError(f"{root}: no such folder; give the site's DICOM export folder")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; give the folder holding the site's DICOM files")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected at least two distinct names, got {','.join(classes)!r}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ValueError(f"{root}: folder cannot be read (permission denied); let this user read it")
    exclude = list(exclude)
    problems: list[str] = []
    warnings: list[str] = []
    values: dict[str, int] = {}
    try:
        values = _label_values(root, classes)
    except ValueError as exc:
        problems.append(str(exc))
    headers = None if progress is None else (lambda done, total: progress(done, total, "reading headers"))
    try:
        files, skips = scan_site(root, classes, exclude=exclude, progress=headers)
        labelled = True
    except ValueError as exc:
        files, skips, labelled = [], SkipReport(), False
        if not problems:  # a malformed labels.csv was reported above
            problems.append(str(exc))
    site_folders = _site_folders(root, classes) if not labelled else []
    if not labelled and not (root / LABELS_FILE).is_file():
        problems.clear()
        if site_folders:
            problems.append(
                f"{root}: holds {len(site_folders)} site folder(s) ({', '.join(site_folders)}), "
                f"not one site's files: check one site at a time, e.g. "
                f"`fedmed data check {root / site_folders[0]}`")
        else:
            problems.append(
                f"{root}: no labels yet: add a {LABELS_FILE} (columns SOPInstanceUID or path, and "
                f"label) or sort the files into class folders ({', '.join(c + '/' for c in classes)})")
    unknown = [v for v in values if resolve_label(v, classes) is None]
    if unknown:
        line = _suggest_classes(root, values, unknown, classes)
        (problems if labelled and not files else warnings).append(line)
    for where, reason in skips.files:
        if reason == UNREADABLE_FOLDER:
            problems.append(f"{root / where.rstrip('/')}: folder cannot be read (permission "
                            "denied): its files are left out; let this user read it")
    return Preflight(files, skips, labelled, values, site_folders, problems, warnings)


def _label_values(root: Path, classes: tuple[str, ...]) -> dict[str, int]:
    """Label texts found: labels.csv's label column (rows per value) or, without one, the
    names of top-level folders holding files (files per folder)."""
    if (root / LABELS_FILE).is_file():
        return dict(Counter(row.label for row in read_labels_csv(root / LABELS_FILE).rows))
    if not any(entry.is_dir() and resolve_label(entry.name, classes) is not None
               for entry in _entries(root)):
        return {}
    found: dict[str, int] = {}
    for entry in _entries(root):
        if entry.is_dir() and not entry.name.startswith("."):
            files, _ = list_files(entry)
            if files:
                found[entry.name] = len(files)
    return found


def _entries(root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(root) as it:
            return list(it)
    except OSError:
        return []


def _site_folders(root: Path, classes: tuple[str, ...]) -> list[str]:
    """Sub-folders that look like a site each (their own labels.csv or class folders)."""
    found = []
    for entry in sorted(_entries(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        inner = _entries(Path(entry.path))
        if any(e.name == LABELS_FILE and e.is_file() for e in inner) or any(
            e.is_dir() and resolve_label(e.name, classes) is not None for e in inner
        ):
            found.append(entry.name)
    return found


def _suggest_classes(root: Path, values: dict[str, int], unknown: list[str],
                     classes: tuple[str, ...]) -> str:
    source = f"{root / LABELS_FILE}" if (root / LABELS_FILE).is_file() else f"{root}'s folder names"
    shown = ", ".join(f"{v!r} ({values[v]})" for v in sorted(unknown)[:10])
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    names = sorted(v for v in values if v and not v.lstrip("-").isdigit())
    line = (f"labels in {source} not in the class list {','.join(classes)}: {shown}{more}")
    if names and len(names) >= 2:
        line += f"; if these are the classes, pass --classes {','.join(names)} (in label order)"
    return line


def check_site(
    data_dir: str | os.PathLike[str],
    classes: Sequence[str],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    progress: Progress | None = None,
) -> DataCheckReport:
    """Check a site folder (either layout of `fedmed.client.sitedata.scan`), or inventory
    one without labels.

    exclude: folders inside `data_dir` to leave alone (a state folder kept inside it).
    progress: called as progress(done, total, what) while headers are read and images
        decoded.

    Label and layout problems (no labels yet, a folder of site folders, a malformed or
    unreadable labels.csv, labels not in the class list) are reported as problems rather
    than raised. Raises ValueError for a path that does not exist or is not a folder, and
    fewer than two class names.
    """
    root = Path(data_dir)
    classes = tuple(classes)
    first = preflight(root, classes, exclude=exclude, progress=progress)
    report = DataCheckReport(data_dir=str(root), classes=classes, label_values=first.label_values,
                             labelled_layout=first.labelled, site_folders=first.site_folders)
    report.problems += first.problems
    report.warnings += first.warnings
    warnings: dict[str, PrivacyWarning] = {}
    if not first.labelled:
        _inventory(report, root, exclude, warnings, progress)
        report.privacy_warnings = [warnings[k] for k in _WARNING_TEXT if k in warnings]
        return report
    files, skips = first.files, first.skips

    unknown_rows = sum(1 for where, reason in skips.files if _is_row(where, reason))
    skipped_files = [(w, r) for w, r in skips.files
                     if not _is_row(w, r) and r != UNREADABLE_FOLDER]
    report.files_found = len(files) + len(skipped_files)
    report.labelled = len(files)

    settings = ImageSettings()
    decodable: list[SiteFile] = []
    spacings: list[float] = []
    for done, f in enumerate(files, start=1):
        if progress is not None:
            progress(done, len(files), "decoding images")
        # read_dicom + preprocess is exactly `load_image`, kept apart to see the header too.
        try:
            ds = read_dicom(root / f.relpath)
        except UnusableImage as e:
            _check_header_privacy(f.relpath, e.partial, warnings)
            skipped_files.append((f.relpath, e.reason))
            continue
        _check_header_privacy(f.relpath, ds, warnings)
        try:
            preprocess(ds, settings)
        except UnusableImage as e:
            skipped_files.append((f.relpath, e.reason))
            continue
        decodable.append(f)
        spacings += _count_header(report, ds)
    labelled = {f.relpath for f in files}
    for rel, _ in skipped_files:
        if rel not in labelled:
            _check_header_privacy(rel, _header_or_none(root / rel), warnings)

    report.decodable = len(decodable)
    _set_spacing(report, spacings)
    report.skipped_files = sorted(skipped_files)
    report.skipped = dict(Counter(reason for _, reason in skipped_files))
    report.label_problems = {"unknown_keys": unknown_rows}
    for reason, key in _LABEL_REASONS.items():
        report.label_problems[key] = report.skipped.get(reason, 0)
    report.privacy_warnings = [warnings[k] for k in _WARNING_TEXT if k in warnings]
    _count_patients(report, decodable)
    _judge(report)
    return report


def _set_spacing(report: DataCheckReport, spacings: list[float]) -> None:
    report.pixel_spacing_mm = {
        "min": min(spacings) if spacings else None,
        "max": max(spacings) if spacings else None,
        "missing": report.decodable - len(spacings) // 2,
    }


def _inventory(report: DataCheckReport, root: Path, exclude: Iterable[str | os.PathLike[str]],
               warnings: dict[str, PrivacyWarning], progress: Progress | None) -> None:
    """Every file below `root` through the real pipeline, without labels: what an
    unlabelled export holds and how much of it would train once labelled."""
    relpaths, unreadable = list_files(root, exclude)
    # The site folders' own labels.csv files are labels, not images.
    relpaths = [rel for rel in relpaths if rel.rsplit("/", 1)[-1] != LABELS_FILE]
    settings = ImageSettings()
    skipped: list[tuple[str, str]] = []
    spacings: list[float] = []
    patients: set[str] = set()
    seen_uids: set[str] = set()
    for done, rel in enumerate(relpaths, start=1):
        if progress is not None:
            progress(done, len(relpaths), "decoding images")
        try:
            ds = read_dicom(root / rel)
        except UnusableImage as e:
            _check_header_privacy(rel, e.partial, warnings)
            skipped.append((rel, e.reason))
            continue
        _check_header_privacy(rel, ds, warnings)
        try:
            preprocess(ds, settings)
        except UnusableImage as e:
            skipped.append((rel, e.reason))
            continue
        uid = _text(ds, "SOPInstanceUID")
        if uid and uid in seen_uids:
            skipped.append((rel, "duplicate SOPInstanceUID"))
            continue
        seen_uids.add(uid)
        report.decodable += 1
        spacings += _count_header(report, ds)
        with quiet_pydicom():
            patients.add(patient_key(ds, uid or rel))
    report.files_found = len(relpaths)
    for folder in unreadable:
        report.problems.append(f"{root / folder.rstrip('/')}: folder cannot be read (permission "
                               "denied): its files are left out; let this user read it")
    report.skipped_files = sorted(skipped)
    report.skipped = dict(Counter(reason for _, reason in skipped))
    report.patients = len(patients)
    report.images_per_class = {c: 0 for c in report.classes}
    report.patients_per_class = {c: 0 for c in report.classes}
    _set_spacing(report, spacings)
    if report.files_found and not report.decodable:
        report.warnings.append(f"none of the {report.files_found} files is a decodable image "
                               "(see skipped)")


def _is_row(where: str, reason: str) -> bool:
    return reason == _ROW_REASON and where.startswith(f"{LABELS_FILE} row ")


def _sorted_counts(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _header_or_none(path: Path) -> Dataset | None:
    try:
        return read_dicom(path, header_only=True)
    except UnusableImage as e:
        return e.partial  # a file cut short still has a readable header
    except OSError:
        return None


def _text(ds: Dataset, keyword: str) -> str:
    with quiet_pydicom():
        try:
            return str(ds.get(keyword) or "").strip()
        except Exception:  # noqa: BLE001 — a malformed value is as good as absent here
            return ""


def _count_header(report: DataCheckReport, ds: Dataset) -> list[float]:
    """Count a decodable image's categorical header values; return its pixel spacing
    (row, column) in mm, or [] when it has none."""
    modality = _text(ds, "Modality").upper()
    modality = modality if _MODALITY.match(modality) else ("(missing)" if not modality else "other")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    photometric = photometric if photometric in _PHOTOMETRIC else "other"
    _add(report.modalities, modality)
    _add(report.photometric, photometric)
    _add(report.transfer_syntaxes, syntax_name(ds))
    # The pipeline accepted the image, so Rows and Columns are valid integers.
    _add(report.sizes, f"{int(ds.Rows)}x{int(ds.Columns)}")
    frames = frame_count(ds)
    # Ranges, not exact counts: a series' frame count can be as rare as a patient.
    _add(report.frames, "1" if frames == 1 else "2-9" if frames < 10 else "10-99" if frames < 100 else "100+")
    return _spacing(ds)


def _add(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _spacing(ds: Dataset) -> list[float]:
    # Projection radiographs often carry only the detector's spacing.
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        with quiet_pydicom():
            try:
                values = [float(v) for v in (ds.get(keyword) or [])]
            except (TypeError, ValueError):
                continue
        if len(values) == 2 and all(v > 0 for v in values):
            return values
    return []


def _check_header_privacy(rel: str, ds: Dataset | None, warnings: dict[str, PrivacyWarning]) -> None:
    """Record which kinds of identifying content `rel` and its header show."""
    kinds: list[str] = []
    if ds is not None:
        burned = _text(ds, "BurnedInAnnotation").upper()
        sop_class = _text(ds, "SOPClassUID")
        captured = sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + ".")
        if burned == "YES":
            kinds.append("burned-in-annotation")
        elif not burned and (_text(ds, "Modality").upper() == "US" or captured):
            kinds.append("burned-in-annotation-missing")
    kinds += _path_kinds(rel, ds)
    for kind in kinds:
        warning = warnings.setdefault(kind, PrivacyWarning(kind, _WARNING_TEXT[kind]))
        warning.files.append(rel)


def _path_kinds(rel: str, ds: Dataset | None) -> list[str]:
    parts = rel.split("/")
    parts[-1] = Path(parts[-1]).stem  # an extension is no identifier
    folded = "/".join(parts).casefold()
    kinds = []
    if ds is not None:
        if _contains(folded, _text(ds, "PatientID")):
            kinds.append("path-patient-id")
        if any(_contains(folded, n) for n in _name_parts(ds)):
            kinds.append("path-patient-name")
        if _contains(folded, _text(ds, "AccessionNumber")):
            kinds.append("path-accession-number")
    birth = _text(ds, "PatientBirthDate") if ds is not None else ""
    dated = [p for p in parts if not _UID_LIKE.match(p)]
    if len(birth) == 8 and birth.isdigit() and any(_has_date(p, birth) for p in dated):
        kinds.append("path-birth-date")
    elif any(_DATE.search(p) for p in dated):
        kinds.append("path-date")
    if any(_PERSON_NAME.search(p) for p in parts):
        kinds.append("path-person-name")
    return kinds


def _contains(folded_path: str, value: str) -> bool:
    return len(value) >= _MIN_ID_CHARS and value.casefold() in folded_path


def _name_parts(ds: Dataset) -> list[str]:
    # PatientName is FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX; each name is looked for on its own.
    return [p.strip() for p in _text(ds, "PatientName").split("^") if p.strip()]


def _has_date(part: str, yyyymmdd: str) -> bool:
    y, m, d = yyyymmdd[:4], yyyymmdd[4:6], yyyymmdd[6:]
    forms = (f"{y}{m}{d}", f"{y}-{m}-{d}", f"{y}_{m}_{d}", f"{d}.{m}.{y}", f"{d}-{m}-{y}",
             f"{d}_{m}_{y}", f"{m}-{d}-{y}")
    return any(form in part for form in forms)


def _count_patients(report: DataCheckReport, files: list[SiteFile]) -> None:
    report.images_per_class = {c: 0 for c in report.classes}
    per_class_patients: dict[str, set[str]] = {c: set() for c in report.classes}
    per_patient: Counter[str] = Counter()
    for f in files:
        name = report.classes[f.label]
        report.images_per_class[name] += 1
        per_class_patients[name].add(f.patient)
        per_patient[f.patient] += 1
    report.patients_per_class = {c: len(p) for c, p in per_class_patients.items()}
    report.patients = len(per_patient)
    if per_patient:
        counts = list(per_patient.values())
        report.images_per_patient = {
            "min": min(counts), "median": float(statistics.median(counts)), "max": max(counts),
        }


def _judge(report: DataCheckReport) -> None:
    """Problems that stop training, and warnings that do not."""
    if report.decodable == 0:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(report.skipped.items())) or "no files"
        report.problems.append(f"{report.data_dir}: no usable labelled image ({reasons})")
        return
    present = [c for c, n in report.images_per_class.items() if n]
    if len(present) < 2:
        report.problems.append(
            f"{report.data_dir}: only class {present[0]!r} has images; training needs at least "
            f"two of {', '.join(report.classes)}: label images of another class"
        )
    missing = [c for c, n in report.images_per_class.items() if not n]
    if missing and len(present) >= 2:
        report.warnings.append(f"no images of class {', '.join(missing)}")
    skipped = report.files_found - report.decodable
    if skipped:
        report.warnings.append(f"{skipped} of {report.files_found} files will not be used (see skipped)")
    if report.label_problems.get("unknown_keys"):
        report.warnings.append(
            f"{report.label_problems['unknown_keys']} row(s) of {LABELS_FILE} match no file"
        )
    if report.patients == 1:
        report.warnings.append("one patient only: validation needs a second patient, so nothing is validated")
    if len(report.modalities) > 1:
        report.warnings.append("more than one modality: check that the export holds what was meant")
    if report.privacy_warnings:
        report.warnings.append(
            f"{len(report.privacy_warnings)} kind(s) of identifying content found (see privacy warnings)"
        )
