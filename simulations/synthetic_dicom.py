"""Synthetic chest-CT sites: folders of DICOM slices that differ the way real scanners do.

`write_sites` writes one folder per site, each holding CT-like axial slices plus a
`labels.csv` (`SOPInstanceUID,label`). A slice is `abnormal` when its patient has one or
more lung nodules; every slice of a patient shares that label, and the slices of a patient
are near-copies of each other, so splitting a site by slice instead of by patient leaks.

The sites are deliberately heterogeneous, fixed by a site's position in the list (the
profiles cycle after the third site):

====  ======  =========================  ===========  ===================  ========
site  matrix  storage -> modality LUT    photometric  transfer syntax      abnormal
====  ======  =========================  ===========  ===================  ========
0     128     unsigned, HU = s - 1024    MONOCHROME2  Explicit VR LE       50 %
1     96      signed, HU = s             MONOCHROME2  RLE Lossless         30 %
2     160     unsigned, out = 2 s - 3072 MONOCHROME1  Implicit VR LE       15 %
====  ======  =========================  ===========  ===================  ========

plus per-site pixel spacing, slice spacing, noise, a small HU calibration offset, window
(lung or mediastinal) and folder layout (nested, flat, by study). Files must therefore be
grouped by their tags, never by their paths.

The MONOCHROME1 site stores its image inverted, as MONOCHROME1 devices do: its modality
LUT output is the *negated* Hounsfield value (Rescale Type ``US``, window centre negated
too), so the standard display pipeline -- modality LUT, the file's window, then inversion
for MONOCHROME1 -- shows air dark and bone bright like every other site. Its true HU is
``-(slope * stored + intercept)``; a window given in HU does not apply to it directly.

Everything is a function of the seed: UIDs are derived from it, dates are fixed, and each
site draws from its own seeded generator, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from fedmed.common.settings import DEFAULT_CLASSES

NORMAL, ABNORMAL = DEFAULT_CLASSES[0], DEFAULT_CLASSES[1]

# Nominal Hounsfield values of the tissues drawn, before a site's offset and noise.
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "lung": -850.0,
    "fat": -100.0,
    "soft_tissue": 40.0,
    "bone": 700.0,
}

# Name-based UUIDs under this namespace keep our UIDs apart from any other generator's.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "fedmed:simulations/synthetic_dicom/v1")


def _name_uid(*parts: object) -> UID:
    """A reproducible UID for `parts`: a name-based (version 5) UUID under the 2.25 arc.

    pydicom's generate_uid ignores its entropy sources when asked for a 2.25 UID (it
    returns a random one), and otherwise concatenates them without a separator, so that
    ("A1", "2") and ("A", "12") would collide.
    """
    name = "\x1f".join(map(str, parts))
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


IMPLEMENTATION_CLASS_UID = _name_uid("implementation")
IMPLEMENTATION_VERSION_NAME = "FEDMED_SYNTH_1"

_BASE_STUDY_DATE = dt.date(2024, 1, 8)
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_SLICES_PER_PATIENT = (4, 8)


@dataclass(frozen=True)
class SiteProfile:
    """How one site's scanner acquires, stores and exports its slices.

    sign: +1 stores HU; -1 stores negated HU (the inverted MONOCHROME1 site).
    window_hu: (center, width) of the site's default window, in HU.
    layout: "nested" (patient/study/n.dcm), "flat" (uid.dcm) or "by_study" (study/IMn.dcm).
    """

    matrix: int
    field_of_view_mm: float
    slice_spacing_mm: float
    noise_hu: float
    offset_hu: float
    abnormal_fraction: float
    pixel_representation: int
    bits_stored: int
    slope: float
    intercept: float
    sign: int
    photometric: str
    transfer_syntax: UID
    window_hu: tuple[float, float]
    layout: str
    manufacturer: str
    kernel: str

    @property
    def pixel_spacing_mm(self) -> float:
        return self.field_of_view_mm / self.matrix


PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        matrix=128, field_of_view_mm=420.0, slice_spacing_mm=1.0, noise_hu=15.0,
        offset_hu=0.0, abnormal_fraction=0.50, pixel_representation=0, bits_stored=12,
        slope=1.0, intercept=-1024.0, sign=1, photometric="MONOCHROME2",
        transfer_syntax=ExplicitVRLittleEndian, window_hu=(-600.0, 1500.0),
        layout="nested", manufacturer="Synthetic Scanners Alpha", kernel="B45f",
    ),
    SiteProfile(
        matrix=96, field_of_view_mm=380.0, slice_spacing_mm=1.25, noise_hu=25.0,
        offset_hu=15.0, abnormal_fraction=0.30, pixel_representation=1, bits_stored=16,
        slope=1.0, intercept=0.0, sign=1, photometric="MONOCHROME2",
        transfer_syntax=RLELossless, window_hu=(40.0, 400.0),
        layout="flat", manufacturer="Synthetic Scanners Beta", kernel="STANDARD",
    ),
    SiteProfile(
        matrix=160, field_of_view_mm=450.0, slice_spacing_mm=0.8, noise_hu=10.0,
        offset_hu=-20.0, abnormal_fraction=0.15, pixel_representation=0, bits_stored=12,
        slope=2.0, intercept=-3072.0, sign=-1, photometric="MONOCHROME1",
        transfer_syntax=ImplicitVRLittleEndian, window_hu=(-550.0, 1400.0),
        layout="by_study", manufacturer="Synthetic Scanners Gamma", kernel="FC52",
    ),
)


def profile_for(index: int) -> SiteProfile:
    """The scanner profile of the site at `index` in the site list (profiles cycle)."""
    return PROFILES[index % len(PROFILES)]


@dataclass(frozen=True)
class SiteSummary:
    """What was written for one site."""

    site: str
    path: Path
    images: int
    patients: int
    abnormal: int
    matrix: int
    pixel_spacing_mm: float
    photometric: str
    transfer_syntax: str

    @property
    def abnormal_fraction(self) -> float:
        return self.abnormal / self.images if self.images else 0.0

    def __str__(self) -> str:
        # One line for the CLI and the demo; repr() keeps every field.
        return (
            f"{self.images} images, {self.patients} patients, {self.abnormal} abnormal "
            f"({self.abnormal_fraction:.0%}), {self.matrix}x{self.matrix} at "
            f"{self.pixel_spacing_mm:.2f} mm, {self.photometric}, {self.transfer_syntax}"
        )


# --- anatomy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ellipse:
    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0


@dataclass(frozen=True)
class _Nodule:
    x: float
    y: float
    z: float
    radius: float
    hu: float


@dataclass(frozen=True)
class _Anatomy:
    """One patient's chest, shared by all of that patient's slices.

    Millimetres in DICOM patient axes: x towards the patient's left, y posterior.
    """

    body: _Ellipse
    fat_mm: float
    lungs: tuple[_Ellipse, _Ellipse]
    vertebra: _Ellipse
    canal: _Ellipse
    ribs: tuple[_Ellipse, ...]
    vessels: tuple[tuple[float, float, float], ...]
    nodules: tuple[_Nodule, ...] = field(default=())


def _draw_anatomy(rng: np.random.Generator, abnormal: bool) -> _Anatomy:
    """Draw one patient's chest; abnormal patients get 1-3 nodules, the first on the slab's centre."""
    a = rng.uniform(140.0, 175.0)
    b = a * rng.uniform(0.62, 0.75)
    body = _Ellipse(rng.uniform(-12, 12), rng.uniform(-10, 10), a, b)
    lungs = tuple(
        _Ellipse(
            body.cx + side * a * rng.uniform(0.42, 0.48),
            body.cy - b * rng.uniform(0.02, 0.10),
            a * rng.uniform(0.30, 0.35),
            b * rng.uniform(0.60, 0.70),
            side * rng.uniform(0.0, 0.25),
        )
        for side in (-1, 1)
    )
    vr = rng.uniform(14.0, 18.0)
    vertebra = _Ellipse(body.cx, body.cy + b * 0.62, vr, vr * 0.9)
    canal = _Ellipse(body.cx, vertebra.cy + vr + 6.0, 6.5, 6.0)
    ribs = tuple(_rib(body, angle, rng) for angle in np.linspace(0.35, np.pi - 0.35, 6))
    # Vessels are small round distractors in both classes; a nodule is larger.
    vessels = tuple(
        (*_point_in(lungs[int(rng.integers(2))], rng, 0.85), rng.uniform(1.2, 2.8))
        for _ in range(int(rng.integers(6, 13)))
    )
    nodules: tuple[_Nodule, ...] = ()
    if abnormal:
        nodules = tuple(
            _nodule(lungs[int(rng.integers(2))], rng, 0.0 if i == 0 else None)
            for i in range(int(rng.integers(1, 4)))
        )
    return _Anatomy(body, rng.uniform(6.0, 18.0), lungs, vertebra, canal, ribs, vessels, nodules)


def _rib(body: _Ellipse, angle: float, rng: np.random.Generator) -> _Ellipse:
    """A rib cross-section just inside the body outline; angle 0 is left, pi/2 posterior."""
    r = rng.uniform(5.0, 7.0)
    inset = rng.uniform(0.86, 0.92)
    x = body.cx + np.cos(angle) * body.a * inset
    y = body.cy + np.sin(angle) * body.b * inset
    return _Ellipse(float(x), float(y), r, r * 0.7, float(angle))


def _point_in(ellipse: _Ellipse, rng: np.random.Generator, reach: float) -> tuple[float, float]:
    """A uniform point within `reach` of the ellipse's normalised radius."""
    rho = reach * np.sqrt(rng.uniform())
    theta = rng.uniform(0, 2 * np.pi)
    u, v = rho * ellipse.a * np.cos(theta), rho * ellipse.b * np.sin(theta)
    c, s = np.cos(ellipse.angle), np.sin(ellipse.angle)
    return float(ellipse.cx + c * u - s * v), float(ellipse.cy + s * u + c * v)


