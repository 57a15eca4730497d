"""A real deployment on loopback: `fedmed server start --insecure` and three
`fedmed client --insecure` processes, each client talking through a byte-counting relay.

Each site's SuperNode connects to its own relay port instead of the SuperLink's; the relay
copies the TCP stream both ways and counts the bytes, so the counts are what crossed the
wire for that site (Flower 1.42's Fleet API is HTTP with protobuf bodies: headers, the
SuperNode's polls and heartbeats included; no TLS with ``--insecure``). The
counters are read each time the coordinator appends a row to ``metrics.jsonl``, which
splits the traffic by round: everything between the end of round r-1 and the end of
round r -- the training and evaluation messages and the SuperNode's polls -- is round r.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmed.common.processes import free_port, start, stop

from benchmarks.proctree import TreeMemory

_CHUNK = 1 << 16
_REQUEST = b"POST /v1/fleet/"


@dataclass
class Relay:
    """A TCP relay from a local port to `target`, counting bytes in each direction."""

    target: tuple[str, int]
    port: int = 0  # 0: the kernel picks a free one as the relay binds it (no clash possible)
    up: int = 0      # site -> coordinator
    down: int = 0    # coordinator -> site
    connections: int = 0
    requests: int = 0  # Fleet API requests (HTTP request lines going up)
    trace: list | None = None  # a list here gets (perf_counter, call) for every request

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}  # requests per Fleet call (pull-object, ...)
        self.first_call: dict[str, float] = {}  # perf_counter of each call's first request
        # Bound now (the port is the relay's), listening only once the target is: until then
        # a site connecting here is refused, as it would be by the coordinator's own port.
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", self.port))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{self.port}").start()

    def _wait_for_target(self) -> None:
        while not self._closed:
            try:
                socket.create_connection(self.target, timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.02)

    def _accept(self) -> None:
        self._wait_for_target()
        try:
            self._server.listen()
        except OSError:
            return
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        tail = b""
        name = None  # a request line's call name cut off by the end of a read
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                dst.sendall(data)
                # Plain HTTP (--insecure): a request line may straddle two reads.
                seen = tail + data
                tail = seen[-(len(_REQUEST) - 1):]
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                    if direction == "up":
                        self.requests += seen.count(_REQUEST)
                        name = self._count_calls(seen, name, data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count_calls(self, seen: bytes, name: bytes | None, data: bytes) -> bytes | None:
        """Count each request line by its call name; return the start of a name this read
        cut off."""
        pieces = [name + data] if name is not None else []
        pieces += [seen[at + len(_REQUEST):] for at in _finds(seen, _REQUEST)]
        for piece in pieces:
            end = piece.find(b" ")
            if end < 0:
                return piece if len(piece) < 64 else None
            call = piece[:end].decode(errors="replace")
            self._calls[call] = self._calls.get(call, 0) + 1
            self.first_call.setdefault(call, time.perf_counter())
            if self.trace is not None:
                self.trace.append((time.perf_counter(), call))
        return None

    def call_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def request_count(self) -> int:
        with self._lock:
            return self.requests

    def close(self) -> None:
        self._closed = True
        self._server.close()


def _finds(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def _fedmed_cmd() -> list[str]:
    script = Path(sys.executable).parent / "fedmed"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fedmed.cli.main"]


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return start(cmd, open(log, "wb"), {**os.environ, **(env or {})})


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(data_root: Path, sites: tuple[str, ...], work: Path, rounds: int, image_size: int,
        batch_size: int, timeout: float, extra: list[str] | None = None,
        site_env: dict[str, str] | None = None, attempts: int = 3) -> dict[str, Any]:
    """Run the federation; return per-round timings, bytes per site and memory.

    The coordinator's port is picked before the coordinator binds it; if something took
    it meanwhile, the whole federation is started again on another port."""
    for _ in range(attempts):
        result = _run_once(data_root, sites, work, rounds, image_size, batch_size, timeout, free_port(),
                           extra, site_env)
        if not result.pop("port_clash"):
            break
    return result


def _run_once(data_root: Path, sites: tuple[str, ...], work: Path, rounds: int, image_size: int,
              batch_size: int, timeout: float, port: int, extra: list[str] | None = None,
              site_env: dict[str, str] | None = None) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / "run"
    # A run in a used folder: its rows must not be taken for this run's.
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    relays = {site: Relay(("127.0.0.1", port)) for site in sites}
    fedmed = _fedmed_cmd()
    started = time.perf_counter()
    boundaries: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    # The processes this starts (coordinator and sites), not this process and its relays.
    with TreeMemory(include_root=False) as memory:
        server = _start(fedmed + [
            "server", "start", "--insecure", "--address", f"127.0.0.1:{port}",
            "--rounds", str(rounds), "--min-sites", str(len(sites)), "--out", str(run_dir),
            "--image-size", str(image_size), "--batch-size", str(batch_size),
            "--round-timeout", "300", "--seed", "0", *(extra or []),
        ], work / "server.log")
        clients = [
            _start(fedmed + [
                "client", "--site", site, "--data", str(data_root / site),
                "--server", f"127.0.0.1:{relays[site].port}", "--state", str(work / "state" / site),
                "--insecure", "--no-dp",
            ], work / f"client-{site}.log", site_env)
            for site in sites
        ]
        code = None
        try:
            deadline = started + timeout
            while time.perf_counter() < deadline:
                rows = _rows(run_dir / "metrics.jsonl")
                while len(boundaries) < len(rows):
                    boundaries.append({"t": time.perf_counter() - started,
                                       "bytes": {s: relays[s].counts() for s in sites},
                                       "requests": {s: relays[s].request_count() for s in sites},
                                       "cpu_s": memory.cpu_seconds(),
                                       "cpu_by_kind": memory.cpu_by_kind(),
                                       "calls": {s: relays[s].call_counts() for s in sites}})
                code = server.poll()
                if code is not None:
                    break
                time.sleep(0.1)
        finally:
            for process in (server, *clients):
                stop(process, grace=20)
            for r in relays.values():
                r.close()
    total = time.perf_counter() - started
    rows = _rows(run_dir / "metrics.jsonl")
    per_round = []
    previous = {s: (0, 0) for s in sites}
    previous_requests = {s: 0 for s in sites}
    for row, mark in zip(rows, boundaries):
        per_round.append({
            "round": row["round"],
            "seconds": row["seconds"],
            "end_s": mark["t"],
            "train": {k: v.get("train_seconds", 0.0) for k, v in row["sites"].items()},
            "status": {k: v.get("status", "?") for k, v in row["sites"].items()},
            "bytes_up": {s: mark["bytes"][s][0] - previous[s][0] for s in sites},
            "bytes_down": {s: mark["bytes"][s][1] - previous[s][1] for s in sites},
            "requests": {s: mark["requests"][s] - previous_requests[s] for s in sites},
            "cpu_s": mark["cpu_s"],
            "cpu_by_kind": mark["cpu_by_kind"],
            "calls": mark["calls"],
        })
        previous, previous_requests = mark["bytes"], mark["requests"]
    log_tail = (work / "server.log").read_text(errors="replace")[-1500:] if code != 0 else ""
    return {
        "port_clash": code not in (0, None) and not rows and "already in use" in log_tail,
        "exit_code": code,
        "completed": code == 0 and len(rows) == rounds,
        "rounds": per_round,
        "total_s": total,
        "time_to_round1_s": per_round[0]["end_s"] if per_round else None,
        "relay_connections": {s: r.connections for s, r in relays.items()},
        # When each site first made each Fleet call, s from launch: its start-up timeline
        # (register-node: joined; get-run: its first message of the run).
        "first_call_s": {s: {c: t - started for c, t in r.first_call.items()} for s, r in relays.items()},
        "memory": memory.summary(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "server_log_tail": log_tail,
    }
