"""Peak memory of this process and everything it started (Ray's daemons and workers
included), sampled from /proc while a benchmark runs.

Two sums are kept, because they answer different questions:

- RSS: each process's resident set, summed. Pages shared between processes (torch's
  libraries, mapped once per worker) are counted once per process, so this overstates
  what the tree really occupies; it is what `ps` and most monitors show.
- PSS (proportional set size, from ``smaps_rollup``): shared pages split between the
  processes sharing them, so the sum is the tree's real share of the machine's memory.

Sampling misses peaks shorter than the interval; at 0.5 s that matters only for spikes
no round-long benchmark is sized by.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name is in parentheses and may itself hold spaces or parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children = _children_map()
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _kib_field(path: Path, name: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def process_kind(pid: int) -> str:
    """A short label: Ray names its worker processes ``ray::<actor or task>``."""
    try:
        argv = (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    args = [a.decode(errors="replace") for a in argv if a]
    first = args[0] if args else ""
    if first.startswith("ray::"):
        return first.split()[0]
    name = Path(first).name or "?"
    # A Python process is named for what it runs: its script or `-m` module.
    if name.startswith("python") and len(args) > 1:
        return args[2] if args[1] == "-m" and len(args) > 2 else Path(args[1]).name
    return name


@dataclass
class TreeMemory:
    """Samples the process tree under `root` every `interval` seconds until stopped."""

    root: int = field(default_factory=os.getpid)
    interval: float = 0.5
    # False: only what `root` started (a benchmark measuring the processes it launches,
    # not itself).
    include_root: bool = True
    peak_rss: int = 0          # bytes, sum over the tree at its largest sample
    peak_pss: int = 0
    peak_processes: int = 0
    per_kind_peak_rss: dict[str, int] = field(default_factory=dict)  # largest single process
    per_kind_peak_pss: dict[str, int] = field(default_factory=dict)
    # Each process's PSS in the sample where the sum peaked, by kind: what the peak is made of
    # (a kind's largest process above may have been larger at another time).
    at_peak_pss: dict[str, list[int]] = field(default_factory=dict)
    samples: int = 0
    # CPU seconds (user + system) of every process seen, as last sampled: their sum is the
    # tree's CPU use so far (a process's last 0.5 s before it exits can be missed).
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    kind_by_pid: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        rss = pss = 0
        by_kind: dict[str, list[int]] = {}
        pids = descendants(self.root)
        if not self.include_root:
            pids = [pid for pid in pids if pid != self.root]
        for pid in pids:
            base = _PROC / str(pid)
            r = _kib_field(base / "status", "VmRSS")
            if r is None:
                continue
            rss += r * 1024
            kind = self.kind_by_pid.get(pid) or process_kind(pid)
            if kind not in ("?", "gone"):  # a process caught mid-exec is named at the next sample
                self.kind_by_pid[pid] = kind
            self.per_kind_peak_rss[kind] = max(self.per_kind_peak_rss.get(kind, 0), r * 1024)
            try:
                fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
                self.cpu_by_pid[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
            except (OSError, IndexError, ValueError):
                pass
            p = (_kib_field(base / "smaps_rollup", "Pss") or r) * 1024
            pss += p
            self.per_kind_peak_pss[kind] = max(self.per_kind_peak_pss.get(kind, 0), p)
            by_kind.setdefault(kind, []).append(p)
        self.peak_rss = max(self.peak_rss, rss)
        if pss > self.peak_pss:
            self.peak_pss = pss
            self.at_peak_pss = by_kind
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "TreeMemory":
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_pid.values())

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds so far summed per kind of process (three sites' executors are one kind)."""
        out: dict[str, float] = {}
        for pid, seconds in self.cpu_by_pid.items():
            kind = self.kind_by_pid.get(pid, "?")
            out[kind] = out.get(kind, 0.0) + seconds
        return out

    def summary(self) -> dict:
        return {
            "cpu_s": round(self.cpu_seconds(), 1),
            "peak_rss_mib": round(self.peak_rss / MIB, 1),
            "peak_pss_mib": round(self.peak_pss / MIB, 1),
            "peak_processes": self.peak_processes,
            "per_kind_peak_rss_mib": {k: round(v / MIB, 1) for k, v in sorted(self.per_kind_peak_rss.items())},
            "per_kind_peak_pss_mib": {k: round(v / MIB, 1) for k, v in sorted(self.per_kind_peak_pss.items())},
            "at_peak_pss_mib": {k: sorted((round(v / MIB, 1) for v in vs), reverse=True)
                                for k, vs in sorted(self.at_peak_pss.items())},
            "samples": self.samples,
        }
