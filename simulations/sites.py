"""The sites of a simulation: one DICOM folder each, or partitions of a MedMNIST file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.client.site import Site, dicom_site
from fedmed.common.federation import FederationConfig
from fedmed.simulations.partition import partition_indices


def dicom_sites(data_root: Path, state_root: Path, privacy: PrivacyPolicy = PrivacyPolicy()) -> list[Site]:
    """One site per sub-folder of `data_root` (as `fedmed data synth` writes them)."""
    return [dicom_site(p.name, p, Path(state_root) / p.name, privacy) for p in _site_folders(data_root)]


def _site_folders(data_root: Path) -> list[Path]:
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise ValueError(f"--data {data_root}: expected a folder with one sub-folder per site")
    folders = sorted(p for p in data_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"--data {data_root}: no site sub-folders found; "
                         "write some with `fedmed data synth --out DIR`")
    return folders


def check_dicom_sites(data_root: Path, classes: tuple[str, ...]) -> None:
    """Check each DICOM site's folder before the run (`fedmed data check`'s header-only
    part): a site that cannot train is a ValueError naming the site, its folder and the
    fix, instead of a `train-error` from every site at round 1."""
    from fedmed.client.datacheck import preflight

    problems = []
    for folder in _site_folders(data_root):
        found = preflight(folder, classes)
        if found.problems:
            problems.append(f"site {folder.name}: {found.problems[0]}")
        elif not found.files:
            problems.append(f"site {folder.name}: {folder}: no usable labelled image; "
                            f"run `fedmed data check {folder}`")
    if problems:
        raise ValueError("\n".join(problems))


def _npz_site_loader(npz_path: Path, train_idx: np.ndarray, val_idx: np.ndarray):
    def load(config: FederationConfig):
        import hashlib

        from fedmed.client.sitedata import SiteData, SkipReport, load_npz_arrays, read_medmnist

        splits = read_medmnist(npz_path)
        tx, ty = splits["train"]
        vx, vy = splits["val"]
        # The site's data set: which records of which file it holds, whatever the run's settings.
        fingerprint = hashlib.sha256(
            Path(npz_path).name.encode() + np.asarray(train_idx).tobytes() + b"|" + np.asarray(val_idx).tobytes()
        ).hexdigest()
        return SiteData(
            classes=tuple(config.classes),
            train_x=load_npz_arrays(tx[train_idx], ty[train_idx], config.image),
            train_y=ty[train_idx].astype(np.int64),
            val_x=load_npz_arrays(vx[val_idx], vy[val_idx], config.image),
            val_y=vy[val_idx].astype(np.int64),
            num_patients={"train": len(train_idx), "val": len(val_idx)},
            skipped=SkipReport(counts={}, files=[]),
            fingerprint=fingerprint,
        )

    return load


def npz_sites(npz_path: Path, num_sites: int, partition: str, seed: int, state_root: Path,
              privacy: PrivacyPolicy = PrivacyPolicy(), kept_back_val: np.ndarray | None = None) -> list[Site]:
    """`num_sites` sites holding disjoint parts of the file's train and val splits.

    Train and val are partitioned with the same scheme, so a site's held-out split looks
    like its training split (as a hospital's own validation data would).
    kept_back_val: indices of the val split that no site holds (kept back for another use,
    such as pretraining a starting model); the partition itself, and so every site's
    training part, is the same with or without them.
    """
    from fedmed.client.sitedata import read_medmnist

    splits = read_medmnist(Path(npz_path))
    n_train = len(splits["train"][1])
    # One partition over train and val together, split back afterwards: a site's val
    # then has the same label mix as its train part, which separate draws would not give.
    labels = np.concatenate([splits["train"][1], splits["val"][1]])
    parts = partition_indices(labels, num_sites, partition, seed)
    train_parts = [p[p < n_train] for p in parts]
    val_parts = [p[p >= n_train] - n_train for p in parts]
    if kept_back_val is not None:
        val_parts = [v[~np.isin(v, kept_back_val)] for v in val_parts]
    return [
        Site(name=f"site{i}", state_dir=Path(state_root) / f"site{i}",
             load_data=_npz_site_loader(Path(npz_path).resolve(), train_parts[i], val_parts[i]),
             privacy=privacy)
        for i in range(num_sites)
    ]
