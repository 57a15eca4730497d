"""The SuperNode's "a task is waiting" signal to the site's executor.

The executor takes tasks from the SuperNode's Runtime API (`AcquireTask`), which
answers at once, with or without a task. Instead of asking every half second, the
executor sleeps on a named pipe in the site's state folder; the SuperNode writes a byte
to it as soon as it has stored a message and created its task (`fleet_polling`), and
the executor asks then. The pipe carries no data, only the wake-up: the task itself
still comes through the Runtime API. It lives in the state folder (mode 0700), so only
the site's own user can open it, and a stray byte costs one `AcquireTask` that finds
nothing.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from pathlib import Path

FILE_NAME = "executor.wake"


def signal_path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE_NAME


def state_dir_of(path: Path) -> Path:
    """The site's state folder that holds the pipe `path` (`signal_path`'s inverse): both
    sides of the pipe keep other per-site markers there (`confirmed_messages`)."""
    return Path(path).parent


def notify(path: Path) -> bool:
    """Wake whoever waits on `path`; False (and nothing else) when no one does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no such pipe, or no reader (ENXIO): the executor asks on its own at start
        return False
    try:
        os.write(fd, b"!")
    except OSError as exc:  # a full pipe already holds a wake-up
        return exc.errno == errno.EAGAIN
    finally:
        os.close(fd)
    return True


class TaskSignal:
    """The waiting end, opened by the executor."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.exists() and not stat.S_ISFIFO(path.lstat().st_mode):
            path.unlink()
        if not path.exists():
            os.mkfifo(path, 0o600)
        # Read-write, so the pipe always has a writer: a read end alone would see end-of-file
        # after every wake-up and never block again.
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def wait(self, timeout: float) -> bool:
        """Block until woken or `timeout` seconds passed; True when woken."""
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return False
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        os.close(self._fd)
