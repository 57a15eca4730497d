"""The fedmed ServerApp: runs the rounds, writes the run folder.

In a deployment the SuperLink starts it in its own process with the run config key
`fedmed-config` pointing at the run folder's `config.json` (written by
`fedmed server start`); a simulation builds it with `make_server_app`.

`config.json` may also carry, besides the federation's settings:
  update_limits   how large an update may be (`strategy/update_checks.py`)
  resume_from     the last completed round of an interrupted run in this folder: the
                  run starts from that round's checkpoint and carries on numbering
  sites           enrolled sites, {node_id: name}, so replies are attributed to the
                  name a site was enrolled under
  join_timeout    seconds the run's first round waits for every enrolled site to connect
  init_from       the starting model (`fedmed.common.starting_model`): {"path", "sha256",
                  "source", "fresh"}; round 1 starts from it instead of random weights
  freeze          which weights the sites train (`fedmed.common.freezing`), sent with
                  every training message
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedmed.common.checkpoint import load_checkpoint_arrays
from fedmed.common.federation import FederationConfig
from fedmed.common.freezing import check_freeze
from fedmed.common.protocol import FEDERATION_KEY, FREEZE_KEY
from fedmed.server import starting_point
from fedmed.server.audit import AuditLog
from fedmed.server.enrollment import node_names
from fedmed.server.fast_grid import FastGrid, quicken_object_pulls
from fedmed.server.flower_app import RUN_CONFIG_KEY
from fedmed.server.outputs import RunRecorder
from fedmed.server.strategy import FederationStopped
from fedmed.server.strategy.registry import build_strategy
from fedmed.server.strategy.update_checks import UpdateLimits

log = logging.getLogger("fedmed.server")


# How run_federation gets round 1's weights and the frozen names: in this process (a
# simulation, which imports torch anyway) or from a child process (a deployment).
StartingPointSource = Callable[[FederationConfig, dict[str, Any]], starting_point.StartingPoint]


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def initial_arrays(config: FederationConfig) -> ArrayRecord:
    """The round-0 global model, the same for a given seed (imports torch)."""
    arrays = starting_point.compute(config, {}).arrays
    assert arrays is not None  # only an init_from file can fail
    return array_record(arrays)


def resume_point(out_dir: Path, config: FederationConfig, server_round: int) -> tuple[ArrayRecord, dict]:
    """The global weights and strategy state after `server_round` of a run in `out_dir`."""
    path = Path(out_dir) / "checkpoints" / f"round-{server_round:03d}.pt"
    payload = load_checkpoint_arrays(path)
    if payload.get("federation", {}).get("model") != config.model or \
            list(payload.get("classes", [])) != list(config.classes):
        raise ValueError(f"{path}: trained with another model or classes than this run's config.json")
    return array_record(payload["state_dict"]), dict(payload.get("strategy_state") or {})


def run_federation(
    grid: Grid,
    config: FederationConfig,
    out_dir: Path,
    meta: dict[str, Any] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    start_from: StartingPointSource = starting_point.compute,
) -> dict[str, Any]:
    """Run all rounds on `grid`; return the status written to `status.json`."""
    meta = dict(meta or {})
    resume_from = int(meta.get("resume_from") or 0)
    freeze = check_freeze(str(meta.get("freeze") or "none"))
    audit = AuditLog(out_dir)
    enrolled = meta.get("sites") if isinstance(meta.get("sites"), dict) else {}
    limits = UpdateLimits.from_dict(meta.get("update_limits"))
    start = start_from(config, meta)
    if start.frozen:
        limits = replace(limits, frozen=tuple(start.frozen))
    strategy = build_strategy(
        config,
        on_event=audit.record,
        limits=limits,
        first_round=resume_from + 1,
        # A deployment enrolls {node_id: name}; a simulation's meta lists names only.
        node_names={int(k): str(v) for k, v in enrolled.items()},
        names_source=(lambda: node_names(out_dir)) if enrolled else None,
        join_timeout=float(meta.get("join_timeout") or 0.0),
    )
    recorder = RunRecorder(out_dir, config, meta, on_round, resume_after=resume_from,
                           checkpoint_extra=strategy.state)
    strategy.on_train, strategy.on_evaluate = recorder.on_train, recorder.on_evaluate
    if resume_from:
        arrays, state = resume_point(out_dir, config, resume_from)
        strategy.load_state(state)
        recorder.last_arrays = arrays
    elif start.arrays is None:  # the init_from file is not usable
        recorder.finish("failed", start.error)
        return {"status": "failed", "reason": start.error}
    else:
        arrays = array_record(start.arrays)
    remaining = config.rounds - resume_from
    record = ConfigRecord({FEDERATION_KEY: config.to_json(), FREEZE_KEY: freeze})
    try:
        if remaining <= 0:
            recorder.finish("completed", final_arrays=arrays)
            return {"status": "completed", "reason": ""}
        result = strategy.start(
            grid=grid,
            initial_arrays=arrays,
            num_rounds=remaining,
            timeout=config.round_timeout,
            train_config=record,
            evaluate_config=ConfigRecord({FEDERATION_KEY: config.to_json()}),
        )
    except FederationStopped as stop:
        recorder.finish("failed", str(stop))
        return {"status": "failed", "reason": str(stop)}
    except Exception as exc:
        recorder.finish("failed", f"coordinator error: {type(exc).__name__}: {exc}")
        raise
    recorder.finish("completed", final_arrays=result.arrays)
    return {"status": "completed", "reason": ""}


def make_server_app(config: FederationConfig, out_dir: Path, meta: dict[str, Any] | None = None,
                    on_round: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, out_dir, meta, on_round)

    return server_app


app = ServerApp()


@app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    config_path = Path(str(context.run_config[RUN_CONFIG_KEY]))
    saved = json.loads(config_path.read_text())
    config = FederationConfig.from_dict(saved["federation"])
    meta = {k: v for k, v in saved.items() if k != "federation"}
    # Flower's deployment grid looks for replies every 3 s, and for a reply's objects
    # still being uploaded 1 s later; FastGrid as soon as they land.
    quicken_object_pulls()
    # Building the model needs torch, which this process never imports: the starting
    # weights come from a child process (usually already run by `fedmed server start`).
    run_federation(FastGrid(grid), config, config_path.parent, meta,
                   start_from=lambda _config, _meta: starting_point.read(
                       config_path.parent, saved["federation"], meta))
