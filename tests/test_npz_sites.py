"""`npz_sites`: val images kept back from every site leave the partition itself unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmed.client.sitedata import load_npz_arrays, read_medmnist
from fedmed.common.federation import FederationConfig
from fedmed.common.settings import ImageSettings
from fedmed.simulations.sites import npz_sites


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 60), ("val", 40), ("test", 10)):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def _records(npz: Path, sites, config) -> list[tuple[list[int], list[int]]]:
    """Which records of the file each site holds, found by matching its model inputs."""
    splits = read_medmnist(npz)
    every = {name: load_npz_arrays(*splits[name], config.image) for name in ("train", "val")}

    def ids(x, name):
        return sorted(int(np.flatnonzero((every[name] == row).all(axis=(1, 2, 3)))[0]) for row in x)

    out = []
    for site in sites:
        data = site.load_data(config)
        out.append((ids(data.train_x, "train"), ids(data.val_x, "val")))
    return out


def test_kept_back_val_images_leave_training_parts_unchanged(tmp_path: Path):
    npz = _npz(tmp_path / "d.npz")
    config = FederationConfig(image=ImageSettings(size=8))
    kept = np.arange(0, 40, 2)
    plain = _records(npz, npz_sites(npz, 3, "dirichlet:0.5", 1, tmp_path / "s1"), config)
    held = _records(npz, npz_sites(npz, 3, "dirichlet:0.5", 1, tmp_path / "s2", kept_back_val=kept), config)
    for (train_a, val_a), (train_b, val_b) in zip(plain, held):
        assert train_a == train_b
        assert val_b == [v for v in val_a if v not in set(kept.tolist())]
    assert sum(len(v) for _, v in held) == 20
