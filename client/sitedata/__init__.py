"""A site's training data: DICOM folders (or MedMNIST arrays) as preprocessed, labelled,
patient-split arrays.

- `scan`: the header-only pass over a site folder and its two layouts.
- `labels`: labels.csv and class-folder names against the class list.
- `split`: the seeded train/validation split by patient.
- `cache`: preprocessed images kept in the site's state folder.
- `site`: `load_dicom_site` and `SiteData`.
- `medmnist`: `read_medmnist` and `load_npz_arrays`.
- `report`: `SkipReport`, what was left out and why.
"""

from .medmnist import load_npz_arrays, read_medmnist
from .report import SkipReport
from .scan import SiteFile, scan_site
from .site import SiteData, data_fingerprint, load_dicom_site
from .split import split_by_patient

__all__ = [
    "SiteData",
    "SiteFile",
    "SkipReport",
    "load_dicom_site",
    "load_npz_arrays",
    "read_medmnist",
    "scan_site",
    "split_by_patient",
    "data_fingerprint",
]
