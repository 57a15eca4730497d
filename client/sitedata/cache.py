"""The site's cache of preprocessed images, in `<state_dir>/cache/`.

Decoding a site's DICOM files is the slow part of a load; the result is kept in one
`.npz` per data state, named by a hash of everything the arrays depend on: each file's
relative path, size, modification time, SOPInstanceUID and label, the class list, the
image settings and the pipeline version. Touching, adding, removing or relabelling a file,
or changing a setting, gives a new key and a fresh decode; the previous cache file is
then removed. The cache holds patients' images, so it is written readable by its owner
only and never leaves the site.

Next to the images the cache keeps the scan they came from (`ScanRecord`: the usable
files with their SOPInstanceUID, patient, label and modality, and the scan's skipped
files), under a second key, `listing_key`, that is worked out without opening a file: the
folder's file list with each file's size and times, labels.csv's contents, the classes
and the settings. A site's executor compares that key only (`load_listed`), so while
nothing in the folder changed it builds its data set from the cache alone, without reading
a header or loading pydicom; otherwise a short-lived child scans and decodes
(`fedmed.client.sitedata.fill`). The record names the site's files and patients: it has
the cache's protection.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmed.client.imaging.version import PIPELINE_VERSION
from fedmed.common.settings import ImageSettings

from .files import SiteFile, list_files
from .labels import LABELS_FILE

__all__ = ["CachedImages", "ScanRecord", "cache_key", "listing_key", "load_cached", "load_listed", "save_cached"]

CACHE_DIR = "cache"
_PREFIX = "site-images-"
_FORMAT = 2


@dataclass
class ScanRecord:
    """What the scan that the cached images came from found.

    listing: the folder's `listing_key` when the scan began.
    files: the usable labelled files, in scan order (the cached images' order).
    skipped: (where, reason) of every file (or labels.csv row) the scan left out, in
        the order the scan reported them.
    """

    listing: str
    files: list[SiteFile]
    skipped: list[tuple[str, str]]


@dataclass
class CachedImages:
    """Preprocessed images of a scan's files, in scan order.

    images: float32 (M, 1, S, S) for the files whose reason is "", each file's images
        together in file order.
    reasons: one per scanned file: "" when decoded, else why it was unusable.
    counts: one per scanned file: how many images it gave (0 when unusable; more than
        one for a multi-frame file under the "all" frame policy).
    scan: the scan these files came from, when the cache holds it.
    """

    images: np.ndarray
    reasons: list[str]
    counts: list[int]
    scan: ScanRecord | None = None

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.reasons):
            raise ValueError("cached images: expected one image count per file")


def cache_key(files: Sequence[SiteFile], classes: Sequence[str], settings: ImageSettings) -> str:
    """sha256 hex over everything the cached arrays depend on."""
    payload = {
        "format": _FORMAT,
        "pipeline": PIPELINE_VERSION,
        "settings": settings.to_dict(),
        "classes": list(classes),
        "files": [[f.relpath, f.size, f.mtime_ns, f.sop_uid, f.label] for f in files],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def listing_key(data_dir: str | os.PathLike[str], classes: Sequence[str], settings: ImageSettings,
                exclude: Iterable[str | os.PathLike[str]] = ()) -> str:
    """sha256 hex over what a scan of `data_dir` and the cached arrays depend on, found
    without reading an image: the folder, its files with their size, modification and
    status-change times (a rewritten, replaced or re-permissioned file changes one of
    them), the folders that could not be listed, labels.csv's bytes, the classes, the
    image settings and the pipeline version. Same trust as `cache_key` puts in a file's
    size and modification time; a changed key only costs a rescan."""
    root = Path(data_dir)
    relpaths, unreadable = list_files(root, exclude)
    entries: list[list] = []
    for rel in relpaths:
        try:
            st = os.stat(root / rel)
        except OSError:
            entries.append([rel])
            continue
        entries.append([rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    labels = root / LABELS_FILE
    try:
        labels_hash = hashlib.sha256(labels.read_bytes()).hexdigest() if labels.is_file() else ""
    except OSError:
        labels_hash = "unreadable"
    payload = {
        "format": _FORMAT,
        "pipeline": PIPELINE_VERSION,
        "settings": settings.to_dict(),
        "classes": list(classes),
        "folder": str(root.resolve()),
        "labels": labels_hash,
        "files": entries,
        "unreadable": unreadable,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cache_path(state_dir: str | os.PathLike[str], key: str) -> Path:
    return Path(state_dir) / CACHE_DIR / f"{_PREFIX}{key[:32]}.npz"


def _whole(cached: CachedImages, count: int) -> bool:
    """Whether `cached` covers `count` scanned files consistently (a cache cut short by a
    crash is rebuilt, not trusted)."""
    reasons, counts = cached.reasons, cached.counts
    if len(reasons) != count or len(counts) != count or cached.images.shape[0] != sum(counts):
        return False
    return not any((n > 0) == bool(r) for n, r in zip(counts, reasons))


def _scan_record(data) -> ScanRecord | None:
    if "listing" not in data.files:
        return None  # written before the cache kept its scan
    columns = [data[f"file_{name}"] for name in ("relpath", "size", "mtime_ns", "sop_uid", "patient", "label",
                                                  "modality")]
    files = [SiteFile(str(rel), int(size), int(mtime), str(uid), str(patient), int(label), str(modality))
             for rel, size, mtime, uid, patient, label, modality in zip(*columns)]
    skipped = [(str(where), str(reason)) for where, reason in zip(data["skip_where"], data["skip_reason"])]
    return ScanRecord(str(data["listing"]), files, skipped)


def _read(path: Path, listing: str | None = None) -> tuple[str, CachedImages] | None:
    """(key, images) of the cache file at `path`; with `listing`, only if its scan record
    was made for that listing. None for a missing or unreadable file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if listing is not None and ("listing" not in data.files or str(data["listing"]) != listing):
                return None
            key = str(data["key"])
            cached = CachedImages(np.asarray(data["images"], dtype=np.float32),
                                  [str(r) for r in data["reasons"]], [int(n) for n in data["counts"]],
                                  _scan_record(data))
    except (OSError, ValueError, KeyError):
        return None
    return key, cached


def load_cached(state_dir: str | os.PathLike[str], key: str, count: int) -> CachedImages | None:
    """The cache for `key` if present and whole (for `count` scanned files); else None."""
    path = _cache_path(state_dir, key)
    if not path.is_file():
        return None
    found = _read(path)
    if found is None or found[0] != key or not _whole(found[1], count):
        return None
    return found[1]


def load_listed(state_dir: str | os.PathLike[str], listing: str, classes: Sequence[str],
                settings: ImageSettings) -> CachedImages | None:
    """The cache whose scan record was made for `listing` (see `listing_key`), if whole
    and its record matches its images; else None. Reads no file of the site's folder."""
    folder = Path(state_dir) / CACHE_DIR
    for path in sorted(folder.glob(f"{_PREFIX}*.npz")) if folder.is_dir() else ():
        found = _read(path, listing)
        if found is None:
            continue
        key, cached = found
        scan = cached.scan
        if scan is not None and key == cache_key(scan.files, classes, settings) and _whole(cached, len(scan.files)):
            return cached
    return None


def save_cached(state_dir: str | os.PathLike[str], key: str, cached: CachedImages) -> Path:
    """Write the cache for `key` atomically, then drop caches of earlier data states."""
    path = _cache_path(state_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    record = {}
    if cached.scan is not None:
        files, skipped = cached.scan.files, cached.scan.skipped
        record = {
            "listing": np.array(cached.scan.listing),
            "file_relpath": np.array([f.relpath for f in files], dtype=str),
            "file_size": np.array([f.size for f in files], dtype=np.int64),
            "file_mtime_ns": np.array([f.mtime_ns for f in files], dtype=np.int64),
            "file_sop_uid": np.array([f.sop_uid for f in files], dtype=str),
            "file_patient": np.array([f.patient for f in files], dtype=str),
            "file_label": np.array([f.label for f in files], dtype=np.int64),
            "file_modality": np.array([f.modality for f in files], dtype=str),
            "skip_where": np.array([where for where, _ in skipped], dtype=str),
            "skip_reason": np.array([reason for _, reason in skipped], dtype=str),
        }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        np.savez(
            f,
            key=np.array(key),
            images=np.asarray(cached.images, dtype=np.float32),
            reasons=np.array(cached.reasons, dtype=str),
            counts=np.array(cached.counts, dtype=np.int64),
            **record,
        )
    os.replace(tmp, path)
    for old in path.parent.glob(f"{_PREFIX}*.npz"):
        if old != path:
            old.unlink(missing_ok=True)
    return path