def _nodule(lung: _Ellipse, rng: np.random.Generator, z: float | None) -> _Nodule:
    """A solid nodule well inside a lung; `z` None places it anywhere near the slab."""
    radius = rng.uniform(7.0, 14.0)
    x, y = _point_in(lung, rng, 0.6)
    z_pos = z if z is not None else rng.uniform(-8.0, 8.0)
    return _Nodule(x, y, z_pos, radius, rng.uniform(30.0, 60.0))


# --- rendering ----------------------------------------------------------------------------


def _axis(profile: SiteProfile) -> np.ndarray:
    """Pixel-centre coordinates in mm along either axis, origin at the image centre."""
    n, ps = profile.matrix, profile.pixel_spacing_mm
    return (np.arange(n) - (n - 1) / 2.0) * ps


def _paint(img: np.ndarray, axis: np.ndarray, e: _Ellipse, hu: float, edge_mm: float) -> None:
    """Blend `hu` into the pixels the ellipse covers.

    Coverage ramps over one pixel at the border, which mimics partial volume. Only the
    ellipse's bounding box is computed: most shapes are a few pixels wide.
    """
    reach = max(e.a, e.b) + 2 * edge_mm
    cols = slice(*np.searchsorted(axis, (e.cx - reach, e.cx + reach)))
    rows = slice(*np.searchsorted(axis, (e.cy - reach, e.cy + reach)))
    dx, dy = axis[cols][None, :] - e.cx, axis[rows][:, None] - e.cy
    if dx.size == 0 or dy.size == 0:
        return
    c, s = np.cos(e.angle), np.sin(e.angle)
    rho = np.hypot((c * dx + s * dy) / e.a, (c * dy - s * dx) / e.b)
    outside_mm = (rho - 1.0) * np.sqrt(e.a * e.b)
    cover = np.clip(0.5 - outside_mm / edge_mm, 0.0, 1.0)
    patch = img[rows, cols]
    patch += cover * (hu - patch)


