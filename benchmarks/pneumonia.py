"""PneumoniaMNIST, the real data set behind the utility and scale benchmarks.

The file is not part of the repository: it lives beside it, at
``../shared/data/pneumoniamnist.npz`` relative to the repository root. Its provenance,
licence and split sizes are in that folder's README.
"""

from __future__ import annotations

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
    """The data set's path, or None when this checkout has no shared data beside it."""
    return NPZ if NPZ.is_file() else None


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
