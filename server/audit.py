"""The coordinator's append-only audit log, `RUN_DIR/audit.jsonl`.

One JSON object per line: `{"time", "event", ...}`. Several processes write to it (the
`fedmed server start` process, the ServerApp, the public-port proxy), so each entry is
written with one `write` on a descriptor opened with O_APPEND, under an exclusive
`flock`: lines never interleave and nothing is ever rewritten.

Each entry also carries `prev`, the SHA-256 of the line before it, so an edit or a
deleted line anywhere breaks the chain (`verify_chain`). That makes tampering evident,
not impossible: whoever can write the file can rewrite the whole chain. Ship the file
off the coordinator (syslog, WORM storage) where that matters.

Events (field `event`):
  run-started        by (OS user), app_hash, run_id, resumed_from_round
  run-finished       status, reason, rounds_completed
  run-stopped        by, reason            the coordinator was interrupted (Ctrl-C or SIGTERM)
  site-enrolled      site, key_sha256, node_id
  site-joined        site, node_id         seen by the ServerApp at a round's start
  site-left          site, node_id
  site-refused       peer, reason, ...     at the public port (TLS, enrolment, path)
  control-refused    peer, method, path    a Control/Runtime API call from outside
  fleet-refused      site, node_id, call, reason, peer   a Fleet request of an enrolled
                                           site the proxy refused (`server/fleet_guard.py`)
  round-completed    round, contributors, left_out
  round-failed       round, contributors, left_out (or reason)
  update-rejected    round, site, reason   a bad update or example count
  reply-rejected     round, site, stage, reason   an evaluation reply's example count
  site-declined      round, site, reason   e.g. the site refused the run's app
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

AUDIT_FILE = "audit.jsonl"
GENESIS = "0" * 64


def current_user() -> str:
    """The OS account running this process: who started or stopped a run."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 — no passwd entry (containers): fall back to the uid
        return f"uid:{os.getuid()}"


def _last_line(fd: int) -> bytes:
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return b""
    window = min(size, 65536)
    os.lseek(fd, size - window, os.SEEK_SET)
    tail = os.read(fd, window).rstrip(b"\n")
    return tail.rsplit(b"\n", 1)[-1]


class AuditLog:
    """Append events to RUN_DIR/audit.jsonl; safe to share between processes."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / AUDIT_FILE

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = _last_line(fd)
            entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                     "event": event, **fields,
                     "prev": hashlib.sha256(last).hexdigest() if last else GENESIS}
            os.write(fd, (json.dumps(entry, sort_keys=True, default=str) + "\n").encode())
        finally:
            os.close(fd)  # closing releases the lock
        return entry

    def entries(self) -> list[dict[str, Any]]:
        return list(read_audit(self.path.parent))


def read_audit(run_dir: Path) -> Iterator[dict[str, Any]]:
    path = Path(run_dir) / AUDIT_FILE
    if not path.exists():
        return iter(())
    return (json.loads(line) for line in path.read_text().splitlines() if line.strip())


def verify_chain(run_dir: Path) -> int | None:
    """Return the 1-based number of the first line whose `prev` does not match, or None."""
    path = Path(run_dir) / AUDIT_FILE
    previous = b""
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        expected = hashlib.sha256(previous).hexdigest() if previous else GENESIS
        if json.loads(line).get("prev") != expected:
            return number
        previous = line
    return None
