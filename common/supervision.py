"""Children that must stay up: started, their output watched, a start-up port clash
retried on a new port, and an exit noticed at once.

A port found free is only a guess: anything may bind it before the child does (another
program, or an outgoing connection given it as its local port). So a child that serves
on a port we picked is started by `start_on_free_port`, which waits until the child
itself listens there — not merely until something answers on that port — and, when
the child reports the port taken, starts it again on another one. A port the operator
chose is never silently changed: a clash there is a `PortInUse` error naming it.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

from fedmed.common import processes

# What a Python/uvicorn/asyncio server prints when its port is taken (Linux, macOS).
_ADDRESS_IN_USE = ("address already in use", "[errno 98]", "[errno 48]", "eaddrinuse")
START_ATTEMPTS = 5
POLL_SECONDS = 0.1
# Seconds a child gets to stop on SIGTERM: Ctrl-C must end fedmed within 10 s.
STOP_GRACE = 5.0


class ChildExited(RuntimeError):
    """A child process ended; the message names it, its exit code and where its log is."""

    def __init__(self, child: "Child", doing: str = "") -> None:
        self.child = child
        where = f"; see {child.log}" if child.log else ""
        super().__init__(f"the {child.name} exited with code {child.returncode}{doing}{where}")


class PortInUse(RuntimeError):
    """A port could not be bound because something else holds it."""


class Child:
    """A started process in its own process group (see `processes.start`).

    With `capture`, its output is read line by line: appended to `log` (or copied to this
    process's stdout when `log` is None), kept in a short tail, scanned for a port clash,
    and handed to `on_line`. Without it the child writes to this terminal directly.
    """

    def __init__(self, name: str, cmd: Sequence[str], env: dict[str, str], *, log: Path | None = None,
                 capture: bool = True, on_line: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.log = log
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.port_clash = False
        self._muted = False
        self._on_line = on_line
        self._reader: threading.Thread | None = None
        if not capture:
            self.process = processes.start(cmd, None, env)
            return
        self.process = processes.start(cmd, subprocess.PIPE, env)
        sink: BinaryIO = open(log, "ab") if log is not None else sys.stdout.buffer
        self._reader = threading.Thread(target=self._read, args=(sink,), daemon=True,
                                        name=f"output-of-{name}")
        self._reader.start()

    def _read(self, sink: BinaryIO) -> None:
        try:
            for raw in iter(self.process.stdout.readline, b""):
                try:
                    if not self._muted:
                        sink.write(raw)
                        sink.flush()
                except (OSError, ValueError):
                    pass  # our own stdout is gone; keep draining so the child never blocks
                line = raw.decode("utf-8", "replace").rstrip()
                self.tail.append(line)
                if any(marker in line.lower() for marker in _ADDRESS_IN_USE):
                    self.port_clash = True
                if self._on_line is not None:
                    try:
                        self._on_line(line)
                    except Exception:  # noqa: BLE001 — a watcher's bug must not stop the draining
                        pass
        finally:
            if sink is not sys.stdout.buffer:
                sink.close()

    def mute(self) -> None:
        """Stop copying the child's output (it is still read, so the child never blocks)."""
        self._muted = True

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def listening(self, host: str, port: int) -> bool:
        """Whether this child (not some other program) accepts connections on host:port."""
        if not self.running():
            return False
        owned = _listener_owned_by(self.pid, port)
        if owned is not None:
            return owned
        try:  # no /proc: the best check left is that the port answers and the child lives
            with socket.create_connection((host, port), timeout=0.5):
                return self.running()
        except OSError:
            return False

    def wait_listening(self, host: str, port: int, timeout: float) -> bool:
        """Wait until the child listens on the port; False as soon as it exits or reports
        the port taken, or when `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listening(host, port):
                return True
            if not self.running() or self.port_clash:
                return False
            time.sleep(POLL_SECONDS)
        return False

    def stop(self, grace: float = STOP_GRACE) -> None:
        stop_all([self], grace)


def stop_all(children: Iterable[Child | None], grace: float = STOP_GRACE) -> None:
    """SIGTERM every child's process group at once, then SIGKILL what is still there after
    `grace` seconds: stopping several children takes `grace` at most, not one each. The
    SIGKILL goes to the whole group either way, so a grandchild that outlived its parent
    (a ServerApp, Flower's own executor) does not linger."""
    children = [c for c in children if c is not None]
    for child in children:
        if child.running():
            _signal_group(child.pid, "SIGTERM")
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(timeout=max(deadline - time.monotonic(), 0.05))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        _signal_group(child.pid, "SIGKILL")
        child.process.wait()
    deadline = time.monotonic() + 1.0
    for child in children:
        if child._reader is not None:
            child._reader.join(timeout=max(deadline - time.monotonic(), 0.01))


def _signal_group(pid: int, name: str) -> None:
    import signal

    try:
        os.killpg(pid, getattr(signal, name))
    except (ProcessLookupError, PermissionError):
        pass


def first_exited(children: Sequence[Child], stop_when: Callable[[], bool] = lambda: False) -> Child | None:
    """Block until one of `children` exits and return it (None if `stop_when()` turned
    true first). Polls every 0.1 s: an exit is noticed at once, not at the next round."""
    while not stop_when():
        for child in children:
            if not child.running():
                return child
        time.sleep(POLL_SECONDS)
    return None


def start_on_free_port(name: str, command: Callable[[int], Sequence[str]], env: dict[str, str], *,
                       host: str = "127.0.0.1", timeout: float = 60.0, log: Path | None = None,
                       on_line: Callable[[str], None] | None = None,
                       on_retry: Callable[[str], None] | None = None,
                       attempts: int = START_ATTEMPTS) -> tuple[Child, int]:
    """Start `command(port)` on a free port of `host` and wait until it listens there.

    A clash (the child says the port is taken) starts it again on a new port, up to
    `attempts` times; any other exit raises `ChildExited`, and not listening within
    `timeout` raises `TimeoutError` — never a hang."""
    for _ in range(attempts):
        port = processes.free_port(host)
        child = _start_listening(name, command(port), env, host, port, timeout, log, on_line)
        if child is not None:
            return child, port
        if on_retry is not None:
            on_retry(f"the {name} could not bind port {port} (taken since it was picked); "
                     "retrying on another port")
    raise PortInUse(f"the {name} found every port it tried on {host} taken ({attempts} attempts); "
                    "is this machine out of free ports?")


def start_on_port(name: str, cmd: Sequence[str], env: dict[str, str], host: str, port: int, flag: str, *,
                  timeout: float = 60.0, log: Path | None = None,
                  on_line: Callable[[str], None] | None = None) -> Child:
    """Start a child on a port the operator chose and wait until it listens there; a clash
    is a `PortInUse` error naming the option to change."""
    child = _start_listening(name, cmd, env, host, port, timeout, log, on_line)
    if child is None:
        raise PortInUse(f"{flag} {host}:{port}: the port is already in use on this machine; stop what "
                        "uses it or choose another port (port 0 picks a free one)")
    return child


def _start_listening(name: str, cmd: Sequence[str], env: dict[str, str], host: str, port: int,
                     timeout: float, log: Path | None,
                     on_line: Callable[[str], None] | None) -> Child | None:
    """Start a child and wait until it listens on `port`: the child, or None when it
    could not bind the port (stopped by then). Any other exit raises `ChildExited`; not
    listening within `timeout` raises `TimeoutError`."""
    child = Child(name, cmd, env, log=log, on_line=on_line)
    try:
        if child.wait_listening(connectable_host(host), port, timeout):
            return child
    except BaseException:  # Ctrl-C while it starts: it must not outlive us
        child.stop()
        raise
    exited = not child.running()
    child.stop()
    if child.port_clash:
        return None
    if exited:
        raise ChildExited(child, " while starting")
    raise TimeoutError(f"the {name} did not start listening on {host}:{port} within {timeout:g} s"
                       + (f"; see {log}" if log else ""))


def connectable_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _listener_owned_by(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds a listening TCP socket on `port`; None where /proc
    cannot tell (not Linux)."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return None
    inodes = set()
    for table in tables:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; inode is field 9.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return True
            except OSError:
                continue
    except OSError:
        return None
    return False
