"""The fedmed ServerApp: runs the rounds, writes the run folder.

In a deployment the SuperLink starts it in its own process with the run config key
`fedmed-config` pointing at the run folder's `config.json` (written by
`fedmed server start`); a simulation builds it with `make_server_app`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model
from fedmed.common.protocol import FEDERATION_KEY
from fedmed.server.outputs import CONFIG_FILE, RunRecorder
from fedmed.server.strategy import FederationStopped, SiteAwareFedAvg

log = logging.getLogger("fedmed.server")

RUN_CONFIG_KEY = "fedmed-config"


def initial_arrays(config: FederationConfig) -> ArrayRecord:
    """The round-0 global model, the same for a given seed."""
    torch.manual_seed(config.seed)
    return ArrayRecord(build_model(config.model, len(config.classes), config.image.size).state_dict())


def run_federation(
    grid: Grid,
    config: FederationConfig,
    out_dir: Path,
    meta: dict[str, Any] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run all rounds on `grid`; return the status written to `status.json`."""
    recorder = RunRecorder(out_dir, config, meta, on_round)
    strategy = SiteAwareFedAvg(
        min_sites=config.min_sites, on_train=recorder.on_train, on_evaluate=recorder.on_evaluate
    )
    record = ConfigRecord({FEDERATION_KEY: config.to_json()})
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=initial_arrays(config),
            num_rounds=config.rounds,
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
    run_federation(grid, config, config_path.parent, meta)
