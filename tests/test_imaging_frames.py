"""Decoding beyond one grey frame: multi-frame policies, enhanced functional groups,
PALETTE COLOR, every installed transfer syntax, and skip reasons that name a syntax.

Real files are pydicom's bundled test data (only those shipped with the package); files
with known values are written here with pydicom.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.pixels import pixel_array as decode_pixels
from pydicom.sequence import Sequence
from pydicom.uid import (
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGExtended12Bit,
    MPEG2MPML,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

import fedmed.client.imaging.decode as decode_module
from fedmed.client.imaging import (
    UnusableImage,
    frame_count,
    load_image,
    load_images,
    pixel_array,
    preprocess,
    preprocess_images,
    read_dicom,
    steps,
    syntax_name,
)
from fedmed.client.sitedata import load_dicom_site
from fedmed.common.settings import DEFAULT_CLASSES, ImageSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import write_ct  # noqa: E402

SETTINGS = ImageSettings(size=16, window=None)
# A bare UID in a reason: at least four dot-separated numbers.
BARE_UID = re.compile(r"\d+\.\d+\.\d+\.\d+")


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return Path(path)


def write_frames(path: Path, frames: np.ndarray, *, patient_id: str = "P1",
                 per_frame_intercepts: list[float] | None = None, compress: str | None = None,
                 window: tuple[float, float] | None = None) -> Path:
    """A 16-bit multi-frame greyscale file with stored values `frames` (F, rows, cols).

    per_frame_intercepts: written as an enhanced CT's per-frame Pixel Value Transformation
    (slope 1), with no top-level rescale; otherwise a classic rescale of 1 / -1024.
    """
    frames = np.asarray(frames, dtype=np.uint16)
    ds = Dataset()
    sop_class = EnhancedCTImageStorage if per_frame_intercepts is not None else UltrasoundImageStorage
    sop_uid = generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientID = patient_id
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if per_frame_intercepts is None:
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    else:
        items = []
        for intercept in per_frame_intercepts:
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, intercept, "HU"
            item = Dataset()
            item.PixelValueTransformationSequence = Sequence([transform])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
        if window is not None:
            voi = Dataset()
            voi.WindowCenter, voi.WindowWidth = window
            shared = Dataset()
            shared.FrameVOILUTSequence = Sequence([voi])
            ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = frames.tobytes()
    if compress is not None:
        ds.compress(compress, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- steps ---------------------------------------------------------------------------


def test_select_frames():
    assert steps.select_frames(1, "middle") == [0]
    assert steps.select_frames(30, "middle") == [15]
    assert steps.select_frames(4, "all") == steps.select_frames(4, "mip") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="frame policy"):
        steps.select_frames(3, "first")


def test_max_projection_is_pixelwise_max():
    a, b = np.array([[1.0, 5.0]]), np.array([[3.0, 2.0]])
    assert steps.max_projection([a, b]).tolist() == [[3.0, 5.0]]
    assert a.tolist() == [[1.0, 5.0]]  # the input is left alone


def test_frame_policy_is_validated_and_travels():
    with pytest.raises(ValueError, match="frames: expected one of middle, all, mip"):
        ImageSettings(frames="first")
    s = ImageSettings(frames="mip")
    assert ImageSettings.from_dict(s.to_dict()) == s
    assert ImageSettings.from_dict({"size": 64}).frames == "middle"  # older runs and models


# --- multi-frame ---------------------------------------------------------------------


def test_multi_frame_policies_on_written_frames(tmp_path):
    # Frame k is dark except a bright square at its own place; background HU differs by frame.
    frames = np.full((5, 20, 20), 1024, dtype=np.uint16)
    for k in range(5):
        frames[k] += 10 * k
        frames[k, 2:6, 3 * k : 3 * k + 4] = 1024 + 1000
    path = write_frames(tmp_path / "cine.dcm", frames)
    ds = read_dicom(path)
    assert frame_count(ds) == 5
    window = ImageSettings(size=20, window=(500.0, 1000.0), mean=0.0, std=1.0)

    middle = preprocess_images(ds, window)
    assert middle.shape == (1, 20, 20)
    expected_middle = np.clip((frames[2].astype(float) - 1024 - 0) / 1000.0, 0, 1)
    np.testing.assert_allclose(middle[0], expected_middle, atol=1e-6)

    every = preprocess_images(ds, ImageSettings(size=20, window=(500.0, 1000.0), mean=0.0, std=1.0,
                                                frames="all"))
    assert every.shape == (5, 20, 20)
    for k in range(5):
        np.testing.assert_allclose(every[k], np.clip((frames[k] - 1024.0) / 1000.0, 0, 1), atol=1e-6)

    mip = preprocess_images(ds, ImageSettings(size=20, window=(500.0, 1000.0), mean=0.0, std=1.0,
                                              frames="mip"))
    assert mip.shape == (1, 20, 20)
    np.testing.assert_allclose(mip[0], np.clip((frames.max(axis=0) - 1024.0) / 1000.0, 0, 1), atol=1e-6)
    assert (mip[0, 2:6, 0:16] == 1.0).all()  # every frame's square shows

    with pytest.raises(ValueError, match="preprocess_images"):
        preprocess(ds, ImageSettings(size=20, frames="all"))
    assert preprocess(ds, window).shape == (20, 20)


def test_enhanced_per_frame_rescale_and_shared_window(tmp_path):
    # Same stored values in both frames; the per-frame intercepts make them 0 HU and 100 HU.
    frames = np.full((2, 8, 8), 1000, dtype=np.uint16)
    path = write_frames(tmp_path / "enh.dcm", frames, per_frame_intercepts=[-1000.0, -900.0],
                        window=(50.0, 200.0))
    ds = read_dicom(path)
    assert "RescaleIntercept" not in ds
    header = steps.frame_header(ds, 1)
    assert float(header.RescaleIntercept) == -900.0 and float(header.WindowCenter) == 50.0
    values = [steps.modality_lut(decode_pixels(ds, index=k), steps.frame_header(ds, k)) for k in (0, 1)]
    assert values[0].max() == 0.0 and values[1].min() == 100.0
    out = preprocess_images(ds, ImageSettings(size=8, mean=0.0, std=1.0, frames="all"))
    # The shared window (centre 50, width 200, LINEAR) puts 0 HU and 100 HU either side of 0.5.
    assert out[0].mean() < 0.5 < out[1].mean()


def test_multi_frame_compressed_decodes_frame_by_frame(tmp_path):
    frames = np.stack([np.full((8, 8), 1024 + 100 * k, dtype=np.uint16) for k in range(3)])
    plain = write_frames(tmp_path / "plain.dcm", frames)
    rle = write_frames(tmp_path / "rle.dcm", frames, compress=RLELossless)
    for policy in ("middle", "all", "mip"):
        settings = ImageSettings(size=8, frames=policy)
        assert np.array_equal(load_images(rle, settings)[0], load_images(plain, settings)[0]), policy


def test_pydicom_multi_frame_files():
    # 15-frame RT dose (grey), 30-frame ultrasound in YBR_FULL_422 JPEG, 2-frame RGB RLE.
    for name, count in (("rtdose.dcm", 15), ("examples_ybr_color.dcm", 30), ("SC_rgb_rle_2frame.dcm", 2)):
        ds = read_dicom(pydicom_file(name))
        whole = ds.pixel_array
        for policy, expected in (("middle", 1), ("all", count), ("mip", 1)):
            x = preprocess_images(ds, ImageSettings(size=16, frames=policy))
            assert x.shape == (expected, 16, 16) and np.isfinite(x).all(), (name, policy)
        middle = pixel_array(ds)
        reference = whole[count // 2]
        if reference.ndim == 3:
            reference = steps.luma(reference)
        np.testing.assert_allclose(middle, reference)


# --- colour --------------------------------------------------------------------------


def test_pydicom_palette_colour_goes_through_its_lut():
    ds = read_dicom(pydicom_file("examples_palette.dcm"))
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    rgb = apply_color_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(pixel_array(ds), steps.luma(rgb))
    x = preprocess(ds, ImageSettings(size=16, mean=0.0, std=1.0))
    assert x.shape == (16, 16) and 0.0 <= x.min() and x.max() <= 1.0 + 1e-6


def test_written_palette_maps_indices_to_grey(tmp_path):
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID, ds.Modality = UltrasoundImageStorage, sop_uid, "P", "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    ds.Rows, ds.Columns = 2, 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    # Four entries, 16-bit: index 0 black, 1 pure red, 2 pure green, 3 white.
    red, green, blue = [0, 65535, 0, 65535], [0, 0, 65535, 65535], [0, 0, 0, 65535]
    for colour, values in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(values, dtype="<u2").tobytes())
    ds.PixelData = np.array([[0, 1], [2, 3]], dtype=np.uint8).tobytes()
    ds.save_as(tmp_path / "pal.dcm", enforce_file_format=True)
    x = preprocess(read_dicom(tmp_path / "pal.dcm"), ImageSettings(size=8, mean=0.0, std=1.0))
    # Each quadrant is the BT.601 luma of its colour; an 8-pixel resize of 2x2 keeps the
    # corners' values.
    assert x[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert x[0, -1] == pytest.approx(0.299, abs=1e-4)
    assert x[-1, 0] == pytest.approx(0.587, abs=1e-4)
    assert x[-1, -1] == pytest.approx(1.0, abs=1e-4)


def test_uncompressed_ybr_full_422_is_not_mistaken_for_truncated():
    x, ds = load_image(pydicom_file("SC_ybr_full_422_uncompressed.dcm"), SETTINGS)
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and np.isfinite(x).all()


# --- transfer syntaxes ---------------------------------------------------------------


def test_jpeg_12_bit_decodes():
    ds = read_dicom(pydicom_file("JPGExtended.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEGExtended12Bit and int(ds.BitsStored) == 12
    assert syntax_name(ds) == "JPEG Extended (Process 2 and 4)"
    assert np.isfinite(preprocess(ds, SETTINGS)).all()
    # pydicom's own plugins all fail on this file's stream; the reason names the syntax.
    with pytest.raises(UnusableImage) as info:
        load_image(pydicom_file("JPEG-lossy.dcm"), SETTINGS)
    assert info.value.reason == "corrupt JPEG Extended (Process 2 and 4) pixel data"


def test_every_decodable_pydicom_file_is_accepted():
    """fedmed accepts every bundled test image that pydicom with the installed plugins
    decodes, apart from the documented exceptions (floating-point pixel data)."""
    base = Path(pydicom_file("CT_small.dcm")).parent
    checked = 0
    for path in sorted(base.glob("*.dcm")):
        try:
            with decode_module.quiet_pydicom():
                pydicom.dcmread(path).pixel_array
        except Exception:
            continue
        x, _ = load_images(path, ImageSettings(size=8, frames="all"))
        assert x.ndim == 3 and np.isfinite(x).all(), path.name
        checked += 1
    assert checked >= 40


def test_skip_reasons_name_the_syntax_never_a_bare_uid(tmp_path, monkeypatch):
    w = write_ct(tmp_path / "v.dcm", np.zeros((16, 16)), patient_id="P")
    ds = pydicom.dcmread(w.path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([bytes(64)])
    ds.save_as(w.path, enforce_file_format=True)
    with pytest.raises(UnusableImage) as info:
        load_image(w.path, SETTINGS)
    assert info.value.reason == "MPEG2 Main Profile / Main Level is not supported: pydicom has no decoder for it"

    # A JPEG 12-bit file on a machine without a JPEG plugin.
    class NoPlugin:
        is_available = False
        missing_dependencies = ["gdcm - requires gdcm>=3.0.10",
                                "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"]

    monkeypatch.setattr(decode_module, "get_decoder", lambda uid: NoPlugin())
    reason = decode_module._decode_failure(JPEGExtended12Bit)
    assert reason == ("cannot decode JPEG Extended (Process 2 and 4): no decoder installed "
                      "(install gdcm or pylibjpeg and pylibjpeg-libjpeg)")
    assert not BARE_UID.search(reason) and not BARE_UID.search(info.value.reason)


def test_a_site_folder_can_mix_syntaxes_frames_and_colour(tmp_path):
    data = tmp_path / "site"
    sources = ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPGExtended.dcm",
               "examples_palette.dcm", "examples_ybr_color.dcm", "rtdose.dcm", "SC_rgb_jpeg_dcmtk.dcm",
               "MR_small_jpeg_ls_lossless.dcm", "image_dfl.dcm"]
    rows = ["path,label"]
    for i, name in enumerate(sources):
        ds = pydicom.dcmread(pydicom_file(name))
        # Distinct identities: several test files share UIDs or lack a PatientID.
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"P{i}"
        target = data / f"f{i}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
        rows.append(f"f{i}.dcm,{DEFAULT_CLASSES[i % 2]}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    site = load_dicom_site(data, tmp_path / "state", ImageSettings(size=16), DEFAULT_CLASSES,
                           val_fraction=0.2)
    assert site.skipped.counts == {}
    assert len(site.train_y) + len(site.val_y) == len(sources)
    every = load_dicom_site(data, tmp_path / "state2", ImageSettings(size=16, frames="all"),
                            DEFAULT_CLASSES, val_fraction=0.2)
    # The 30-frame and the 15-frame file give one image per frame, all of their patient.
    assert len(every.train_y) + len(every.val_y) == len(sources) - 2 + 30 + 15
    assert every.fingerprint == site.fingerprint  # the same images of the same people
