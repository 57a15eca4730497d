"""Synthetic DICOM sites: readable, valid, heterogeneous, labelled and reproducible."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import CTImageStorage, RLELossless, UID

from fedmed.common.settings import DEFAULT_CLASSES
from fedmed.simulations.synthetic_dicom import (
    IMPLEMENTATION_CLASS_UID,
    TISSUE_HU,
    profile_for,
    write_sites,
)

SITES = ("A", "B", "C")
IMAGES = 60


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("sites")
    calls: list[tuple[int, int]] = []
    summaries = write_sites(out, SITES, images_per_site=IMAGES, seed=5, progress=lambda d, t: calls.append((d, t)))
    return out, summaries, calls


@pytest.fixture(scope="module")
def datasets(written):
    out, _, _ = written
    return {site: {p: pydicom.dcmread(p) for p in _dicom_files(out / site)} for site in SITES}


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "labels.csv")


def _labels(site_dir: Path) -> dict[str, str]:
    with (site_dir / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["SOPInstanceUID", "label"]
        return {row["SOPInstanceUID"]: row["label"] for row in reader}


def _hu(ds) -> np.ndarray:
    out = apply_modality_lut(ds.pixel_array, ds)
    # The MONOCHROME1 site stores inverted: its modality output is the negated HU.
    return -out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def _display(ds) -> np.ndarray:
    """Modality LUT, the file's window, then MONOCHROME1 inversion, scaled to [0, 1]."""
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    # pydicom maps the window onto the range the stored bits can reach after rescaling.
    signed = ds.PixelRepresentation == 1
    lowest = ds.RescaleIntercept + ds.RescaleSlope * (-(2 ** (ds.BitsStored - 1)) if signed else 0)
    span = ds.RescaleSlope * (2**ds.BitsStored - 1)
    shown = (windowed - lowest) / span
    return 1.0 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


def test_summaries_match_the_files_and_labels(written, datasets):
    out, summaries, _ = written
    assert list(summaries) == list(SITES)
    for site in SITES:
        summary = summaries[site]
        labels = _labels(out / site)
        uids = {ds.SOPInstanceUID for ds in datasets[site].values()}
        assert summary.images == len(datasets[site]) == IMAGES
        assert set(labels) == uids
        assert set(labels.values()) <= set(DEFAULT_CLASSES)
        assert summary.abnormal == sum(v == "abnormal" for v in labels.values())
        assert summary.patients == len({ds.PatientID for ds in datasets[site].values()})
        assert summary.matrix == datasets[site][next(iter(datasets[site]))].Rows


def test_progress_reports_every_image(written):
    _, _, calls = written
    total = len(SITES) * IMAGES
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_file_meta_and_required_tags_are_valid(written, datasets):
    for index, site in enumerate(SITES):
        profile = profile_for(index)
        for path, ds in datasets[site].items():
            raw = path.read_bytes()
            assert raw[128:132] == b"DICM"
            meta = ds.file_meta
            assert meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
            assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert meta.TransferSyntaxUID == profile.transfer_syntax
            assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
            for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                        ds.FrameOfReferenceUID, meta.ImplementationClassUID):
                assert UID(uid).is_valid
            assert ds.Modality == "CT"
            assert (ds.Rows, ds.Columns) == (profile.matrix, profile.matrix)
            assert ds.BitsAllocated == 16 and ds.SamplesPerPixel == 1
            assert ds.HighBit == ds.BitsStored - 1
            assert ds.PhotometricInterpretation == profile.photometric
            assert float(ds.PixelSpacing[0]) == pytest.approx(profile.pixel_spacing_mm, rel=1e-5)
            assert ds.pixel_array.shape == (profile.matrix, profile.matrix)
            assert "WindowCenter" in ds and "WindowWidth" in ds


def test_sites_differ_in_storage(datasets):
    first = {site: next(iter(datasets[site].values())) for site in SITES}
    a, b, c = first["A"], first["B"], first["C"]
    assert a.PixelRepresentation == 0 and a.RescaleIntercept == -1024 and a.RescaleSlope == 1
    assert b.PixelRepresentation == 1 and b.RescaleIntercept == 0
    assert b.pixel_array.dtype == np.int16 and b.pixel_array.min() < 0
    assert b.file_meta.TransferSyntaxUID == RLELossless and b["PixelData"].is_undefined_length
    assert c.PhotometricInterpretation == "MONOCHROME1" and c.RescaleSlope == 2
    assert len({ds.Rows for ds in first.values()}) == 3
    assert len({float(ds.WindowCenter) for ds in first.values()}) == 3


