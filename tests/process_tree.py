"""Starting, stopping and killing the real processes the end-to-end tests run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (Linux /proc), children first found first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started, as a power cut would."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def stop(*processes: subprocess.Popen | None, grace: float = 15) -> None:
    """SIGTERM all at once (each stops its own children), then SIGKILL what is left."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            kill_tree(process)


def wait_for(predicate, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


_SERVING = re.compile(r"fedmed coordinator on \S+:(\d+)")
_CLASH = "already in use"


def start_coordinator(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 180,
                      attempts: int = 3) -> tuple[subprocess.Popen, int]:
    """Start `fedmed server start` and wait until it serves; return it and its public port.

    Give it `--address 127.0.0.1:0`: it picks a free port itself and retries a clash. A
    fixed port (a resumed coordinator must keep its address) that something held at that
    moment is retried a few times; any other failure is an assertion with the log."""
    for _ in range(attempts):
        offset = log.stat().st_size if log.exists() else 0
        process = start(cmd, log, env)

        def output() -> str:
            with open(log, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")

        if not wait_for(lambda: _SERVING.search(output()) or process.poll() is not None, timeout):
            stop(process)
            raise AssertionError(f"the coordinator did not start serving in {timeout:g} s:\n{output()}")
        if (match := _SERVING.search(output())) is not None:
            return process, int(match.group(1))
        if _CLASH not in output():
            raise AssertionError(f"the coordinator exited with code {process.returncode}:\n{output()}")
        time.sleep(1)
    raise AssertionError(f"the coordinator's port stayed in use:\n{output()}")
