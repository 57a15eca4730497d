"""Settings that travel with a run and with a saved model.

`ImageSettings` is how a site turns a DICOM file into the model's input. It is part of a
run's configuration (every site preprocesses alike) and is stored inside every saved model,
so that prediction preprocesses exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_CLASSES: tuple[str, ...] = ("normal", "abnormal")


@dataclass(frozen=True)
class ImageSettings:
    """How a stored image becomes a model input.

    size: the square side, in pixels, every image is resized to.
    window: (center, width) applied after the modality LUT, overriding any VOI LUT or
        window in the files; None uses the file's VOI LUT / window, and min–max scaling
        for files that have neither.
    mean, std: the normalisation applied to the [0, 1] windowed image.
    """

    size: int = 64
    window: tuple[float, float] | None = None
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"image size: expected at least 8 pixels, got {self.size}")
        if self.window is not None and float(self.window[1]) <= 0:
            raise ValueError(f"window: expected a positive width, got {self.window[1]}")
        if self.std <= 0:
            raise ValueError(f"std: expected a positive value, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window) if self.window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageSettings":
        window = d.get("window")
        return cls(
            size=int(d.get("size", 64)),
            window=(float(window[0]), float(window[1])) if window else None,
            mean=float(d.get("mean", 0.5)),
            std=float(d.get("std", 0.5)),
        )
