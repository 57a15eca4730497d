"""A site's dataset: scanning a DICOM folder, skipping bad files with counted reasons, the
patient-level split, the cache, and MedMNIST arrays."""

from __future__ import annotations

import shutil
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless, generate_uid

import fedmed.client.sitedata.site as site_module
from fedmed.client.sitedata import (
    SkipReport,
    load_dicom_site,
    load_npz_arrays,
    read_medmnist,
    scan_site,
    split_by_patient,
)
from fedmed.common.settings import DEFAULT_CLASSES, ImageSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import (  # noqa: E402
    write_ct,
    write_labels_csv,
    write_non_image,
    write_random_bytes,
    write_truncated,
)

CLASSES = DEFAULT_CLASSES  # ("normal", "abnormal")
# A configured window maps HU linearly onto [0, 1], so each image's value says whose it is.
SETTINGS = ImageSettings(size=16, window=(200.0, 400.0), mean=0.5, std=0.5)
PNEUMONIAMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "pneumoniamnist.npz"


def image_hu(patient: int, image: int) -> int:
    return 40 * patient + image


def patients_of(x: np.ndarray) -> set[int]:
    """Recover the patient number written by `write_patient` from preprocessed images."""
    hu = (x.reshape(len(x), -1).mean(axis=1) * SETTINGS.std + SETTINGS.mean) * 400.0
    return {int(round(h)) // 40 for h in hu}


def write_patient(folder: Path, patient: int, images: int, label, *, patient_id: str | None = None,
                  study_uid: str | None = None, **kwargs):
    """`images` files of one patient; every pixel holds HU 40*patient + image index."""
    written = []
    for j in range(images):
        pixels = np.full((20, 24), 1024 + image_hu(patient, j))
        written.append(write_ct(
            folder / f"pat{patient}" / f"img{j}.dcm", pixels,
            patient_id=f"P{patient}" if patient_id is None else patient_id or None,
            study_uid=study_uid, label=label, **kwargs,
        ))
    return written


def build_messy_site(root: Path):
    """Five patients (10 good images) plus one file for every way of being skipped."""
    good = []
    for patient, images, label in [(1, 3, "normal"), (2, 2, "abnormal"), (3, 2, 1),
                                   (4, 1, "Normal"), (5, 2, "abnormal")]:
        good += write_patient(root / "scans", patient, images, label)
    compressed = write_ct(root / "scans" / "pat5" / "rle.dcm", np.full((20, 24), 1024 + image_hu(5, 2)),
                          patient_id="P5", label="abnormal", compress=RLELossless)
    good.append(compressed)

    truncated_src = write_ct(root / "tmp.dcm", np.zeros((64, 64)), patient_id="P6", label="normal")
    write_truncated(truncated_src.path, root / "bad" / "truncated.dcm")
    truncated_src.path.unlink()
    sr = write_non_image(root / "bad" / "report.dcm", patient_id="P1")
    unlabelled = write_ct(root / "bad" / "unlabelled.dcm", np.zeros((8, 8)), patient_id="P7")
    wrong_class = write_ct(root / "bad" / "wrong.dcm", np.zeros((8, 8)), patient_id="P8", label="cat")
    shutil.copy(good[0].path, root / "scans" / "zz_copy_of_first.dcm")  # same SOPInstanceUID
    write_random_bytes(root / "bad" / "random.dcm")
    (root / "README").write_text("scans exported for the federation\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    # Rows for the truncated file and the report name existing files: only the files'
    # own reasons count. The row with a fresh UID matches no file.
    write_labels_csv(root, good + [truncated_src, wrong_class],
                     extra_rows=[(sr.sop_uid, "normal"), (generate_uid(), "normal")])
    return good, unlabelled


EXPECTED_SKIPS = {
    "not a DICOM file": 2,  # random bytes, README
    "truncated file": 1,
    "no pixel data": 1,
    "no label": 1,
    "label not in class list": 1,
    "duplicate SOPInstanceUID": 1,
    "label key matches no file": 1,
}


def test_messy_site_loads_with_every_skip_counted(tmp_path):
    data = tmp_path / "site"
    good, _ = build_messy_site(data)
    site = load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES, val_fraction=0.3, seed=0)
    assert site.classes == CLASSES
    assert site.skipped.counts == EXPECTED_SKIPS
    assert len(site.train_y) + len(site.val_y) == len(good) == 11
    assert site.train_x.dtype == np.float32 and site.train_x.shape[1:] == (1, 16, 16)
    assert site.train_y.dtype == np.int64 and set(site.train_y) | set(site.val_y) == {0, 1}
    where = dict(site.skipped.files)
    assert where["bad/truncated.dcm"] == "truncated file"
    assert where["bad/report.dcm"] == "no pixel data"
    assert where["bad/unlabelled.dcm"] == "no label"
    assert where["bad/wrong.dcm"] == "label not in class list"
    assert where["scans/zz_copy_of_first.dcm"] == "duplicate SOPInstanceUID"
    assert where["README"] == "not a DICOM file"
    assert [w for w, r in site.skipped.files if r == "label key matches no file"][0].startswith(
        "labels.csv row "
    )
    assert ".DS_Store" not in where and "labels.csv" not in where
    # Reasons leave the site as counts; they never hold a path, an ID or a UID.
    for reason in site.skipped.counts:
        assert "/" not in reason and "P1" not in reason and "1.2." not in reason


def test_split_keeps_each_patient_on_one_side_and_is_deterministic(tmp_path):
    data = tmp_path / "site"
    build_messy_site(data)
    a = load_dicom_site(data, tmp_path / "s1", SETTINGS, CLASSES, val_fraction=0.3, seed=3)
    b = load_dicom_site(data, tmp_path / "s2", SETTINGS, CLASSES, val_fraction=0.3, seed=3)
    train, val = patients_of(a.train_x), patients_of(a.val_x)
    assert train and val and not train & val
    assert train | val == {1, 2, 3, 4, 5}
    assert a.num_patients == {"train": len(train), "val": len(val)}
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    splits = {frozenset(patients_of(
        load_dicom_site(data, tmp_path / f"s{seed}", SETTINGS, CLASSES, val_fraction=0.3, seed=seed).val_x
    )) for seed in range(4, 10)}
    assert len(splits) > 1  # the seed matters


def test_single_patient_goes_to_training(tmp_path):
    data = tmp_path / "site"
    write_labels_csv(data, write_patient(data, 1, 3, "normal"))
    site = load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES)
    assert len(site.train_y) == 3 and site.val_x.shape == (0, 1, 16, 16) and len(site.val_y) == 0
    assert site.num_patients == {"train": 1, "val": 0}


