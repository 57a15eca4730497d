"""A site folder's files as the site sees them before any is read: the candidate files
below it (`list_files`) and, once their headers are read, the usable labelled ones
(`SiteFile`). Nothing here reads a file's contents, so a site's executor uses it without
loading pydicom."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .labels import LABELS_FILE

__all__ = ["SiteFile", "list_files"]


@dataclass(frozen=True)
class SiteFile:
    """A usable, labelled image file of a site. Stays at the site."""

    relpath: str  # relative to the site folder, POSIX separators
    size: int
    mtime_ns: int
    sop_uid: str
    patient: str  # grouping key for the split: "patient:<PatientID>", "study:..." or "image:..."
    label: int  # index into the class list
    modality: str = ""  # the header's Modality code ("" when absent)


def list_files(root: Path, exclude: Iterable[str | os.PathLike[str]] = ()) -> tuple[list[str], list[str]]:
    """(every candidate file below `root`, sorted; every sub-folder that could not be
    listed, as "relative/path/"), both relative with POSIX separators."""
    root = Path(root)
    skip = [Path(p).resolve() for p in exclude]
    unreadable: list[str] = []

    def failed(error: OSError) -> None:
        where = Path(error.filename or root)
        rel = where.relative_to(root).as_posix() if where != root else "."
        unreadable.append(rel + "/")

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=failed):
        here = Path(dirpath)
        dirnames[:] = [
            d for d in dirnames
            if not d.startswith(".") and d != "__MACOSX" and (here / d).resolve() not in skip
        ]
        for name in filenames:
            if name.startswith("."):
                continue
            rel = (here / name).relative_to(root).as_posix()
            if rel != LABELS_FILE:
                found.append(rel)
    return sorted(found), sorted(unreadable)
