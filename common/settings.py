"""Settings that travel with a run and with a saved model.

`ImageSettings` is how a site turns a DICOM file into the model's input. It is part of a
run's configuration (every site preprocesses alike) and is stored inside every saved model,
so that prediction preprocesses exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Modalities whose images are greyscale by nature; a colour file given to a model trained
# only on these is almost surely something else (a screenshot, an ultrasound, a photo).
GREYSCALE_MODALITIES = frozenset({"CT", "MR", "CR", "DX", "DR", "MG", "PT", "NM", "XA", "RF", "RG", "IO", "PX"})

DEFAULT_CLASSES: tuple[str, ...] = ("normal", "abnormal")
# How a multi-frame file (cine loop, volume, tomosynthesis) becomes model inputs.
FRAME_POLICIES: tuple[str, ...] = ("middle", "all", "mip")


@dataclass(frozen=True)
class ImageSettings:
    """How a stored image becomes a model input.

    size: the square side, in pixels, every image is resized to.
    window: (center, width) applied after the modality LUT, overriding any VOI LUT or
        window in the files; None uses the file's VOI LUT / window, and min–max scaling
        for files that have neither.
    mean, std: the normalisation applied to the [0, 1] windowed image.
    frames: what a multi-frame file gives (single-frame files are unaffected):
        "middle" (default) its middle frame, one image per file as for any other file;
        "all" every frame as its own image of the same patient, with the file's label;
        "mip" one maximum-intensity projection over all frames.
        "middle" is the default because a label is given to a file: one image per file
        keeps a site's image count, its class balance and the privacy unit of DP-SGD (one
        record) what the site admin sees. With "all", one labelled file becomes many
        records, so DP's guarantee is per frame, not per file (docs/privacy.md).
    modalities: the DICOM Modality codes the federation trains on (e.g. ("CT",)), declared
        by the coordinator; a site leaves out images of any other modality (counted as
        "modality not in the run's list"). Empty: any modality. It is what a saved model
        says it was trained on (`trained_on`), so `predict` can warn about an MR image
        given to a CT model without any site having sent a statistic of its data.
    """

    size: int = 64
    window: tuple[float, float] | None = None
    mean: float = 0.5
    std: float = 0.5
    frames: str = "middle"
    modalities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"image size: expected at least 8 pixels, got {self.size}")
        if self.window is not None and float(self.window[1]) <= 0:
            raise ValueError(f"window: expected a positive width, got {self.window[1]}")
        if self.std <= 0:
            raise ValueError(f"std: expected a positive value, got {self.std}")
        for code in self.modalities:
            if not code or not code.isalnum() or code != code.upper() or len(code) > 16:
                raise ValueError(f"modalities: expected DICOM Modality codes such as CT, MR, DX, got {code!r}")
        if self.frames not in FRAME_POLICIES:
            raise ValueError(f"frames: expected one of {', '.join(FRAME_POLICIES)}, got {self.frames!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window) if self.window is not None else None
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageSettings":
        window = d.get("window")
        return cls(
            size=int(d.get("size", 64)),
            window=(float(window[0]), float(window[1])) if window else None,
            mean=float(d.get("mean", 0.5)),
            std=float(d.get("std", 0.5)),
            # Runs and models saved before the setting existed refused multi-frame files,
            # so any policy reproduces them; "middle" is the default.
            frames=str(d.get("frames") or "middle"),
            modalities=tuple(str(m) for m in d.get("modalities") or ()),
        )


def trained_on(settings: ImageSettings) -> dict[str, Any]:
    """What a saved model was trained on, as far as the run's settings say: the declared
    modalities (None: not declared), the photometric family every image was turned into
    (the pipeline makes each input grey: MONOCHROME1 inverted, colour by luma) and the
    model's input side. Taken from the coordinator's own settings only: no site sends a
    statistic of its images for it (docs/privacy.md)."""
    return {
        "modalities": list(settings.modalities) or None,
        "photometric": "greyscale",
        "input_size": settings.size,
        "frames": settings.frames,
        "source": "run image settings",
    }