def test_files_without_patient_id_are_their_own_patients(tmp_path):
    data = tmp_path / "site"
    shared_study = generate_uid()
    written = write_patient(data, 1, 2, "normal", patient_id="", study_uid=shared_study)  # one study
    written += write_patient(data, 2, 1, "abnormal", patient_id="")
    written += write_patient(data, 3, 1, "abnormal", patient_id="")
    write_labels_csv(data, written)
    files, _ = scan_site(data, CLASSES)
    keys = {f.relpath: f.patient for f in files}
    assert keys["pat1/img0.dcm"] == keys["pat1/img1.dcm"] == f"study:{shared_study}"
    assert len(set(keys.values())) == 3
    site = load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES, val_fraction=0.25)
    assert not patients_of(site.train_x) & patients_of(site.val_x)
    assert site.num_patients["train"] + site.num_patients["val"] == 3


def test_split_by_patient_unit():
    patients = [f"p{i // 3}" for i in range(60)]  # 20 patients of 3 images
    train, val = split_by_patient(patients, 0.2, seed=1)
    assert len(val) == 12 and sorted(np.concatenate([train, val]).tolist()) == list(range(60))
    assert not {patients[i] for i in train} & {patients[i] for i in val}
    again = split_by_patient(patients, 0.2, seed=1)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, split_by_patient(patients, 0.2, seed=2)[1])
    # The split does not depend on the order the images come in.
    reordered = patients[::-1]
    _, val_rev = split_by_patient(reordered, 0.2, seed=1)
    assert {reordered[i] for i in val_rev} == {patients[i] for i in val}
    assert len(split_by_patient(patients, 0.0, seed=1)[1]) == 0
    assert len(split_by_patient(["a", "b"], 0.2, seed=0)[1]) == 1  # both sides get a patient
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(patients, 1.0, seed=0)


def test_class_folder_layout(tmp_path):
    data = tmp_path / "site"
    write_patient(data / "normal", 1, 2, None)
    write_patient(data / "abnormal" / "deeper", 2, 2, None)
    write_patient(data / "Abnormal_old", 3, 1, None)
    write_ct(data / "loose.dcm", np.zeros((8, 8)), patient_id="P9")
    site = load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES, val_fraction=0.0)
    assert sorted(site.train_y.tolist()) == [0, 0, 1, 1]
    assert site.skipped.counts == {"folder name not in class list": 1, "no label": 1}


def test_labels_by_path_and_integer_labels(tmp_path):
    data = tmp_path / "site"
    written = write_patient(data, 1, 2, 0) + write_patient(data, 2, 2, 1)
    write_labels_csv(data, written, key="path", extra_rows=[("./pat9/none.dcm", "0")])
    files, report = scan_site(data, CLASSES)
    assert [(f.relpath, f.label) for f in files] == [
        ("pat1/img0.dcm", 0), ("pat1/img1.dcm", 0), ("pat2/img0.dcm", 1), ("pat2/img1.dcm", 1)
    ]
    assert report.counts == {"label key matches no file": 1}
    assert report.files == [("labels.csv row 6", "label key matches no file")]


