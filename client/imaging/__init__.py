"""A site's image pipeline: a DICOM file in, a normalised (size, size) float32 array out.

- `decode`: reading files and getting one greyscale pixel array, or `UnusableImage`.
- `steps`: the DICOM pixel rules (modality LUT, VOI, MONOCHROME1, resize, normalise).
- `pipeline`: `preprocess` and `load_image`, the steps in order.
- `quiet`: keeps pydicom's warnings and logs, which may quote header values, out of logs.
"""

from .decode import check_image_header, is_colour, pixel_array, read_dicom
from .pipeline import PIPELINE_VERSION, load_image, preprocess
from .quiet import quiet_pydicom
from .unusable import UnusableImage

__all__ = [
    "PIPELINE_VERSION",
    "UnusableImage",
    "check_image_header",
    "is_colour",
    "load_image",
    "pixel_array",
    "preprocess",
    "quiet_pydicom",
    "read_dicom",
]
