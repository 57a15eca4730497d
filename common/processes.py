"""Starting and stopping the Flower processes fedmed wraps (SuperLink, SuperNode).

Shared by both sides because both launch a Flower executable from the same environment;
nothing here knows about pixels or aggregation.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Sequence


def flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Flower process: this interpreter's scripts first on PATH
    (the SuperLink and SuperNode start `flwr-serverapp` / `flwr-clientapp` by name),
    telemetry off, apps run in this environment instead of a fresh `uv sync`, and one
    malloc arena per process."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # glibc gives each thread that allocates an arena of its own (up to 8 per core), and
    # what is freed in one stays resident there. These processes are threaded (HTTP
    # servers, heartbeats, a thread per task) but Python allocates under its GIL anyway:
    # one arena measured about 100 MiB less for a coordinator and three sites
    # (docs/benchmarks.md, section 6), at the same CPU per round. An operator's own
    # setting is kept.
    env.setdefault("MALLOC_ARENA_MAX", "1")
    env.update(extra or {})
    return env


def executable(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# Ports handed out for outgoing connections (Linux's default range; macOS and Windows use
# 49152 and up). A port picked below them cannot be taken by a connection's local end.
_EPHEMERAL_START = 32768
_PICK_FROM = 20000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now. Only a guess: it can be taken before it is
    bound, so whoever binds it must handle a clash (`fedmed.common.supervision`)."""
    start = _ephemeral_start()
    for _ in range(50):
        port = random.randrange(_PICK_FROM, start) if start > _PICK_FROM + 100 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_START


def split_address(address: str, flag: str, allow_zero: bool = False) -> tuple[str, int]:
    """HOST:PORT; port 0 ("pick a free one") only where `allow_zero`."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 if allow_zero else 1) <= int(port) < 65536:
        raise ValueError(f"{flag} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9092")
    return host.strip("[]"), int(port)


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, ask for SIGTERM when the parent dies.

    Without it, a `fedmed server start` or `fedmed client` killed with SIGKILL leaves its
    SuperLink, proxy or SuperNode running (they are in their own process groups), holding
    the port a restart needs and, for a site, still taking work."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(cmd: Sequence[str], log: IO | None, env: dict[str, str]) -> subprocess.Popen:
    """Start a process in its own process group, so stopping it stops its children; it
    also ends when this process ends, however that happens (Linux)."""
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT if log else None,
                            env=env, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