def test_semicolon_labels_csv(tmp_path):
    data = tmp_path / "site"
    written = write_patient(data, 1, 1, "normal")
    (data / "labels.csv").write_text(f"\ufeffSOPInstanceUID;Label\n{written[0].sop_uid};normal\n\n")
    files, report = scan_site(data, CLASSES)
    assert [f.label for f in files] == [0] and report.counts == {}


def test_malformed_labels_csv_is_a_clear_error(tmp_path):
    data = tmp_path / "site"
    write_patient(data, 1, 1, "normal")
    (data / "labels.csv").write_text("uid,label\n1.2.3,normal\n")
    with pytest.raises(ValueError, match=r"labels\.csv: no key column: expected a 'SOPInstanceUID' or a 'path'"):
        load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES)
    (data / "labels.csv").write_text("SOPInstanceUID,diagnosis\n1.2.3,normal\n")
    with pytest.raises(ValueError, match=r"labels\.csv: no 'label' column"):
        load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES)


def test_folder_without_labels_is_a_clear_error(tmp_path):
    data = tmp_path / "site"
    write_patient(data, 1, 1, None)
    with pytest.raises(ValueError, match="no labels: expected a labels.csv or class-named folders"):
        load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES)


def test_no_usable_image_is_a_clear_error(tmp_path):
    data = tmp_path / "site"
    write_random_bytes(data / "normal" / "x.dcm")
    with pytest.raises(ValueError, match="no usable labelled image.*not a DICOM file: 1"):
        load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES)


def write_undecodable(path: Path, patient_id: str):
    w = write_ct(path, np.zeros((16, 16)), patient_id=patient_id, label="abnormal")
    ds = pydicom.dcmread(w.path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(100) + b"\xff\xd9"])
    ds.save_as(w.path, enforce_file_format=True)
    return w


def test_cache_second_load_decodes_nothing(tmp_path, monkeypatch):
    data, state = tmp_path / "site", tmp_path / "state"
    written = write_patient(data, 1, 2, "normal") + write_patient(data, 2, 2, "abnormal")
    written.append(write_undecodable(data / "pat3" / "bad.dcm", "P3"))
    write_labels_csv(data, written)

    decoded = []
    real_load_images = site_module.load_images

    def counting_load_images(path, settings):
        decoded.append(Path(path).name)
        return real_load_images(path, settings)

    monkeypatch.setattr(site_module, "load_images", counting_load_images)
    seen = []
    first = load_dicom_site(data, state, SETTINGS, CLASSES, progress=lambda d, t: seen.append((d, t)))
    assert len(decoded) == 5 and seen[-1] == (5, 5) and len(seen) == 5
    assert first.skipped.counts == {"corrupt JPEG Baseline (Process 1) pixel data": 1}
    cache_files = list((state / "cache").glob("*.npz"))
    assert len(cache_files) == 1 and (cache_files[0].stat().st_mode & 0o077) == 0

    decoded.clear()
    second = load_dicom_site(data, state, SETTINGS, CLASSES)
    assert decoded == []
    assert second.skipped.counts == first.skipped.counts
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert first.fingerprint == second.fingerprint

    # A relabelled file or other settings are new inputs: decoded afresh, old cache dropped.
    swapped = {"normal": "abnormal", "abnormal": "normal"}
    write_labels_csv(data, [replace(w, label=swapped[w.label]) for w in written])
    third = load_dicom_site(data, state, SETTINGS, CLASSES)
    assert len(decoded) == 5 and len(list((state / "cache").glob("*.npz"))) == 1
    assert third.fingerprint == first.fingerprint  # same images: the same privacy ledger
    decoded.clear()
    load_dicom_site(data, state, ImageSettings(size=8, window=(200.0, 400.0)), CLASSES)
    assert len(decoded) == 5


def test_state_folder_inside_the_data_folder_is_ignored(tmp_path):
    data = tmp_path / "site"
    write_labels_csv(data, write_patient(data, 1, 2, "normal") + write_patient(data, 2, 2, "abnormal"))
    first = load_dicom_site(data, data / "state", SETTINGS, CLASSES)
    second = load_dicom_site(data, data / "state", SETTINGS, CLASSES)
    assert first.skipped.counts == second.skipped.counts == {}


