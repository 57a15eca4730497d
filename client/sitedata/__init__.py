"""A site's training data: DICOM folders (or MedMNIST arrays) as preprocessed, labelled,
patient-split arrays.

- `scan`: the header-only pass over a site folder and its two layouts.
- `files`: the folder's file list and `SiteFile`, read without opening a file.
- `labels`: labels.csv and class-folder names against the class list.
- `split`: the seeded train/validation split by patient.
- `cache`: preprocessed images kept in the site's state folder, with their scan.
- `dataset`: `SiteData`, assembled from a scan and its cached images.
- `site`: `load_dicom_site` (scan, decode what the cache lacks, assemble).
- `fill`: `load_site`, the executor's load: the cache alone, or a child fills it first.
- `medmnist`: `read_medmnist` and `load_npz_arrays`.
- `report`: `SkipReport`, what was left out and why.

The names below are loaded on first use, so that `SiteData` and the cache's readers come
without pydicom (see `fill`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedmed.common.lazy_names import lazy_names

_HOMES = {
    "SiteData": "dataset",
    "SiteFile": "files",
    "SkipReport": "report",
    "data_fingerprint": "dataset",
    "load_dicom_site": "site",
    "load_npz_arrays": "medmnist",
    "load_site": "fill",
    "read_medmnist": "medmnist",
    "scan_site": "scan",
    "split_by_patient": "split",
}

__all__ = sorted(_HOMES)

if TYPE_CHECKING:
    from .dataset import SiteData, data_fingerprint
    from .files import SiteFile
    from .fill import load_site
    from .medmnist import load_npz_arrays, read_medmnist
    from .report import SkipReport
    from .scan import scan_site
    from .site import load_dicom_site
    from .split import split_by_patient


__getattr__ = lazy_names(__name__, _HOMES, globals())
