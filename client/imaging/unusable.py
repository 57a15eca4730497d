"""The one exception every unusable image ends in."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class UnusableImage(Exception):
    """A file that cannot become a model input.

    `reason` is a short fixed phrase ("not a DICOM file", "no pixel data", ...). Reasons
    are counted per site and the counts may leave the site, so a reason never carries a
    value from a file's header (names, IDs, UIDs, dates) nor a file's path.

    `partial` is what could be read of a file cut short, so the site can still match the
    file to its label; it is kept out of the exception's args and so out of its text.
    """

    def __init__(self, reason: str, *, partial: Dataset | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