@pytest.mark.parametrize("site", SITES)
def test_tissues_have_their_hounsfield_values(datasets, site):
    for ds in list(datasets[site].values())[::7]:
        hu = _hu(ds)
        corners = np.concatenate([hu[:6, :6].ravel(), hu[:6, -6:].ravel(), hu[-6:, :6].ravel(), hu[-6:, -6:].ravel()])
        assert np.median(corners) == pytest.approx(TISSUE_HU["air"], abs=40)

        def share_near(value: float) -> float:
            return float(np.mean(np.abs(hu - value) < 75))

        assert share_near(TISSUE_HU["lung"]) > 0.05
        assert share_near(TISSUE_HU["soft_tissue"]) > 0.05
        assert np.sum(hu > 500) >= 10  # vertebra and ribs


def test_every_site_looks_alike_after_the_display_pipeline(datasets):
    for index, site in enumerate(SITES):
        center, width = profile_for(index).window_hu
        for ds in list(datasets[site].values())[::9]:
            shown = _display(ds)
            # What a MONOCHROME2 file holding these HU would show in the same window:
            # the inverted site must match it, not its mirror image.
            expected = np.clip((_hu(ds) - (center - width / 2)) / width, 0.0, 1.0)
            assert np.abs(shown - expected).max() < 0.01
            assert shown[:6, :6].mean() < 0.3
            assert np.percentile(shown, 99.5) > 0.95


def test_patients_form_studies_series_and_slabs(written, datasets):
    out, _, _ = written
    for site in SITES:
        labels = _labels(out / site)
        by_patient = defaultdict(list)
        for ds in datasets[site].values():
            by_patient[ds.PatientID].append(ds)
        assert len(by_patient) >= 5
        for patient_id, slices in by_patient.items():
            assert all(str(ds.PatientName) == f"SYNTH^{patient_id}" for ds in slices)
            assert len({ds.StudyInstanceUID for ds in slices}) == 1
            assert len({ds.SeriesInstanceUID for ds in slices}) == 1
            assert len({labels[ds.SOPInstanceUID] for ds in slices}) == 1
            numbers = sorted(int(ds.InstanceNumber) for ds in slices)
            assert numbers == list(range(1, len(slices) + 1))
            locations = [float(ds.SliceLocation) for ds in sorted(slices, key=lambda d: d.InstanceNumber)]
            assert all(float(ds.ImagePositionPatient[2]) == float(ds.SliceLocation) for ds in slices)
            assert len(set(np.round(np.diff(locations), 3))) <= 1


def test_sites_use_different_folder_layouts(written):
    out, _, _ = written
    depths = {site: {len(p.relative_to(out / site).parts) for p in _dicom_files(out / site)} for site in SITES}
    assert depths == {"A": {3}, "B": {1}, "C": {2}}


def test_class_balance_differs_between_sites(written):
    _, summaries, _ = written
    fractions = [summaries[site].abnormal_fraction for site in SITES]
    assert fractions[0] > fractions[1] > fractions[2] > 0


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    kwargs = dict(sites=SITES, images_per_site=10)
    write_sites(tmp_path / "one", seed=9, **kwargs)
    write_sites(tmp_path / "two", seed=9, **kwargs)
    write_sites(tmp_path / "other", seed=10, **kwargs)
    one, two, other = (_hashes(tmp_path / name) for name in ("one", "two", "other"))
    assert one == two
    assert len(one) == 3 * (10 + 1)
    assert not set(one.values()) & set(other.values())


def test_refuses_to_write_into_a_site_folder_with_files(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "old.dcm").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty"):
        write_sites(tmp_path, ["A"], images_per_site=2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(sites=[]), "sites"),
        (dict(sites="ABC"), "sites"),
        (dict(sites=["A", "A"]), "sites"),
        (dict(sites=["../x"]), "sites"),
        (dict(images_per_site=0), "images per site"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=field):
        write_sites(tmp_path, **kwargs)


def test_summary_prints_as_one_line(written):
    _, summaries, _ = written
    text = str(summaries["B"])
    assert "\n" not in text
    assert f"{IMAGES} images" in text and "96x96" in text and "RLE Lossless" in text
