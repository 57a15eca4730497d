"""Which app bundles this site runs: fedmed's own, or hashes the site approved.

A Flower run ships an app bundle (FAB) to every site, and a bundle can name any module
as its ClientApp — including one it carries itself. A check inside fedmed's ClientApp
would therefore never run for a hostile bundle. The check lives in the site's executor
(`client/app_executor.py`) instead, which takes each task from the SuperNode, hashes
the bundle it comes with, and runs fedmed's installed ClientApp only when the hash is
approved; nothing from the bundle is ever imported.

Approved by default: the bundle this site's own fedmed builds (`common/app_bundle.py`),
i.e. "the coordinator runs the same fedmed version as we do". `fedmed client --approve
HASH` adds others (e.g. a coordinator on a newer fedmed release the site has reviewed).
Every refusal is printed and appended to STATE/app-refusals.jsonl with the hash.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedmed.common.app_bundle import fab_hash

REFUSALS_FILE = "app-refusals.jsonl"
REASON = "app-not-approved"


def parse_hashes(values: list[str] | tuple[str, ...]) -> frozenset[str]:
    hashes = set()
    for value in values:
        h = value.strip().lower()
        if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
            raise ValueError(f"--approve {value!r}: expected a SHA-256 hex digest (64 characters), "
                             "as printed when this site refuses a run")
        hashes.add(h)
    return frozenset(hashes)


@dataclass
class AppApproval:
    """The site's decision on each bundle it is offered."""

    approved: frozenset[str]
    state_dir: Path | None = None
    site: str = "?"
    _seen: set[str] = field(default_factory=set)

    @classmethod
    def default(cls, extra: tuple[str, ...] = (), state_dir: Path | None = None,
                site: str = "?") -> "AppApproval":
        return cls(frozenset({fab_hash()}) | parse_hashes(extra), state_dir, site)

    def check(self, content: bytes, claimed_hash: str, run_id: int) -> str | None:
        """None when the bundle may run; else the reason, logged at the site.

        The hash is computed here from the bytes received, not taken from the run."""
        actual = hashlib.sha256(content).hexdigest()
        if actual in self.approved and claimed_hash in ("", actual):
            return None
        self._log(run_id, actual, claimed_hash)
        return REASON

    def _log(self, run_id: int, actual: str, claimed: str) -> None:
        if (run_id, actual) in self._seen:
            return  # one line per run, not one per message
        self._seen.add((run_id, actual))
        print(f"[fedmed site {self.site}] refused run {run_id}: its app bundle {actual} is not "
              "approved at this site (fedmed's own bundle is; review the run and pass "
              f"--approve {actual} to accept it); nothing was trained", file=sys.stderr, flush=True)
        if self.state_dir is None:
            return
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_id": run_id, "fab_sha256": actual,
                 "claimed_sha256": claimed, "reason": REASON}
        with open(Path(self.state_dir) / REFUSALS_FILE, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
