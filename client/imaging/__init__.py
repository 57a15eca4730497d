"""A site's image pipeline: a DICOM file in, a normalised (size, size) float32 array out.

- `decode`: reading files, decoding a frame (any transfer syntax pydicom's installed
  plugins decode), or `UnusableImage`.
- `steps`: the DICOM pixel rules (frame choice, per-frame header, modality LUT, VOI,
  MONOCHROME1, palette, luma, projection, resize, normalise).
- `pipeline`: `preprocess_images` / `load_images` (and the one-image `preprocess` /
  `load_image`), the steps in order.
- `quiet`: keeps pydicom's warnings and logs, which may quote header values, out of logs.
"""

from .decode import (
    check_image_header,
    frame_count,
    image_kind,
    is_colour,
    pixel_array,
    read_dicom,
    syntax_name,
)
from .pipeline import PIPELINE_VERSION, load_image, load_images, preprocess, preprocess_images
from .quiet import quiet_pydicom
from .unusable import UnusableImage

__all__ = [
    "PIPELINE_VERSION",
    "UnusableImage",
    "check_image_header",
    "frame_count",
    "image_kind",
    "is_colour",
    "load_image",
    "load_images",
    "pixel_array",
    "preprocess",
    "preprocess_images",
    "quiet_pydicom",
    "read_dicom",
    "syntax_name",
]
