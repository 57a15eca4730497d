"""Round 1's global weights and the names of the frozen ones, worked out in a short-lived
process so that the ServerApp never imports torch.

Building the model (random weights from the run's seed, or `--init-from`'s file) and
reading which weights `--freeze` leaves out need torch; aggregating does not. A deployed
ServerApp would otherwise hold torch's ~300 MiB for the whole run. So `python -m
fedmed.server.starting_point RUN_DIR` (the settings as JSON on stdin) writes
`RUN_DIR/starting-point.pt` and exits:
`fedmed server start` starts it while the SuperLink starts, and the ServerApp runs it
itself when that file is missing or was made for other settings (its `key` is a hash of
the settings it depends on). A simulation, which imports torch anyway, calls `compute`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmed.common import torch_file
from fedmed.common.federation import FederationConfig

FILE = "starting-point.pt"


@dataclass(frozen=True)
class StartingPoint:
    arrays: dict[str, np.ndarray] | None  # round 1's global weights, state_dict order
    frozen: list[str]                     # state_dict keys the sites do not train (`--freeze`)
    error: str = ""                       # why there are no weights (an unusable init_from file)


def key(federation: dict[str, Any], meta: dict[str, Any]) -> str:
    """What the starting point depends on: the federation's settings, init_from, freeze."""
    text = json.dumps({"federation": federation, "init_from": meta.get("init_from"),
                       "freeze": meta.get("freeze") or "none"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def compute(config: FederationConfig, meta: dict[str, Any]) -> StartingPoint:
    """Build the model with torch: the run's `init_from` weights (the file must be the one
    checked when the run was started) or random ones from the seed, and `--freeze`'s names
    (known even when the `init_from` file is no longer usable: a resumed run needs them)."""
    import torch

    from fedmed.common.freezing import check_freeze, frozen_names
    from fedmed.common.models import build_model
    from fedmed.common.starting_model import load_starting_model

    freeze = check_freeze(str(meta.get("freeze") or "none"))
    torch.manual_seed(config.seed)
    model = build_model(config.model, len(config.classes), config.image.size)
    frozen = frozen_names(model, freeze) if freeze != "none" else []
    init_from = meta.get("init_from")
    try:
        state = (load_starting_model(init_from["path"], config, expected_sha256=init_from.get("sha256")).state_dict
                 if init_from else model.state_dict())
    except ValueError as exc:
        return StartingPoint(None, frozen, str(exc))
    return StartingPoint({k: v.detach().cpu().numpy() for k, v in state.items()}, frozen)


def write(run_dir: Path, spec: dict[str, Any]) -> None:
    """Compute the starting point for `spec` ({"federation", "init_from", "freeze"}, as in
    the run's config.json) into RUN_DIR/starting-point.pt; an `init_from` error is written
    there, to be reported by the ServerApp."""
    meta = {k: v for k, v in spec.items() if k != "federation"}
    point = compute(FederationConfig.from_dict(spec["federation"]), meta)
    payload: dict[str, Any] = {"key": key(spec["federation"], meta), "state_dict": point.arrays,
                               "frozen": point.frozen, "error": point.error}
    path = Path(run_dir) / FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch_file.write(tmp, payload)
    os.replace(tmp, path)


def start(run_dir: Path, federation: dict[str, Any], meta: dict[str, Any]) -> subprocess.Popen:
    """Begin writing RUN_DIR/starting-point.pt in a child process; do not wait for it."""
    spec = {"federation": federation, "init_from": meta.get("init_from"), "freeze": meta.get("freeze")}
    child = subprocess.Popen([sys.executable, "-m", "fedmed.server.starting_point", str(run_dir)],
                             stdin=subprocess.PIPE)
    assert child.stdin is not None
    child.stdin.write(json.dumps(spec).encode())
    child.stdin.close()
    return child


def read(run_dir: Path, federation: dict[str, Any], meta: dict[str, Any]) -> StartingPoint:
    """The run's starting point, without importing torch here: RUN_DIR/starting-point.pt
    when it was made for these settings, else made now in a child process."""
    path = Path(run_dir) / FILE
    wanted = key(federation, meta)
    payload = _load(path)
    if payload.get("key") != wanted:
        if start(run_dir, federation, meta).wait() != 0:
            raise RuntimeError(f"{path}: could not build the starting model (see the log above)")
        payload = _load(path)
        if payload.get("key") != wanted:
            raise RuntimeError(f"{path}: not made for this run's settings")
    arrays = payload.get("state_dict")
    return StartingPoint(dict(arrays) if arrays is not None else None, list(payload.get("frozen") or []),
                         str(payload.get("error") or ""))


def _load(path: Path) -> dict[str, Any]:
    try:
        payload = torch_file.read(path)
    except Exception:  # noqa: BLE001 — absent, half-written or foreign: made again
        return {}
    return payload if isinstance(payload, dict) else {}


if __name__ == "__main__":
    write(Path(sys.argv[1]), json.loads(sys.stdin.read()))
