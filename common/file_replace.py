"""A text file written whole or not at all.

Run folders and state folders are read while they are written (the coordinator's launcher
follows its run folder, a simulation reads its sites' state folders, a restarted process
reads what the last one left): a reader must see the old file or the new one, never half
of either. The text goes to a temporary file beside the target, named by the writing
process, and is then renamed over it, which POSIX makes atomic within a folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_text(path: str | os.PathLike[str], text: str) -> None:
    """Make `text` the content of `path` at once (UTF-8)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
