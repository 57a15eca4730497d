"""A site's image pipeline: a DICOM file in, a normalised (size, size) float32 array out.

- `decode`: reading files, decoding a frame (any transfer syntax pydicom's installed
  plugins decode), or `UnusableImage`.
- `steps`: the DICOM pixel rules (frame choice, per-frame header, modality LUT, VOI,
  MONOCHROME1, palette, luma, projection, resize, normalise).
- `pipeline`: `preprocess_images` / `load_images` (and the one-image `preprocess` /
  `load_image`), the steps in order.
- `version`: `PIPELINE_VERSION`, the chain's name that image caches are keyed by.
- `quiet`: keeps pydicom's warnings and logs, which may quote header values, out of logs.

The names below are loaded on first use: a site's executor reads its image cache (which
needs `PIPELINE_VERSION` only) without loading pydicom, whose decoding runs in a
short-lived child (`fedmed.client.sitedata.fill`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedmed.common.lazy_names import lazy_names

_HOMES = {
    "check_image_header": "decode",
    "frame_count": "decode",
    "image_kind": "decode",
    "is_colour": "decode",
    "pixel_array": "decode",
    "read_dicom": "decode",
    "syntax_name": "decode",
    "PIPELINE_VERSION": "version",
    "load_image": "pipeline",
    "load_images": "pipeline",
    "preprocess": "pipeline",
    "preprocess_images": "pipeline",
    "quiet_pydicom": "quiet",
    "UnusableImage": "unusable",
}

__all__ = sorted(_HOMES)

if TYPE_CHECKING:
    from .decode import check_image_header, frame_count, image_kind, is_colour, pixel_array, read_dicom, syntax_name
    from .pipeline import load_image, load_images, preprocess, preprocess_images
    from .quiet import quiet_pydicom
    from .unusable import UnusableImage
    from .version import PIPELINE_VERSION


__getattr__ = lazy_names(__name__, _HOMES, globals())
