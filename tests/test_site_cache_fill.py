"""A site's executor builds its data set from the image cache alone while the site's
folder is unchanged, and has a short-lived child scan and decode it when it changed
(`fedmed.client.sitedata.fill`): the same arrays, split, skip report and fingerprints as
`load_dicom_site`, bad files reported and skipped as there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

import fedmed.client.sitedata.fill as fill
from fedmed.client.sitedata import load_dicom_site
from fedmed.client.sitedata.cache import CACHE_DIR, load_cached, save_cached
from fedmed.common.settings import DEFAULT_CLASSES, ImageSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import write_ct, write_labels_csv, write_random_bytes  # noqa: E402

CLASSES = DEFAULT_CLASSES
SETTINGS = ImageSettings(size=16, window=(200.0, 400.0), mean=0.5, std=0.5)
CORRUPT = "corrupt JPEG Baseline (Process 1) pixel data"


def write_site(root: Path) -> list:
    """Four patients of two images, a file that is no DICOM (left out by the scan) and
    one whose pixels cannot be decoded (left out by the decode), with labels.csv."""
    written = []
    for patient, label in [(1, "normal"), (2, "abnormal"), (3, "normal"), (4, "abnormal")]:
        for image in range(2):
            written.append(write_ct(root / f"pat{patient}" / f"img{image}.dcm",
                                    np.full((20, 24), 1024 + 40 * patient + image), patient_id=f"P{patient}",
                                    label=label))
    bad = write_ct(root / "pat5" / "bad.dcm", np.zeros((16, 16)), patient_id="P5", label="abnormal")
    ds = pydicom.dcmread(bad.path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(100) + b"\xff\xd9"])
    ds.save_as(bad.path, enforce_file_format=True)
    write_random_bytes(root / "pat5" / "notes.dcm")
    write_labels_csv(root, written + [bad])
    return written


def assert_same(a, b) -> None:
    for name in ("train_x", "train_y", "val_x", "val_y", "train_patients"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.classes == b.classes and a.num_patients == b.num_patients
    assert a.skipped.counts == b.skipped.counts and a.skipped.files == b.skipped.files
    assert (a.fingerprint, a.patient_fingerprint) == (b.fingerprint, b.patient_fingerprint)


@pytest.fixture
def children(monkeypatch) -> list[str]:
    """The folders a child was started for."""
    started: list[str] = []
    real = fill.fill_in_child

    def counting(data_dir, *args):
        started.append(Path(data_dir).name)
        return real(data_dir, *args)

    monkeypatch.setattr(fill, "fill_in_child", counting)
    return started


def test_child_fills_the_cache_once_and_bad_files_are_skipped(tmp_path, children):
    data, state = tmp_path / "site", tmp_path / "state"
    written = write_site(data)
    first = fill.load_site(data, state, SETTINGS, CLASSES, val_fraction=0.25, seed=3)
    assert children == ["site"]
    assert first.skipped.counts == {"not a DICOM file": 1, CORRUPT: 1}
    assert sorted(where for where, _ in first.skipped.files) == ["pat5/bad.dcm", "pat5/notes.dcm"]
    assert_same(first, load_dicom_site(data, tmp_path / "elsewhere", SETTINGS, CLASSES, val_fraction=0.25, seed=3))
    cache_files = list((state / CACHE_DIR).glob("*.npz"))
    assert len(cache_files) == 1 and (cache_files[0].stat().st_mode & 0o077) == 0

    # Unchanged folder: the cache alone, no child; another split is worked out from it.
    assert_same(fill.load_site(data, state, SETTINGS, CLASSES, val_fraction=0.25, seed=3), first)
    fill.load_site(data, state, SETTINGS, CLASSES, val_fraction=0.5, seed=1)
    assert children == ["site"]

    # A rewritten file (new modification time), a relabelled one, other settings: a child again.
    stat = written[0].path.stat()
    os.utime(written[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fill.load_site(data, state, SETTINGS, CLASSES)
    write_labels_csv(data, written[1:])
    relabelled = fill.load_site(data, state, SETTINGS, CLASSES)
    assert relabelled.skipped.counts == {"not a DICOM file": 1, "no label": 2}
    fill.load_site(data, state, ImageSettings(size=8), CLASSES)
    assert children == ["site"] * 4


def test_a_load_in_process_leaves_the_cache_warm_for_the_executor(tmp_path, children):
    """`fedmed evaluate`, `pretrain` and the simulation's tools load in-process; the cache
    they write holds its scan, so the executor's next load needs no child."""
    data, state = tmp_path / "site", tmp_path / "state"
    write_site(data)
    expected = load_dicom_site(data, state, SETTINGS, CLASSES)
    assert_same(fill.load_site(data, state, SETTINGS, CLASSES), expected)
    assert children == []


def test_a_cache_without_its_scan_is_completed_by_one_child(tmp_path, children):
    """A cache written before caches kept their scan: the child scans, finds the images
    cached (no decode) and adds the scan."""
    data, state = tmp_path / "site", tmp_path / "state"
    write_site(data)
    expected = load_dicom_site(data, state, SETTINGS, CLASSES)
    (path,) = (state / CACHE_DIR).glob("*.npz")
    key = str(np.load(path)["key"])
    old = load_cached(state, key, 9)
    old.scan = None
    save_cached(state, key, old)
    assert fill.load_cached_site(data, state, SETTINGS, CLASSES) is None
    assert_same(fill.load_site(data, state, SETTINGS, CLASSES), expected)
    assert_same(fill.load_site(data, state, SETTINGS, CLASSES), expected)
    assert children == ["site"]


def test_a_folder_the_load_refuses_is_refused_with_the_same_words(tmp_path):
    data = tmp_path / "site"
    write_random_bytes(data / "scans" / "x.dcm")
    with pytest.raises(ValueError) as in_process:
        load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES)
    with pytest.raises(ValueError) as via_child:
        fill.load_site(data, tmp_path / "state", SETTINGS, CLASSES)
    assert str(via_child.value) == str(in_process.value) and "no labels" in str(via_child.value)

    # Labelled, but no usable image: the child fills the cache, the executor's assembly refuses.
    write_random_bytes(data / "normal" / "y.dcm")
    with pytest.raises(ValueError, match="no usable labelled image.*not a DICOM file: 2"):
        fill.load_site(data, tmp_path / "state", SETTINGS, CLASSES)


def test_another_failure_in_the_child_is_named_by_its_type_only(tmp_path, capfd):
    """An OS error may quote a path: the child prints its type and where it arose, and the
    executor's error (a SafeError, shown at the site) names no file."""
    data, state = tmp_path / "site-of-patient-x", tmp_path / "state"
    write_site(data)
    state.write_text("a file where the state folder should be\n")
    with pytest.raises(fill.CacheFillError) as failed:
        fill.load_site(data, state, SETTINGS, CLASSES)
    assert "NotADirectoryError" in str(failed.value) and "patient-x" not in str(failed.value)
    printed = capfd.readouterr().err
    assert "NotADirectoryError at" in printed and "cache.py" in printed and "patient-x" not in printed
