"""A site's data set as its executor loads it: from the image cache alone while the site's
folder is unchanged, else after a short-lived child process has scanned the folder and
filled the cache.

The header reads and the decoding load pydicom and its image plugins; in the executor,
which holds torch and the site's images for the whole run, they would stay for good.
`load_site` therefore first works out the folder's `listing_key` (file names, sizes and
times, labels.csv: no file is opened) and builds the data set from the cache whose scan
record matches it (`load_cached_site`). Only when none does, a child
(`python -m fedmed.client.sitedata.fill`) runs the same scan and decode as
`load_dicom_site` -- bad files reported and skipped by the same rules -- and writes the
cache with its scan record into the site's state folder; the executor then reads that.
Arrays, split, skip report and fingerprints are those `load_dicom_site` returns.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from fedmed.client.child_request import ask_child
from fedmed.client.errors import SafeError
from fedmed.common.settings import ImageSettings

from .cache import listing_key, load_listed
from .dataset import SiteData, assemble_site
from .labels import check_classes
from .report import SkipReport
from .split import check_val_fraction

__all__ = ["CacheFillError", "fill_in_child", "load_cached_site", "load_site"]


class CacheFillError(SafeError, RuntimeError):
    """The child that fills the site's image cache failed; the text names no site data."""


def load_cached_site(data_dir: str | os.PathLike[str], state_dir: str | os.PathLike[str], settings: ImageSettings,
                     classes: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> SiteData | None:
    """The site's data set from its image cache, if the cache holds the scan of the folder
    as it is now; else None. Opens no file of the folder but labels.csv."""
    classes = tuple(classes)
    check_classes(classes)
    check_val_fraction(val_fraction)
    root = Path(data_dir)
    cached = load_listed(state_dir, listing_key(root, classes, settings, exclude=[state_dir]), classes, settings)
    if cached is None or cached.scan is None:
        return None
    skipped = SkipReport()
    for where, reason in cached.scan.skipped:
        skipped.add(where, reason)
    return assemble_site(root, cached.scan.files, skipped, cached, settings, classes, val_fraction, seed)


def fill_in_child(data_dir: str | os.PathLike[str], state_dir: str | os.PathLike[str], settings: ImageSettings,
                  classes: Sequence[str]) -> None:
    """Scan the folder and fill its image cache (`fill_cache`) in a child process.

    Raises ValueError with `load_dicom_site`'s text for a folder it would refuse (its
    text names the folder or file: never sent upstream), CacheFillError otherwise."""
    request = {"data_dir": str(data_dir), "state_dir": str(state_dir), "settings": settings.to_dict(),
               "classes": list(classes), "parent": os.getpid()}
    answer, code = ask_child("fedmed.client.sitedata.fill", request)
    if answer is None:
        raise CacheFillError(f"the child reading the site's images into its cache stopped (exit {code}); "
                             "see the lines above")
    if "error" in answer:
        if answer["kind"] == "ValueError":
            raise ValueError(answer["error"])
        raise CacheFillError(f"the child reading the site's images into its cache failed ({answer['kind']}); "
                             "see the lines above")


def load_site(data_dir: str | os.PathLike[str], state_dir: str | os.PathLike[str], settings: ImageSettings,
              classes: Sequence[str], val_fraction: float = 0.2, seed: int = 0,
              say: Callable[[str], None] | None = None) -> SiteData:
    """The site's data set: from the cache while the folder is unchanged, else after a
    child has filled the cache (see the module's text); `say` gets a line when a child
    starts. Raises ValueError as `load_dicom_site` does."""
    # As the child will see them: the cache's keys are over the settings' JSON form.
    settings = ImageSettings.from_dict(settings.to_dict())
    data = load_cached_site(data_dir, state_dir, settings, classes, val_fraction, seed)
    if data is None:
        if say is not None:
            say("reading the site's images into its image cache (new data, changed files or other image settings)")
        fill_in_child(data_dir, state_dir, settings, classes)
        data = load_cached_site(data_dir, state_dir, settings, classes, val_fraction, seed)
    if data is None:
        raise CacheFillError("the site's files changed while they were read into its image cache; "
                             "the next round reads them again")
    return data


def _child() -> int:
    """`python -m fedmed.client.sitedata.fill`: `fill_in_child`'s child; the request as
    JSON on stdin, the answer as one JSON line on stdout. An error's text goes back only
    for the ValueErrors `load_dicom_site` words itself; of any other error, which may
    quote a path or header value, only its type and where it arose are printed."""
    request = json.loads(sys.stdin.read())
    _end_with_parent(int(request["parent"]))
    from .site import fill_cache

    try:
        fill_cache(request["data_dir"], request["state_dir"], ImageSettings.from_dict(request["settings"]),
                   request["classes"])
        answer: dict[str, str] = {}
    except KeyboardInterrupt:  # Ctrl-C at the site's terminal reaches this child too
        return 130
    except Exception as exc:  # noqa: BLE001 — every failure is answered, sanitised
        worded = isinstance(exc, ValueError)
        answer = {"error": str(exc) if worded else "", "kind": "ValueError" if worded else type(exc).__name__}
        if not worded:
            frames = traceback.extract_tb(exc.__traceback__)
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-4:]))
            print(f"[fedmed site] reading the site's images failed: {type(exc).__name__} at {where} "
                  "(message withheld: it may quote site data)", file=sys.stderr, flush=True)
    print(json.dumps(answer), flush=True)
    return 0


_PR_SET_PDEATHSIG = 1  # Linux prctl(): a signal for this process when its parent ends


def _end_with_parent(parent: int) -> None:
    """Stop when the executor does (Linux): a fill left running after the site stopped
    would write the cache beside the next start's own fill."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the signal was asked for
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(_child())