def _render_background(anatomy: _Anatomy, axis: np.ndarray, profile: SiteProfile) -> np.ndarray:
    """The parts of a patient's slices that do not change along the slab, in HU."""
    edge = profile.pixel_spacing_mm
    img = np.full((axis.size, axis.size), TISSUE_HU["air"])
    body = anatomy.body
    _paint(img, axis, body, TISSUE_HU["fat"], edge)
    inner = _Ellipse(body.cx, body.cy, body.a - anatomy.fat_mm, body.b - anatomy.fat_mm)
    _paint(img, axis, inner, TISSUE_HU["soft_tissue"], edge)
    for rib in anatomy.ribs:
        _paint(img, axis, rib, TISSUE_HU["bone"], edge)
    return img


def _render_hu(anatomy: _Anatomy, background: np.ndarray, dz: float, axis: np.ndarray,
               profile: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """One noisy axial slice in HU, `dz` mm from the slab centre."""
    edge = profile.pixel_spacing_mm
    img = background.copy()
    # Lungs shrink slowly towards the feet, so neighbouring slices are alike but not equal.
    scale = 1.0 - 0.004 * dz
    for lung in anatomy.lungs:
        grown = _Ellipse(lung.cx, lung.cy, lung.a * scale, lung.b * scale, lung.angle)
        _paint(img, axis, grown, TISSUE_HU["lung"], edge)
    for x, y, r in anatomy.vessels:
        _paint(img, axis, _Ellipse(x, y, r, r), TISSUE_HU["soft_tissue"], edge)
    for nod in anatomy.nodules:
        r2 = nod.radius**2 - (dz - nod.z) ** 2
        if r2 > 1.0:
            r = float(np.sqrt(r2))
            _paint(img, axis, _Ellipse(nod.x, nod.y, r, r), nod.hu, edge)
    _paint(img, axis, anatomy.vertebra, TISSUE_HU["bone"], edge)
    _paint(img, axis, anatomy.canal, 20.0, edge)
    img += profile.offset_hu + rng.normal(0.0, profile.noise_hu, img.shape)
    return img


def _to_stored(hu: np.ndarray, profile: SiteProfile) -> np.ndarray:
    """HU to the site's stored values: its sign, rescale and integer range."""
    stored = np.rint((profile.sign * hu - profile.intercept) / profile.slope)
    if profile.pixel_representation:
        lo, hi, dtype = -(2 ** (profile.bits_stored - 1)), 2 ** (profile.bits_stored - 1) - 1, "<i2"
    else:
        lo, hi, dtype = 0, 2**profile.bits_stored - 1, "<u2"
    return np.clip(stored, lo, hi).astype(dtype)


# --- patients and files -------------------------------------------------------------------


@dataclass(frozen=True)
class _Patient:
    index: int
    patient_id: str
    slices: int
    abnormal: bool


def _plan_patients(site: str, n_images: int, fraction: float, rng) -> list[_Patient]:
    """Split a site's images into patients and choose abnormal ones to approach `fraction`."""
    sizes: list[int] = []
    while sum(sizes) < n_images:
        sizes.append(min(int(rng.integers(_SLICES_PER_PATIENT[0], _SLICES_PER_PATIENT[1] + 1)),
                         n_images - sum(sizes)))
    target = round(fraction * n_images)
    abnormal: set[int] = set()
    count = 0
    for i in rng.permutation(len(sizes)):
        # Take a patient when it brings the count closer to the target than leaving it out.
        if abs(count + sizes[i] - target) < abs(count - target):
            abnormal.add(int(i))
            count += sizes[i]
    return [
        _Patient(i, f"{site}{i + 1:04d}", size, i in abnormal) for i, size in enumerate(sizes)
    ]


def _uid(seed: int, site: str, *parts: object) -> UID:
    """A UID of one site in one run: the seed and site name always enter it."""
    return _name_uid(seed, site, *parts)


def _patient_dataset(site: str, profile: SiteProfile, patient: _Patient, seed: int, rng) -> Dataset:
    """The tags shared by all slices of one patient's series."""
    ds = Dataset()
    study_date = _BASE_STUDY_DATE + dt.timedelta(days=int(rng.integers(0, 365)))
    age = int(rng.integers(40, 86))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}00"
    ds.AcquisitionTime = ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = f"{site[:4].upper()}{patient.index + 1:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = f"Synthetic Hospital {site}"
    ds.ReferringPhysicianName = ""
    ds.StationName = f"CT-{site}"[:16]
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = "Synthetic chest slab"
    ds.ManufacturerModelName = "SynthCT"
    ds.PatientName = f"SYNTH^{patient.patient_id}"
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = f"{study_date.year - age}0101"
    ds.PatientSex = "F" if rng.uniform() < 0.5 else "M"
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = profile.slice_spacing_mm
    ds.KVP = 120
    ds.ConvolutionKernel = profile.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = _uid(seed, site, patient.patient_id, "study")
    ds.SeriesInstanceUID = _uid(seed, site, patient.patient_id, "series")
    ds.StudyID = f"{patient.index + 1}"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = _uid(seed, site, patient.patient_id, "frame")
    ds.PositionReferenceIndicator = ""
    _set_pixel_module(ds, profile)
    return ds


