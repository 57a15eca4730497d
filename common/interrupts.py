"""Stopping at once on Ctrl-C or SIGTERM where the work cannot be unwound in time.

Flower's simulation runs the ServerApp in a thread that keeps waiting for replies after
a KeyboardInterrupt reaches the main thread, and Ray's processes print their own
tracebacks: the process then hangs for minutes and needs a second Ctrl-C. Inside
`stop_at_once(...)` a Ctrl-C or SIGTERM instead runs `on_stop` (which records the stop,
e.g. writes the run folder's status.json), prints the one line it returns, and ends the
process with exit code 130. Ray's own processes end with it: Ray ties their lives to
the process that started them.

The signal is taken from Python's wakeup file descriptor by a thread of its own, so it
is acted on even while the main thread sits in a long call that does not return to
Python.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

EXIT_INTERRUPTED = 130
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_at_once(on_stop: Callable[[str], str]) -> Iterator[None]:
    """Within the block, Ctrl-C/SIGTERM call `on_stop(signal name)`, print the line it
    returns and exit 130. Outside the main thread (no signals there) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    finished = threading.Event()

    def watch() -> None:
        ours = {int(s) for s in _SIGNALS}
        while True:  # the wakeup fd carries every signal Python handles; act on ours only
            try:
                data = reader.recv(1)
            except OSError:
                return
            if finished.is_set() or not data:
                return
            if data[0] in ours:
                break
        name = signal.Signals(data[0]).name
        try:
            line = on_stop("Ctrl-C" if name == "SIGINT" else name)
        except Exception as exc:  # noqa: BLE001 — stopping must not fail on the way out
            line = f"interrupted ({type(exc).__name__} while recording the stop: {exc})"
        try:
            sys.stdout.flush()
            print(line, file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_INTERRUPTED)

    previous = {sig: signal.signal(sig, _ignore) for sig in _SIGNALS}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="stop-at-once", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        writer.close()  # wakes the watcher with nothing to do
        watcher.join(timeout=1)
        reader.close()


def _ignore(signum, frame) -> None:
    """The Python-level handler: the watcher thread acts; the main thread carries on."""


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C/SIGTERM ignored for the block: a second Ctrl-C while children are being
    stopped must not cut the stopping short (and print a traceback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_now(code: int = EXIT_INTERRUPTED) -> None:
    """End the process after a stop, without the interpreter's clean-up: with torch and
    Flower loaded, finalising the heap took about 9 s on a loaded 2-core machine, which is
    most of the 10 s an operator's Ctrl-C may take. Everything fedmed writes is already
    closed or flushed by then (status.json and the audit log are written atomically)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