def test_fingerprint_names_the_data_set_not_the_runs_choices(tmp_path):
    data = tmp_path / "site"
    written = write_patient(data, 1, 2, "normal") + write_patient(data, 2, 2, "abnormal")
    write_labels_csv(data, written)
    a = load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES, val_fraction=0.5, seed=0)
    # Another image size, seed or split: the same images, so the same privacy ledger.
    b = load_dicom_site(data, tmp_path / "state", ImageSettings(size=8), CLASSES, val_fraction=0.3, seed=5)
    assert a.fingerprint == b.fingerprint
    # More images: another data set.
    write_labels_csv(data, written + write_patient(data, 3, 2, "abnormal"))
    c = load_dicom_site(data, tmp_path / "state", SETTINGS, CLASSES, val_fraction=0.5, seed=0)
    assert c.fingerprint != a.fingerprint


def test_skip_report_add():
    report = SkipReport()
    report.add("a.dcm", "no label")
    report.add("b.dcm", "no label")
    assert report.counts == {"no label": 2} and report.total == 2 and report.files[1] == ("b.dcm", "no label")


# --- MedMNIST --------------------------------------------------------------------------


def write_medmnist(path: Path, label_shape: str = "column", n=(5, 3, 2), **override) -> Path:
    rng = np.random.default_rng(0)
    fields = {}
    for split, count in zip(("train", "val", "test"), n):
        fields[f"{split}_images"] = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 2, size=count)
        fields[f"{split}_labels"] = labels[:, None] if label_shape == "column" else labels
    fields.update(override)
    fields = {k: v for k, v in fields.items() if v is not None}
    np.savez(path, **fields)
    return path


@pytest.mark.parametrize("label_shape", ["column", "flat"])
def test_read_medmnist_accepts_both_label_shapes(tmp_path, label_shape):
    data = read_medmnist(write_medmnist(tmp_path / "m.npz", label_shape))
    assert set(data) == {"train", "val", "test"}
    images, labels = data["train"]
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5,) and labels.dtype == np.int64


def test_read_medmnist_errors_name_file_and_field(tmp_path):
    missing = write_medmnist(tmp_path / "missing.npz", val_labels=None)
    with pytest.raises(ValueError, match=r"missing\.npz: missing field 'val_labels'"):
        read_medmnist(missing)
    bad = write_medmnist(tmp_path / "bad.npz", train_labels=np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"bad\.npz: field 'train_labels': expected shape \(5,\) or \(5, 1\)"):
        read_medmnist(bad)
    rgb = write_medmnist(tmp_path / "rgb.npz", test_images=np.zeros((2, 28, 28, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"rgb\.npz: field 'test_images': expected uint8 greyscale"):
        read_medmnist(rgb)
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz file"):
        read_medmnist(tmp_path / "junk.npz")


def test_load_npz_arrays(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[1] = 255
    images[2, :, 14:] = 255
    x = load_npz_arrays(images, np.array([0, 1, 0]), ImageSettings(size=32))
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], -1.0)
    np.testing.assert_allclose(x[1], 1.0, rtol=1e-6)
    assert x[2, 0, :, :8].max() == -1.0 and x[2, 0, :, 24:].min() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one per image"):
        load_npz_arrays(images, np.array([0, 1]), ImageSettings(size=32))


@pytest.mark.skipif(not PNEUMONIAMNIST.is_file(), reason="shared/data/pneumoniamnist.npz not present")
def test_pneumoniamnist_real_file():
    data = read_medmnist(PNEUMONIAMNIST)
    for split in ("train", "val", "test"):
        images, labels = data[split]
        assert images.ndim == 3 and images.shape[1:] == (28, 28) and len(labels) == len(images)
        assert set(np.unique(labels)) == {0, 1}
    images, labels = data["val"]
    x = load_npz_arrays(images, labels, ImageSettings(size=64))
    assert x.shape == (len(images), 1, 64, 64) and np.isfinite(x).all()
    assert -1.0 - 1e-6 <= x.min() and x.max() <= 1.0 + 1e-6


def test_run_modalities_leave_out_other_images_without_changing_the_data_set(tmp_path):
    data = tmp_path / "site"
    written = write_patient(data, 1, 2, "normal") + write_patient(data, 2, 2, "abnormal")
    mr = written[1].path
    ds = pydicom.dcmread(mr)
    ds.Modality = "MR"
    ds.save_as(mr)
    write_labels_csv(data, written)
    everything = load_dicom_site(data, tmp_path / "s1", SETTINGS, CLASSES, val_fraction=0.0)
    ct_only = load_dicom_site(data, tmp_path / "s2", replace(SETTINGS, modalities=("CT",)), CLASSES,
                              val_fraction=0.0)
    assert len(everything.train_y) == 4 and len(ct_only.train_y) == 3
    assert ct_only.skipped.counts == {"modality not in the run's list": 1}
    # The same people's images: the privacy ledger's data set does not change with the list.
    assert ct_only.fingerprint == everything.fingerprint
    with pytest.raises(ValueError, match="no labelled image of the run's modalities US"):
        load_dicom_site(data, tmp_path / "s3", replace(SETTINGS, modalities=("US",)), CLASSES)
