"""`fedmed data check`: a site folder's counts, skip reasons, label problems and privacy
warnings, in the library, the text output and --json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.client.datacheck import check_site
from fedmed.common.settings import DEFAULT_CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import (  # noqa: E402
    write_ct,
    write_labels_csv,
    write_random_bytes,
    write_truncated,
)

CLASSES = DEFAULT_CLASSES  # ("normal", "abnormal")


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2000, size=(24, 20))


@pytest.fixture()
def site(tmp_path: Path) -> tuple[Path, list]:
    """Good images of 3 patients (one MONOCHROME1), a corrupt, a truncated and an
    unlabelled file, a labels.csv row for no file, and two privacy issues."""
    root = tmp_path / "site"
    written = []
    for k, (patient, label) in enumerate([("P001", "normal"), ("P001", "normal"),
                                          ("P002", "abnormal"), ("P003", "normal")]):
        written.append(write_ct(root / "scans" / f"img{k}.dcm", _pixels(k), patient_id=patient, label=label))
    written.append(write_ct(root / "scans" / "mono1.dcm", _pixels(9), patient_id="P002",
                            photometric="MONOCHROME1", label="abnormal"))
    # Named after the patient: the folder holds the file's own PatientID.
    written.append(write_ct(root / "PATIENT-4711" / "a.dcm", _pixels(5), patient_id="PATIENT-4711",
                            label="abnormal"))
    # An ultrasound file without BurnedInAnnotation.
    us = write_ct(root / "scans" / "us.dcm", _pixels(6), patient_id="P003", label="normal")
    ds = pydicom.dcmread(us.path)
    ds.Modality = "US"
    ds.save_as(us.path)
    written.append(us)
    unlabelled = write_ct(root / "scans" / "unlabelled.dcm", _pixels(7), patient_id="P005")
    write_random_bytes(root / "scans" / "corrupt.dcm")
    truncated_source = write_ct(root / "tmp-src.dcm", _pixels(8), patient_id="P006")
    write_truncated(truncated_source.path, root / "scans" / "truncated.dcm")
    truncated_source.path.unlink()
    write_labels_csv(root, written, extra_rows=[("1.2.3.4.5.6.7", "normal")])
    return root, written + [unlabelled]


def test_report_counts_reasons_labels_and_privacy(site):
    root, written = site
    report = check_site(root, CLASSES)
    d = report.to_dict()
    assert report.can_train and d["problems"] == []
    assert d["files"] == {"found": 10, "labelled": 7, "decodable": 7, "skipped": 3}
    assert d["skipped"] == {"no label": 1, "not a DICOM file": 1, "truncated file": 1}
    assert {f["path"]: f["reason"] for f in d["skipped_files"]} == {
        "scans/unlabelled.dcm": "no label",
        "scans/corrupt.dcm": "not a DICOM file",
        "scans/truncated.dcm": "truncated file",
    }
    assert d["images_per_class"] == {"normal": 4, "abnormal": 3}
    assert d["patients_per_class"] == {"normal": 2, "abnormal": 2}
    assert d["patients"] == 4
    assert d["images_per_patient"] == {"min": 1, "median": 2.0, "max": 2}
    assert d["photometric_interpretations"] == {"MONOCHROME2": 6, "MONOCHROME1": 1}
    assert d["modalities"] == {"CT": 6, "US": 1}
    assert d["transfer_syntaxes"] == {"Explicit VR Little Endian": 7}
    assert d["image_sizes"] == {"24x20": 7}
    assert d["pixel_spacing_mm"] == {"min": None, "max": None, "missing": 7}
    assert d["label_problems"]["unknown_keys"] == 1
    assert d["label_problems"]["unlabelled_images"] == 1
    warnings = {w["kind"]: w["files"] for w in d["privacy_warnings"]}
    assert warnings["burned-in-annotation-missing"] == ["scans/us.dcm"]
    assert warnings["path-patient-id"] == ["PATIENT-4711/a.dcm"]
    assert "row(s) of labels.csv match no file" in " ".join(d["warnings"])


def test_cli_text_and_json_keep_header_values_out(site):
    root, written = site
    runner = CliRunner()
    text = runner.invoke(app, ["data", "check", str(root)])
    assert text.exit_code == 0, text.output
    for phrase in ("files found", "not a DICOM file", "truncated file", "no label", "MONOCHROME1",
                   "scans/corrupt.dcm", "BurnedInAnnotation", "ready"):
        assert phrase in text.output, phrase
    as_json = runner.invoke(app, ["data", "check", str(root), "--json"])
    assert as_json.exit_code == 0
    d = json.loads(as_json.output)
    assert d["can_train"] is True and d["files"]["decodable"] == 7
    for output in (text.output, as_json.output):
        # Header values other than the aggregate categorical ones never appear.
        for w in written:
            assert w.sop_uid not in output
        assert "20240101" not in output  # StudyDate
        assert "Test^" not in output  # PatientName


def test_person_name_and_birth_date_in_file_names(tmp_path: Path):
    root = tmp_path / "site"
    write_ct(root / "normal" / "DOE^JOHN.dcm", _pixels(1), patient_id="X1")
    w2 = write_ct(root / "abnormal" / "scan_19700315.dcm", _pixels(2), patient_id="X2")
    ds = pydicom.dcmread(w2.path)
    ds.PatientBirthDate = "19700315"
    ds.save_as(w2.path)
    write_ct(root / "abnormal" / "2.25.1234567890.19991231.dcm", _pixels(3), patient_id="X3")
    d = check_site(root, CLASSES).to_dict()
    warnings = {w["kind"]: w["files"] for w in d["privacy_warnings"]}
    assert warnings["path-person-name"] == ["normal/DOE^JOHN.dcm"]
    assert warnings["path-birth-date"] == ["abnormal/scan_19700315.dcm"]
    # A UID-named file is not taken for a date.
    assert "path-date" not in warnings
    assert d["can_train"]


def test_one_class_cannot_train(tmp_path: Path):
    root = tmp_path / "site"
    for k in range(3):
        write_ct(root / "normal" / f"{k}.dcm", _pixels(k), patient_id=f"Q{k}")
    report = check_site(root, CLASSES)
    assert not report.can_train
    assert "only class 'normal'" in report.problems[0]
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert "cannot train" in result.output


def test_malformed_labels_and_no_images_cannot_train(tmp_path: Path):
    bad_labels = tmp_path / "bad"
    write_ct(bad_labels / "a.dcm", _pixels(0), patient_id="R1")
    (bad_labels / "labels.csv").write_text("file,diagnosis\na.dcm,normal\n")
    result = CliRunner().invoke(app, ["data", "check", str(bad_labels), "--json"])
    assert result.exit_code == 1
    d = json.loads(result.output)
    assert d["can_train"] is False and "no key column" in d["problems"][0]

    junk = tmp_path / "junk"
    write_random_bytes(junk / "normal" / "x.dcm")
    write_random_bytes(junk / "abnormal" / "y.dcm", seed=1)
    report = check_site(junk, CLASSES)
    assert not report.can_train and "no usable labelled image" in report.problems[0]
    assert report.skipped == {"not a DICOM file": 2}


def test_missing_folder_is_a_usage_error(tmp_path: Path):
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "nowhere: no such folder" in result.output
    with pytest.raises(ValueError, match="no such folder"):
        check_site(tmp_path / "nowhere", CLASSES)
    (tmp_path / "file.dcm").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a folder"):
        check_site(tmp_path / "file.dcm", CLASSES)


# --- an export before labelling, a folder of sites, label values, I/O problems --------


def _unlabelled_export(root: Path) -> None:
    for k, patient in enumerate(["U1", "U1", "U2", "U3"]):
        write_ct(root / patient / f"{k}.dcm", _pixels(k), patient_id=patient)
    write_ct(root / "U3" / "rle.dcm", _pixels(4), patient_id="U3", compress=RLELossless)
    write_random_bytes(root / "notes.txt")


def test_unlabelled_export_is_inventoried_with_one_problem(tmp_path: Path):
    root = tmp_path / "export"
    _unlabelled_export(root)
    seen = []
    report = check_site(root, CLASSES, progress=lambda done, total, what: seen.append((what, done, total)))
    d = report.to_dict()
    assert d["labels_found"] is False
    assert d["files"]["found"] == 6 and d["files"]["decodable"] == 5
    assert d["skipped"] == {"not a DICOM file": 1}
    assert d["patients"] == 3
    assert d["modalities"] == {"CT": 5}
    assert d["transfer_syntaxes"] == {"Explicit VR Little Endian": 4, "RLE Lossless": 1}
    assert d["image_sizes"] == {"24x20": 5}
    assert d["frames_per_file"] == {"1": 5}
    assert len(d["problems"]) == 1 and "no labels yet" in d["problems"][0]
    assert ("decoding images", 6, 6) in seen
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert "decodable images (no labels yet)" in result.output and "no labels yet" in result.output


def test_folder_of_sites_is_named(tmp_path: Path):
    root = tmp_path / "sites"
    for site_name in ("A", "B"):
        written = [write_ct(root / site_name / f"{k}.dcm", _pixels(k), patient_id=f"{site_name}{k}",
                            label=["normal", "abnormal"][k % 2]) for k in range(3)]
        write_labels_csv(root / site_name, written)
    d = check_site(root, CLASSES).to_dict()
    assert d["site_folders"] == ["A", "B"]
    assert d["files"]["found"] == 6 and d["files"]["decodable"] == 6  # labels.csv files are not images
    assert len(d["problems"]) == 1 and "holds 2 site folder(s) (A, B)" in d["problems"][0]
    assert f"fedmed data check {root / 'A'}" in d["problems"][0]


def test_label_values_found_and_classes_suggested(tmp_path: Path):
    root = tmp_path / "site"
    written = [write_ct(root / f"{k}.dcm", _pixels(k), patient_id=f"L{k}", label=["healthy", "sick"][k % 2])
               for k in range(4)]
    write_labels_csv(root, written)
    report = check_site(root, CLASSES)
    assert report.label_values == {"healthy": 2, "sick": 2}
    assert not report.can_train
    assert "'healthy' (2), 'sick' (2)" in report.problems[0]
    assert "pass --classes healthy,sick" in report.problems[0]
    assert check_site(root, ("healthy", "sick")).can_train


def test_unreadable_sub_folder_is_one_line_naming_it(tmp_path: Path, monkeypatch):
    root = tmp_path / "site"
    for k in range(4):
        write_ct(root / ["normal", "abnormal"][k % 2] / f"{k}.dcm", _pixels(k), patient_id=f"V{k}")
    write_ct(root / "normal" / "locked" / "x.dcm", _pixels(9), patient_id="V9")
    import fedmed.client.sitedata.scan as scan_module

    real_walk = scan_module.os.walk

    def walk(top, onerror=None, **kwargs):
        # As os.walk does for a folder it may not list (root can read any folder, so the
        # refusal is staged here).
        for dirpath, dirnames, filenames in real_walk(top, onerror=onerror, **kwargs):
            if "locked" in dirnames:
                dirnames.remove("locked")
                onerror(PermissionError(13, "Permission denied", str(Path(dirpath) / "locked")))
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(scan_module.os, "walk", walk)
    report = check_site(root, CLASSES)
    assert not report.can_train
    assert report.problems == [f"{root / 'normal' / 'locked'}: folder cannot be read (permission denied): "
                               "its files are left out; let this user read it"]


def test_labels_csv_io_and_encodings_are_one_line(tmp_path: Path, monkeypatch):
    root = tmp_path / "site"
    written = [write_ct(root / f"{k}.dcm", _pixels(k), patient_id=f"E{k}", label=["normal", "abnormal"][k % 2])
               for k in range(4)]
    lines = "SOPInstanceUID,label\n" + "".join(f"{w.sop_uid},{w.label}\n" for w in written)
    labels = root / "labels.csv"
    # UTF-16 with its byte-order mark (a spreadsheet's "Unicode text") reads as UTF-8 does.
    labels.write_bytes(lines.encode("utf-16"))
    assert check_site(root, CLASSES).can_train
    # Latin-1 is refused in one line naming the file and the fix.
    labels.write_bytes((lines + f"{written[0].sop_uid},anormal\u00e9\n").encode("latin-1"))
    report = check_site(root, CLASSES)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{labels}: not UTF-8 text (byte 0xe9 at offset ")
    assert report.problems[0].endswith('save it as UTF-8 ("CSV UTF-8" in a spreadsheet)')
    labels.write_text(lines)
    real_read = Path.read_bytes

    def read_bytes(self):
        if self.name == "labels.csv":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result = CliRunner().invoke(app, ["data", "check", str(root), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["problems"] == [
        f"{labels}: cannot be read (permission denied); let this user read it"]


def test_client_start_and_simulate_stop_on_wrong_labels(tmp_path: Path):
    from fedmed.client.supernode import ClientOptions, ClientSetupError, preflight
    from fedmed.simulations.sites import check_dicom_sites

    root = tmp_path / "data"
    for site_name in ("A", "B"):
        written = [write_ct(root / site_name / f"{k}.dcm", _pixels(k), patient_id=f"{site_name}{k}",
                            label=["healthy", "sick"][k % 2]) for k in range(4)]
        write_labels_csv(root / site_name, written)
    with pytest.raises(ClientSetupError, match="pass --classes healthy,sick"):
        preflight(ClientOptions(site="A", data_dir=root / "A", server="127.0.0.1:9092"), CLASSES)
    assert "4 labelled image(s) ready" in preflight(
        ClientOptions(site="A", data_dir=root / "A", server="127.0.0.1:9092"), ("healthy", "sick"))
    with pytest.raises(ValueError, match=r"site A: labels in .*pass --classes healthy,sick") as info:
        check_dicom_sites(root, CLASSES)
    assert "site B:" in str(info.value)
    check_dicom_sites(root, ("healthy", "sick"))
