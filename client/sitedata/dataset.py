"""A site's data set as the ClientApp uses it: `SiteData`, and how a scan's files and
their cached images become one (`assemble_site`: skip reasons, the run's modalities, the
patient-level split). It reads no file, so a site's executor builds its `SiteData` from
the image cache without loading pydicom (`fedmed.client.sitedata.fill`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmed.common.settings import ImageSettings

from .cache import CachedImages
from .files import SiteFile
from .report import SkipReport
from .split import split_by_patient

__all__ = ["OTHER_MODALITY", "SiteData", "assemble_site", "data_fingerprint", "patient_fingerprint"]

OTHER_MODALITY = "modality not in the run's list"


@dataclass
class SiteData:
    """A site's preprocessed images, split by patient. Stays at the site.

    fingerprint: sha256 hex identifying the site's data set (see `data_fingerprint`),
        for the site's privacy ledger.
    train_patients: the patient of each training image (stays at the site), for
        per-patient DP; None where the data has no patients.
    patient_fingerprint: sha256 hex over the site's patients (`patient_fingerprint`), the
        ledger's data set when the privacy unit is the patient.
    """

    classes: tuple[str, ...]
    train_x: np.ndarray  # float32 (N, 1, S, S)
    train_y: np.ndarray  # int64 (N,)
    val_x: np.ndarray
    val_y: np.ndarray
    num_patients: dict[str, int]  # {"train": .., "val": ..}
    skipped: SkipReport
    fingerprint: str
    train_patients: np.ndarray | None = None
    patient_fingerprint: str | None = None


def assemble_site(
    root: Path,
    files: Sequence[SiteFile],
    skipped: SkipReport,
    cached: CachedImages,
    settings: ImageSettings,
    classes: tuple[str, ...],
    val_fraction: float,
    seed: int,
) -> SiteData:
    """`SiteData` from a scan (`files`, in scan order, and what it `skipped`) and the
    cached images of those files. Adds each unusable file's reason and each image of a
    modality the run leaves out to `skipped`. Raises ValueError, naming `root`, when no
    usable labelled image is left.
    """
    usable = [f for f, reason in zip(files, cached.reasons) if not reason]
    for f, reason in zip(files, cached.reasons):
        if reason:
            skipped.add(f.relpath, reason)
    if not usable:
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.counts.items()))
        raise ValueError(f"{root}: no usable labelled image (skipped: {counts or 'none'})")

    # The fingerprint names every usable image, before the run's modality list picks some:
    # a run's choice never makes the same images another data set with a fresh budget.
    fingerprint = data_fingerprint(usable)
    counts = list(cached.counts)
    if settings.modalities:
        for i, f in enumerate(files):
            if counts[i] and f.modality not in settings.modalities:
                skipped.add(f.relpath, OTHER_MODALITY)
                counts[i] = 0
        if not any(counts):
            raise ValueError(f"{root}: no labelled image of the run's modalities "
                             f"{', '.join(settings.modalities)} (skipped: {skipped.counts.get(OTHER_MODALITY, 0)} "
                             "of another modality)")
    # One entry per image: a multi-frame file under the "all" policy repeats its label and
    # its patient, so all its frames fall on the same side of the split.
    per_image = [f for f, n in zip(files, counts) for _ in range(n)]
    images = cached.images[np.repeat([c > 0 for c in counts], cached.counts)]
    labels = np.asarray([f.label for f in per_image], dtype=np.int64)
    train, val = split_by_patient([f.patient for f in per_image], val_fraction, seed)
    return SiteData(
        classes=classes,
        train_x=images[train],
        train_y=labels[train],
        val_x=images[val],
        val_y=labels[val],
        num_patients={
            "train": len({per_image[i].patient for i in train}),
            "val": len({per_image[i].patient for i in val}),
        },
        skipped=skipped,
        fingerprint=fingerprint,
        train_patients=np.asarray([per_image[i].patient for i in train], dtype=object),
        patient_fingerprint=patient_fingerprint(usable),
    )


def data_fingerprint(files: Sequence[SiteFile]) -> str:
    """sha256 hex over the sorted SOPInstanceUIDs of every usable image at the site, train
    and validation alike. It names the data set the privacy ledger is spent on, so it must
    not change with anything a run chooses: another seed or validation fraction moves
    images between the splits, another image size or label mapping changes how they are
    presented — none of that makes them other people's images, and none of it may reset
    a site's budget. Stays at the site."""
    uids = sorted(f.sop_uid for f in files)
    return hashlib.sha256(json.dumps(uids).encode()).hexdigest()


def patient_fingerprint(files: Sequence[SiteFile]) -> str:
    """sha256 hex over the sorted patients of every usable image at the site. With the
    patient as privacy unit the ledger is spent on patients: new images of the same
    patients leave it unchanged (their budget carries on), a new patient makes a new data
    set. Stays at the site."""
    patients = sorted({str(f.patient) for f in files})
    return hashlib.sha256(json.dumps(["patients", patients]).encode()).hexdigest()
