"""PneumoniaMNIST, the real data set behind the utility and scale benchmarks.

The file is not part of the repository: it lives beside it, at
``../shared/data/pneumoniamnist.npz`` relative to the repository root. Its provenance,
licence and split sizes are in that folder's README.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedmed.client.sitedata import load_npz_arrays, read_medmnist
from fedmed.common.settings import ImageSettings

REPO = Path(__file__).resolve().parents[1]
NPZ = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"
# How documents name the file: relative to the repository root, never an absolute path.
NPZ_DISPLAY = "../shared/data/pneumoniamnist.npz"
SPLITS = ("train", "val", "test")


def locate() -> Path | None:
    """The data set's path, or None when this checkout has no shared data beside it
    (a checkout elsewhere can name the folder holding it in $FEDMED_SHARED_DATA)."""
    override = os.environ.get("FEDMED_SHARED_DATA")
    path = Path(override) / NPZ.name if override else NPZ
    return path if path.is_file() else None


def skipped(section: str) -> dict:
    """What a section that needs the data set returns when `locate` found none."""
    return {"skipped": f"{NPZ_DISPLAY} is not present next to the repository; "
                       f"the {section} section needs it", "rows": []}


def split_sizes(npz: Path) -> dict[str, dict[str, int]]:
    """{split: {"images": N, "positive": n1}} as found in the file."""
    return {split: {"images": int(len(y)), "positive": int(np.sum(y == 1))}
            for split, (_, y) in read_medmnist(npz).items()}


def _stratified(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` indices keeping the class proportions of `labels` (at least one per class)."""
    if count >= len(labels):
        return np.arange(len(labels))
    picked = []
    classes = np.unique(labels)
    for c in classes:
        members = np.flatnonzero(labels == c)
        share = max(1, int(round(count * len(members) / len(labels))))
        picked.append(rng.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def write_subset(src: Path, dst: Path, sizes: dict[str, int | None], seed: int) -> Path:
    """A smaller copy of `src` with `sizes[split]` images per split (None keeps the split).

    Smoke runs and the scale benchmark need a known, small amount of data per site; a
    stratified subset keeps the file's class balance, so a subset behaves like the whole.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, (x, y) in read_medmnist(src).items():
        n = sizes.get(split)
        keep = np.arange(len(y)) if n is None else _stratified(y, int(n), rng)
        arrays[f"{split}_images"] = x[keep]
        arrays[f"{split}_labels"] = y[keep].reshape(-1, 1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst, **arrays)
    return dst


def model_inputs(npz: Path, split: str, settings: ImageSettings) -> tuple[np.ndarray, np.ndarray]:
    """One split as model inputs, preprocessed exactly as a site preprocesses its arrays."""
    x, y = read_medmnist(npz)[split]
    return load_npz_arrays(x, y, settings), y


def write_dicom_sites(npz: Path, out: Path, sites: tuple[str, ...], per_site: int, seed: int,
                      classes: tuple[str, str] = ("normal", "abnormal")) -> Path:
    """Disjoint, stratified slices of the train split as DICOM site folders (one 28×28
    secondary-capture file per image, each its own patient, and labels.csv), so that a
    deployment's `fedmed client` and a simulation read the same real images."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    x, y = read_medmnist(npz)["train"]
    y = np.asarray(y).reshape(-1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    if per_site * len(sites) > len(order):
        raise ValueError(f"{npz}: {len(order)} training images, {per_site} × {len(sites)} sites asked for")
    for s, site in enumerate(sites):
        site_dir = Path(out) / site
        site_dir.mkdir(parents=True, exist_ok=True)
        rows = ["SOPInstanceUID,label"]
        for i, index in enumerate(order[s * per_site:(s + 1) * per_site]):
            uid = generate_uid(entropy_srcs=[str(seed), site, str(i)])
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
            meta.MediaStorageSOPInstanceUID = uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
            ds.PatientID, ds.Modality = f"{site}-{i:05d}", "OT"
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), site, str(i), "study"])
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), site, str(i), "series"])
            img = np.ascontiguousarray(x[index], dtype=np.uint8)
            ds.Rows, ds.Columns = img.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = img.tobytes()
            ds.save_as(site_dir / f"{i:05d}.dcm", enforce_file_format=True)
            rows.append(f"{uid},{classes[int(y[index])]}")
        (site_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    return Path(out)
