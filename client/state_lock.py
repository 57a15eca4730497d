"""One site process per state folder.

A site's state folder holds its privacy ledger and plan: two `fedmed client` processes on
one folder would both spend the same budget and clash on the ledger a round later. So
`fedmed client` holds an OS lock (`flock`) on `STATE/site.lock` while it runs, and a
second process on the same folder is refused at start. The kernel drops the lock when
the holder ends, however it ends (a crash, SIGKILL, a power cut), so a stale lock never
blocks a restart; the PID written in the file is only there to name the holder.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no lock (fedmed's sites run on Linux)
    fcntl = None

LOCK_FILE = "site.lock"


class StateLocked(RuntimeError):
    """Another process holds the state folder; the message says which and what to do."""


@contextmanager
def state_lock(state_dir: Path, flag: str = "--state") -> Iterator[None]:
    """Hold the state folder's lock for the duration of the block."""
    if fcntl is None:
        yield
        return
    path = Path(state_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise StateLocked(f"{flag} {state_dir}: this state folder is in use by another fedmed process "
                              f"(pid {holder}); stop that one first, or give this site its own {flag} "
                              "folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
