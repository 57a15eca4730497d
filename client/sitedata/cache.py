"""The site's cache of preprocessed images, in `<state_dir>/cache/`.

Decoding a site's DICOM files is the slow part of a load; the result is kept in one
`.npz` per data state, named by a hash of everything the arrays depend on: each file's
relative path, size, modification time, SOPInstanceUID and label, the class list, the
image settings and the pipeline version. Touching, adding, removing or relabelling a file,
or changing a setting, gives a new key and a fresh decode; the previous cache file is
then removed. The cache holds patients' images, so it is written readable by its owner
only and never leaves the site.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmed.client.imaging import PIPELINE_VERSION
from fedmed.common.settings import ImageSettings

from .scan import SiteFile

__all__ = ["CachedImages", "cache_key", "load_cached", "save_cached"]

CACHE_DIR = "cache"
_PREFIX = "site-images-"
_FORMAT = 2


@dataclass
class CachedImages:
    """Preprocessed images of a scan's files, in scan order.

    images: float32 (M, 1, S, S) for the files whose reason is "", each file's images
        together in file order.
    reasons: one per scanned file: "" when decoded, else why it was unusable.
    counts: one per scanned file: how many images it gave (0 when unusable; more than
        one for a multi-frame file under the "all" frame policy).
    """

    images: np.ndarray
    reasons: list[str]
    counts: list[int]

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


def _cache_path(state_dir: str | os.PathLike[str], key: str) -> Path:
    return Path(state_dir) / CACHE_DIR / f"{_PREFIX}{key[:32]}.npz"


def load_cached(state_dir: str | os.PathLike[str], key: str, count: int) -> CachedImages | None:
    """The cache for `key` if present and whole (for `count` scanned files); else None."""
    path = _cache_path(state_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            images = np.asarray(data["images"], dtype=np.float32)
            reasons = [str(r) for r in data["reasons"]]
            counts = [int(n) for n in data["counts"]]
    except (OSError, ValueError, KeyError):
        # A cache cut short by a crash is rebuilt, not trusted.
        return None
    if len(reasons) != count or len(counts) != count or images.shape[0] != sum(counts):
        return None
    if any((n > 0) == bool(r) for n, r in zip(counts, reasons)):
        return None
    return CachedImages(images, reasons, counts)


def save_cached(state_dir: str | os.PathLike[str], key: str, cached: CachedImages) -> Path:
    """Write the cache for `key` atomically, then drop caches of earlier data states."""
    path = _cache_path(state_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        np.savez(
            f,
            key=np.array(key),
            images=np.asarray(cached.images, dtype=np.float32),
            reasons=np.array(cached.reasons, dtype=str),
            counts=np.array(cached.counts, dtype=np.int64),
        )
    os.replace(tmp, path)
    for old in path.parent.glob(f"{_PREFIX}*.npz"):
        if old != path:
            old.unlink(missing_ok=True)
    return path
