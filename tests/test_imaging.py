"""The site's image pipeline: each DICOM step, decoding, and the reasons files are refused.

Real files come from pydicom's bundled test data (only those shipped with the package,
never downloaded); synthetic files with known stored values come from `dicom_factory`.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from fedmed.client.imaging import (
    UnusableImage,
    check_image_header,
    load_image,
    pixel_array,
    preprocess,
    read_dicom,
    steps,
)
from fedmed.common.settings import ImageSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import write_ct, write_non_image, write_random_bytes, write_truncated  # noqa: E402

SETTINGS = ImageSettings(size=32, window=None, mean=0.5, std=0.5)


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return Path(path)


def half_and_half(rows: int = 64, cols: int = 64, left: int = 0, right: int = 1024) -> np.ndarray:
    pixels = np.full((rows, cols), left, dtype=np.int32)
    pixels[:, cols // 2 :] = right
    return pixels


def region_means(x: np.ndarray) -> tuple[float, float]:
    """Mean of the left and right halves' interiors (away from the resize's blended seam)."""
    size = x.shape[-1]
    q = size // 4
    return float(x[:, 2 : q].mean()), float(x[:, size - q : size - 2].mean())


# --- steps ---------------------------------------------------------------------------


def test_modality_lut_rescale_gives_hounsfield_units(tmp_path):
    w = write_ct(tmp_path / "ct.dcm", half_and_half(), patient_id="P1", slope=1, intercept=-1024)
    ds = read_dicom(w.path)
    hu = steps.modality_lut(pixel_array(ds), ds)
    assert hu[:, :32].tolist() == np.full((64, 32), -1024.0).tolist()  # stored 0 is air
    assert np.all(hu[:, 32:] == 0.0)  # stored 1024 is water


def test_modality_lut_slope_and_absent_module(tmp_path):
    pixels = np.array([[0, 10], [20, 30]])
    ds = read_dicom(write_ct(tmp_path / "a.dcm", pixels, patient_id="P", slope=2.5, intercept=-5).path)
    assert steps.modality_lut(pixel_array(ds), ds).tolist() == [[-5, 20], [45, 70]]
    ds = read_dicom(write_ct(tmp_path / "b.dcm", pixels, patient_id="P", slope=None, intercept=None).path)
    assert steps.modality_lut(pixel_array(ds), ds).tolist() == pixels.tolist()


def test_modality_lut_sequence_maps_through_the_table():
    ds = Dataset()
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])  # LUT Descriptor: 4 entries from 0, 16 bit
    item.add_new(0x00283006, "US", [100, 200, 300, 400])  # LUT Data
    ds.ModalityLUTSequence = [item]
    out = steps.modality_lut(np.array([[0, 1], [2, 3]], dtype=np.uint16), ds)
    assert out.tolist() == [[100, 200], [300, 400]]


def test_window_linear_follows_the_standard_formula():
    # PS3.3 C.11.2.1.2.1: below c - 0.5 - (w-1)/2 -> min, above c - 0.5 + (w-1)/2 -> max.
    c, w = 40.0, 401.0
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    out = steps.window(np.array([lo - 100, lo, c - 0.5, hi, hi + 100]), c, w, "LINEAR")
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_window_linear_exact_and_sigmoid():
    x = np.array([-160.0, 40.0, 240.0, 1000.0])
    np.testing.assert_allclose(steps.window(x, 40, 400, "LINEAR_EXACT"), [0.0, 0.5, 1.0, 1.0])
    sig = steps.window(x, 40, 400, "SIGMOID")
    assert sig[1] == pytest.approx(0.5) and np.all(np.diff(sig) > 0) and np.all((sig > 0) & (sig < 1))
    with pytest.raises(ValueError):
        steps.window(x, 40, 0.5, "LINEAR")


def test_voi_uses_the_files_first_window(tmp_path):
    w = write_ct(tmp_path / "w.dcm", half_and_half(), patient_id="P", window=(0, 2))
    ds = read_dicom(w.path)
    ds.WindowCenter, ds.WindowWidth = [-1024, 0], [100, 2]  # multi-valued: first is default
    out = steps.voi(steps.modality_lut(pixel_array(ds), ds), ds)
    assert out[0, 0] == pytest.approx(0.5 + 0.5 / 99)  # -1024 HU sits at the window's centre
    assert out[0, -1] == 1.0


def test_configured_window_overrides_the_file(tmp_path):
    w = write_ct(tmp_path / "w.dcm", half_and_half(), patient_id="P", window=(-1024, 10))
    ds = read_dicom(w.path)
    hu = steps.modality_lut(pixel_array(ds), ds)
    out = steps.voi(hu, ds, configured=(40.0, 400.0))
    assert out[0, 0] == 0.0  # air, below the soft-tissue window
    assert out[0, -1] == pytest.approx((0 - 40) / 400 + 0.5)  # water


def test_voi_lut_sequence_is_scaled_by_its_table():
    ds = Dataset()
    item = Dataset()
    item.add_new(0x00283002, "US", [3, 10, 16])  # 3 entries for inputs 10, 11, 12
    item.add_new(0x00283006, "US", [1000, 2000, 3000])
    ds.VOILUTSequence = [item]
    out = steps.voi(np.array([5.0, 10.0, 11.0, 12.0, 99.0]), ds)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_voi_min_max_without_any_voi_and_constant_image():
    ds = Dataset()
    np.testing.assert_allclose(steps.voi(np.array([[-10.0, 0.0], [10.0, 30.0]]), ds), [[0, 0.25], [0.5, 1]])
    assert np.all(steps.voi(np.full((4, 4), 7.0), ds) == 0.0)


def test_invert_monochrome1_only_for_monochrome1():
    x = np.array([[0.0, 0.25], [0.75, 1.0]])
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(steps.invert_monochrome1(x, ds), 1.0 - x)
    ds.PhotometricInterpretation = "MONOCHROME2"
    assert steps.invert_monochrome1(x, ds) is x


def test_resize_square_is_deterministic_and_keeps_range():
    rng = np.random.default_rng(0)
    image = rng.random((300, 200))
    a, b = steps.resize_square(image, 64), steps.resize_square(image, 64)
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert a.min() >= image.min() - 1e-6 and a.max() <= image.max() + 1e-6
    np.testing.assert_allclose(steps.resize_square(np.full((50, 70), 0.3), 16), 0.3, rtol=1e-6)
    stack = steps.resize_square(np.stack([image, 1 - image]), 64)
    assert stack.shape == (2, 64, 64) and np.array_equal(stack[0], a)
    # Downsampling averages (antialias) instead of picking pixels: a fine checkerboard greys out.
    checker = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float64)
    assert np.allclose(steps.resize_square(checker, 16), 0.5, atol=0.05)


def test_normalise():
    out = steps.normalise(np.array([0.0, 0.5, 1.0]), 0.5, 0.25)
    assert out.dtype == np.float32 and out.tolist() == [-2.0, 0.0, 2.0]


def test_luma_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(steps.luma(rgb), [[0.299 * 255, 0.587 * 255, 0.114 * 255, 255]])


# --- the pipeline on synthetic files -------------------------------------------------


def test_pipeline_hu_regions_with_a_configured_window(tmp_path):
    w = write_ct(tmp_path / "ct.dcm", half_and_half(), patient_id="P1")
    settings = ImageSettings(size=32, window=(40.0, 400.0), mean=0.5, std=0.5)
    x, ds = load_image(w.path, settings)
    assert x.shape == (32, 32) and x.dtype == np.float32
    air, water = region_means(x)
    assert air == pytest.approx((0.0 - 0.5) / 0.5)  # -1024 HU -> 0 -> -1
    assert water == pytest.approx(((0 - 40) / 400 + 0.5 - 0.5) / 0.5)  # 0 HU -> 0.4 -> -0.2
    assert ds.PatientID == "P1"


def test_signed_ct_is_read_as_signed(tmp_path):
    pixels = half_and_half(left=-1000, right=1000)
    w = write_ct(tmp_path / "s.dcm", pixels, patient_id="P", signed=True, slope=1, intercept=0)
    ds = read_dicom(w.path)
    assert pixel_array(ds).min() == -1000
    x = preprocess(ds, ImageSettings(size=32, window=(0.0, 2000.0)))
    assert region_means(x) == pytest.approx((-1.0, 1.0))


def test_monochrome1_bright_region_becomes_dark(tmp_path):
    pixels = half_and_half(left=100, right=3000)  # right: high stored value
    m2 = write_ct(tmp_path / "m2.dcm", pixels, patient_id="P", photometric="MONOCHROME2")
    m1 = write_ct(tmp_path / "m1.dcm", pixels, patient_id="P", photometric="MONOCHROME1")
    x2, _ = load_image(m2.path, SETTINGS)
    x1, _ = load_image(m1.path, SETTINGS)
    left2, right2 = region_means(x2)
    left1, right1 = region_means(x1)
    assert right2 > left2  # MONOCHROME2: high = bright
    assert right1 < left1  # MONOCHROME1: high stored value is displayed dark
    np.testing.assert_allclose(x1, -x2, atol=1e-6)  # with mean 0.5, inversion flips the sign


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_file_decodes_to_the_same_pixels(tmp_path, syntax):
    pixels = np.random.default_rng(1).integers(0, 4096, size=(48, 40))
    plain = write_ct(tmp_path / "plain.dcm", pixels, patient_id="P")
    packed = write_ct(tmp_path / "packed.dcm", pixels, patient_id="P", compress=syntax)
    ds = read_dicom(packed.path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(pixel_array(ds), pixel_array(read_dicom(plain.path)))
    assert np.array_equal(load_image(packed.path, SETTINGS)[0], load_image(plain.path, SETTINGS)[0])


def test_preprocess_is_deterministic(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 2000, size=(70, 50))
    w = write_ct(tmp_path / "d.dcm", pixels, patient_id="P")
    a, _ = load_image(w.path, SETTINGS)
    b, _ = load_image(w.path, SETTINGS)
    assert np.array_equal(a, b)


# --- the pipeline on pydicom's real files --------------------------------------------


def test_ct_small_real_file():
    ds = read_dicom(pydicom_file("CT_small.dcm"))
    stored = pixel_array(ds)
    assert stored.dtype == np.int16  # signed CT
    np.testing.assert_array_equal(steps.modality_lut(stored, ds), stored.astype(float) - 1024)
    x = preprocess(ds, ImageSettings(size=64, window=(40.0, 400.0)))
    assert x.shape == (64, 64) and np.isfinite(x).all()
    assert -1.0 <= x.min() < x.max() <= 1.0


def test_mr_small_same_image_whatever_the_encoding():
    reference = preprocess(read_dicom(pydicom_file("MR_small.dcm")), SETTINGS)
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"):
        assert np.array_equal(preprocess(read_dicom(pydicom_file(name)), SETTINGS), reference), name


def test_jpeg2000_single_frame_nm():
    x, ds = load_image(pydicom_file("JPEG2000.dcm"), SETTINGS)  # NumberOfFrames = 1 is not multi-frame
    assert ds.NumberOfFrames == 1 and x.shape == (32, 32) and np.isfinite(x).all()


def test_real_monochrome1_cr_is_inverted():
    ds = read_dicom(pydicom_file("dicomdirtests/77654033/CR1/6154"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    as_stored = preprocess(ds, SETTINGS)
    ds.PhotometricInterpretation = "MONOCHROME2"
    np.testing.assert_allclose(as_stored, -preprocess(ds, SETTINGS), atol=1e-6)


def test_rgb_is_converted_to_grey_by_luma():
    ds = read_dicom(pydicom_file("SC_rgb_small_odd.dcm"))
    grey = pixel_array(ds)
    assert grey.ndim == 2
    np.testing.assert_allclose(grey, steps.luma(ds.pixel_array))
    x = preprocess(ds, ImageSettings(size=8))
    expected = steps.normalise(steps.resize_square(steps.luma(ds.pixel_array) / 255.0, 8), 0.5, 0.5)
    np.testing.assert_allclose(x, expected, atol=1e-6)


# --- refusals ------------------------------------------------------------------------


def reason_of(path: Path) -> str:
    with pytest.raises(UnusableImage) as info:
        load_image(path, SETTINGS)
    return info.value.reason


def test_refusal_reasons(tmp_path):
    good = write_ct(tmp_path / "good.dcm", half_and_half(128, 128), patient_id="P")
    assert reason_of(write_random_bytes(tmp_path / "random.dcm")) == "not a DICOM file"
    assert reason_of(write_truncated(good.path, tmp_path / "half.dcm")) == "truncated file"
    assert reason_of(write_non_image(tmp_path / "sr.dcm").path) == "no pixel data"
    assert reason_of(pydicom_file("rtplan.dcm")) == "no pixel data"
    assert reason_of(tmp_path / "missing.dcm") == "unreadable file"
    (tmp_path / "folder.dcm").mkdir()
    assert reason_of(tmp_path / "folder.dcm") == "unreadable file"


def test_truncated_file_found_by_a_header_only_read(tmp_path):
    good = write_ct(tmp_path / "good.dcm", half_and_half(128, 128), patient_id="P")
    cut = write_truncated(good.path, tmp_path / "cut.dcm")
    read_dicom(good.path, header_only=True)
    with pytest.raises(UnusableImage, match="truncated file"):
        read_dicom(cut, header_only=True)


def test_undecodable_compressed_pixels(tmp_path):
    w = write_ct(tmp_path / "j.dcm", np.zeros((16, 16)), patient_id="P")
    ds = pydicom.dcmread(w.path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(200) + b"\xff\xd9"])  # not a real JPEG stream
    ds.save_as(w.path, enforce_file_format=True)
    assert reason_of(w.path) == "corrupt JPEG Baseline (Process 1) pixel data"


def test_header_check_without_decoding(tmp_path):
    check_image_header(read_dicom(pydicom_file("examples_ybr_color.dcm"), header_only=True))
    check_image_header(read_dicom(pydicom_file("CT_small.dcm"), header_only=True))
    w = write_ct(tmp_path / "p.dcm", np.zeros((8, 8)), patient_id="P", photometric="PALETTE COLOR")
    with pytest.raises(UnusableImage, match="PALETTE COLOR without a colour lookup table"):
        check_image_header(read_dicom(w.path, header_only=True))


def test_reasons_and_logs_carry_no_header_values(tmp_path, caplog):
    secret_id, secret_uid = "PATIENT-SECRET-42", "1.2.826.0.1.3680043.8.498.4242424242"
    bad_frames = write_ct(tmp_path / "frames.dcm", np.zeros((8, 8)), patient_id=secret_id, sop_uid=secret_uid)
    ds = pydicom.dcmread(bad_frames.path)
    ds.NumberOfFrames = 12345678
    ds.save_as(bad_frames.path, enforce_file_format=True)
    raw = bad_frames.path.read_bytes()
    bad_frames.path.write_bytes(raw.replace(b"12345678", b"SECRET01"))  # an invalid IS value
    odd_photometric = write_ct(
        tmp_path / "photo.dcm", np.zeros((8, 8)), patient_id=secret_id, photometric="SECRET_PI"
    )
    sr = write_non_image(tmp_path / "sr.dcm", patient_id=secret_id, sop_uid=secret_uid)
    cut = write_truncated(write_ct(tmp_path / "c.dcm", np.zeros((64, 64)), patient_id=secret_id).path,
                          tmp_path / "cut.dcm")
    files = [bad_frames.path, odd_photometric.path, sr.path, cut, pydicom_file("badVR.dcm")]
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reasons = [reason_of(p) for p in files]
    assert reasons == [
        "invalid image pixel description",
        "unknown photometric interpretation",
        "no pixel data",
        "truncated file",
        "invalid image pixel description",
    ]
    assert caught == []
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []
    for reason in reasons:
        for secret in (secret_id, secret_uid, "SECRET", "20240101", str(tmp_path)):
            assert secret not in reason