def _set_pixel_module(ds: Dataset, profile: SiteProfile) -> None:
    """Image pixel, modality LUT and VOI LUT attributes of the site's storage."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile.photometric
    ds.Rows = ds.Columns = profile.matrix
    ds.PixelSpacing = [round(profile.pixel_spacing_mm, 6)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = profile.pixel_representation
    center, width = profile.window_hu
    ds.WindowCenter = profile.sign * center
    ds.WindowWidth = width
    ds.RescaleIntercept = profile.intercept
    ds.RescaleSlope = profile.slope
    # CT requires Rescale Type only when the output is not HU, as for the inverted site.
    ds.RescaleType = "HU" if profile.sign > 0 else "US"


def _slice_dataset(base: Dataset, profile: SiteProfile, k: int, z: float, uid: UID,
                   pixels: np.ndarray) -> Dataset:
    """A copy of the patient's tags completed with one slice's position and pixels."""
    # Fresh elements: assigning to an existing tag mutates its element, which a shallow copy
    # would share with every other slice (and deepcopy is slow).
    ds = Dataset()
    for elem in base:
        ds.add(DataElement(elem.tag, elem.VR, elem.value))
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = k + 1
    origin = -(profile.matrix - 1) / 2.0 * profile.pixel_spacing_mm
    ds.ImagePositionPatient = [round(origin, 4), round(origin, 4), round(z, 4)]
    ds.SliceLocation = round(z, 4)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = profile.transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    if profile.transfer_syntax == RLELossless:
        # pydicom would otherwise give the compressed copy a fresh random SOP Instance UID.
        ds.compress(RLELossless, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
    return ds


def _relative_path(profile: SiteProfile, ds: Dataset, running: int) -> Path:
    """Where a slice goes inside its site folder; deliberately different per site."""
    study_short = ds.StudyInstanceUID.rsplit(".", 1)[-1][-8:]
    if profile.layout == "nested":
        return Path(ds.PatientID) / study_short / f"{int(ds.InstanceNumber):03d}.dcm"
    if profile.layout == "flat":
        return Path(f"{ds.SOPInstanceUID}.dcm")
    return Path(f"ST{study_short}") / f"IM{running:05d}.dcm"


def _write_site(site_dir: Path, site: str, index: int, profile: SiteProfile, n_images: int,
                seed: int, tick: Callable[[], None]) -> SiteSummary:
    """Write one site's slices and labels.csv."""
    rng = np.random.default_rng([seed, index, zlib.crc32(site.encode())])
    axis = _axis(profile)
    patients = _plan_patients(site, n_images, profile.abnormal_fraction, rng)
    rows: list[tuple[str, str]] = []
    running = 0
    for patient in patients:
        base = _patient_dataset(site, profile, patient, seed, rng)
        z_center = -float(rng.uniform(80.0, 200.0))
        anatomy = _draw_anatomy(rng, patient.abnormal)
        background = _render_background(anatomy, axis, profile)
        for k in range(patient.slices):
            dz = (k - (patient.slices - 1) / 2.0) * profile.slice_spacing_mm
            pixels = _to_stored(_render_hu(anatomy, background, dz, axis, profile, rng), profile)
            uid = _uid(seed, site, patient.patient_id, "image", k)
            ds = _slice_dataset(base, profile, k, z_center - dz, uid, pixels)
            running += 1
            path = site_dir / _relative_path(profile, ds, running)
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            rows.append((str(uid), ABNORMAL if patient.abnormal else NORMAL))
            tick()
    _write_labels(site_dir / "labels.csv", rows)
    return SiteSummary(
        site=site,
        path=site_dir,
        images=len(rows),
        patients=len(patients),
        abnormal=sum(label == ABNORMAL for _, label in rows),
        matrix=profile.matrix,
        pixel_spacing_mm=profile.pixel_spacing_mm,
        photometric=profile.photometric,
        transfer_syntax=profile.transfer_syntax.name,
    )


