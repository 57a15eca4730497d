"""A site's DICOM data as training and validation arrays.

`load_dicom_site` = `fill_cache` (`scan_site`, headers only -> cache lookup -> decode and
preprocess what the cache lacks) -> `assemble_site` (patient-level split). It never stops
at a bad file: every file left out is counted in the returned `SkipReport` with its
reason. A site's executor runs `fill_cache` in a child instead (`fill.load_site`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedmed.client.imaging import UnusableImage, load_images
from fedmed.common.settings import ImageSettings

from .cache import CachedImages, ScanRecord, cache_key, listing_key, load_cached, save_cached
from .dataset import OTHER_MODALITY, SiteData, assemble_site, data_fingerprint, patient_fingerprint
from .files import SiteFile
from .labels import check_classes
from .report import SkipReport
from .scan import scan_site
from .split import check_val_fraction

__all__ = ["OTHER_MODALITY", "SiteData", "data_fingerprint", "fill_cache", "load_dicom_site", "patient_fingerprint"]


def load_dicom_site(
    data_dir: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    settings: ImageSettings,
    classes: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> SiteData:
    """Load a site folder (see `fedmed.client.sitedata.scan` for its layouts).

    state_dir: the site's private state folder; preprocessed images are cached in
        `<state_dir>/cache/`, so a second load of unchanged data decodes nothing.
    progress: called as progress(done, total) while images are decoded.

    Same files, labels, settings and seed give identical arrays and split. Raises
    ValueError for a folder without labels, a malformed labels.csv, or no usable image.
    """
    classes = tuple(classes)
    check_val_fraction(val_fraction)  # before the scan, which a bad value would waste
    files, skipped, cached = fill_cache(data_dir, state_dir, settings, classes, progress)
    return assemble_site(Path(data_dir), files, skipped, cached, settings, classes, val_fraction, seed)


def fill_cache(
    data_dir: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    settings: ImageSettings,
    classes: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[SiteFile], SkipReport, CachedImages]:
    """Scan the folder, and decode and cache what the cache lacks: (the usable labelled
    files, what the scan skipped, their cached images). The cache is written with its
    scan record (`ScanRecord`), so that a later load of the unchanged folder needs no
    scan (`fill.load_cached_site`).

    Raises ValueError for a folder without labels or a malformed labels.csv.
    """
    classes = tuple(classes)
    check_classes(classes)
    root = Path(data_dir)
    # Before the scan: a file changed while it is read then leaves a record no later
    # listing matches.
    listing = listing_key(root, classes, settings, exclude=[state_dir])
    files, skipped = scan_site(root, classes, exclude=[state_dir])
    scan = ScanRecord(listing, files, list(skipped.files))

    key = cache_key(files, classes, settings)
    cached = load_cached(state_dir, key, len(files))
    if cached is None:
        cached = _decode_all(root, files, settings, progress)
        cached.scan = scan
        save_cached(state_dir, key, cached)
    else:
        if progress is not None:
            progress(len(files), len(files))
        if cached.scan != scan:  # the same images, found by another scan (or none kept)
            cached.scan = scan
            save_cached(state_dir, key, cached)
    return files, skipped, cached


def _decode_all(
    root: Path,
    files: Sequence[SiteFile],
    settings: ImageSettings,
    progress: Callable[[int, int], None] | None,
) -> CachedImages:
    decoded: list[np.ndarray] = []
    reasons: list[str] = []
    counts: list[int] = []
    for done, f in enumerate(files, start=1):
        try:
            x, _ = load_images(root / f.relpath, settings)
        except UnusableImage as e:
            reasons.append(e.reason)
            counts.append(0)
        except OSError:
            reasons.append("unreadable file")
            counts.append(0)
        else:
            decoded.append(x)
            reasons.append("")
            counts.append(len(x))
        if progress is not None:
            progress(done, len(files))
    if decoded:
        images = np.concatenate(decoded)[:, None]
    else:
        images = np.empty((0, 1, settings.size, settings.size), dtype=np.float32)
    return CachedImages(np.ascontiguousarray(images, dtype=np.float32), reasons, counts)
