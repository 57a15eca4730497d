"""Section 5: how fast a site turns DICOM files into model inputs.

A site load (`load_dicom_site`) is: scan every file's header, look the data state up in
the site's cache (``<state>/cache/``), decode and preprocess what the cache lacks, split by
patient. Measured per folder:

- cold: an empty state folder, so every file is decoded, preprocessed and cached (the
  files themselves are in the OS page cache, having just been written: this is fedmed's
  cold cache, not a cold disk);
- cached: the same load again, which reads the headers and the cached arrays only.

Folders: the synthetic sites (site A: uncompressed Explicit VR, 128×128; B: RLE Lossless,
96×96; C: uncompressed Implicit VR, MONOCHROME1, 160×160), and the same files re-encoded
as JPEG 2000 Lossless with pydicom's encoder. No JPEG-LS encoder is installed, so JPEG-LS
(and more JPEG 2000) is measured on pydicom's bundled test files, one file at a time with
`load_image` (decode + preprocess, no site, no cache).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless

from fedmed.client.imaging import load_image, quiet_pydicom
from fedmed.client.sitedata import load_dicom_site
from fedmed.common.settings import DEFAULT_CLASSES, ImageSettings
from fedmed.simulations.synthetic_dicom import write_sites

SITES = ("A", "B", "C")
SETTINGS = ImageSettings()  # fedmed's default model input, 64×64
FULL = {"images_per_site": 120, "repeats": 20}
SMOKE = {"images_per_site": 12, "repeats": 3}
# Greyscale single-frame test files that ship with pydicom (no download needed).
TEST_FILES = (
    ("MR_small_jp2klossless.dcm", "JPEG 2000 Lossless"),
    ("693_J2KI.dcm", "JPEG 2000"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless"),
    ("JPEGLSNearLossless_16.dcm", "JPEG-LS Near-Lossless"),
)


def _log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def _reencode(src: Path, dst: Path) -> int:
    """Copy a site folder with every DICOM file re-encoded as JPEG 2000 Lossless."""
    count = 0
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "labels.csv":
            shutil.copy2(path, target)
            continue
        ds = dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:  # the RLE site
            ds.decompress(generate_instance_uid=False)
        # Keep the SOP Instance UID: labels.csv is keyed by it.
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        ds.save_as(target, enforce_file_format=True)
        count += 1
    return count


def _site_load(folder: Path, state: Path) -> tuple[float, int]:
    started = time.perf_counter()
    data = load_dicom_site(folder, state, SETTINGS, DEFAULT_CLASSES)
    return time.perf_counter() - started, len(data.train_y) + len(data.val_y)


def _describe(folder: Path) -> dict[str, Any]:
    first = next(p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "labels.csv")
    ds = dcmread(first, stop_before_pixels=True)
    return {"transfer_syntax": ds.file_meta.TransferSyntaxUID.name, "matrix": f"{ds.Rows}×{ds.Columns}",
            "bits_stored": int(ds.BitsStored)}


def run(work: Path, smoke: bool) -> dict[str, Any]:
    size = SMOKE if smoke else FULL
    synthetic = work / "synthetic"
    _log(f"writing {len(SITES)} synthetic sites × {size['images_per_site']} images")
    write_sites(synthetic, SITES, images_per_site=size["images_per_site"], seed=0)
    folders = [(f"synthetic {s}", synthetic / s) for s in SITES]
    with quiet_pydicom():
        for s in SITES:
            _reencode(synthetic / s, work / "j2k" / s)
    folders += [(f"synthetic {s}, re-encoded", work / "j2k" / s) for s in SITES]

    rows = []
    for label, folder in folders:
        state = work / "state" / folder.parent.name / folder.name
        cold, images = _site_load(folder, state)
        cached, _ = _site_load(folder, state)
        rows.append({"source": label, **_describe(folder), "images": images,
                     "cold_s": cold, "cached_s": cached,
                     "cold_images_per_s": images / cold, "cached_images_per_s": images / cached})
        _log(f"{label}: {images / cold:.0f} images/s cold, {images / cached:.0f} cached")

    files = []
    for name, kind in TEST_FILES:
        path = Path(get_testdata_file(name))
        with quiet_pydicom():
            ds = dcmread(path, stop_before_pixels=True)
            load_image(path, SETTINGS)  # first call imports the decoder plugin
            started = time.perf_counter()
            for _ in range(size["repeats"]):
                load_image(path, SETTINGS)
            seconds = (time.perf_counter() - started) / size["repeats"]
        files.append({"file": name, "kind": kind, "transfer_syntax": ds.file_meta.TransferSyntaxUID.name,
                      "matrix": f"{ds.Rows}×{ds.Columns}", "bits_stored": int(ds.BitsStored),
                      "ms_per_image": seconds * 1000, "images_per_s": 1 / seconds})
        _log(f"{name}: {1 / seconds:.0f} images/s")
    return {"settings": SETTINGS.to_dict(), "size": size, "rows": rows, "test_files": files}