def _write_labels(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["SOPInstanceUID", "label"])
        writer.writerows(rows)


def _check_arguments(out_dir: Path, sites: Sequence[str], images_per_site: int) -> None:
    if isinstance(sites, str):
        raise ValueError(f"sites: expected a sequence of site names, got the string {sites!r}")
    if not sites:
        raise ValueError("sites: expected at least one site name, got none")
    for site in sites:
        if not _SITE_NAME.match(site):
            raise ValueError(
                f"sites: expected names of letters, digits, '_', '-' or '.' "
                f"(at most 32, not starting with a symbol), got {site!r}"
            )
    if len(set(sites)) != len(sites):
        raise ValueError(f"sites: expected distinct names, got {list(sites)}")
    if images_per_site < 1:
        raise ValueError(f"images per site: expected at least 1, got {images_per_site}")
    for site in sites:
        site_dir = out_dir / site
        # Refuse to mix with an earlier run: stale files would carry other labels and UIDs.
        if site_dir.exists() and any(site_dir.iterdir()):
            raise FileExistsError(f"synthetic data: {site_dir} already exists and is not empty")


def write_sites(
    out_dir: Path,
    sites: Sequence[str] = ("A", "B", "C"),
    images_per_site: int = 120,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, SiteSummary]:
    """Write `out_dir/<site>/` for each site: DICOM slices and `labels.csv`.

    Site i uses scanner profile ``PROFILES[i % 3]`` (see the module docstring). The same
    arguments always give byte-identical files. `progress(done, total)` is called after
    every image. Returns each site's summary, in the order given.

    Raises ValueError for bad arguments and FileExistsError when a site folder already
    holds files.
    """
    out_dir = Path(out_dir)
    _check_arguments(out_dir, sites, images_per_site)
    total = len(sites) * images_per_site
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    summaries: dict[str, SiteSummary] = {}
    for index, site in enumerate(sites):
        site_dir = out_dir / site
        site_dir.mkdir(parents=True, exist_ok=True)
        summaries[site] = _write_site(site_dir, site, index, profile_for(index), images_per_site, seed, tick)
    return summaries
