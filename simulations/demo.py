"""The demo: three synthetic hospitals and a short federation, on this machine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from fedmed.common.federation import FederationConfig
from fedmed.server import progress
from fedmed.server.outputs import read_metrics
from fedmed.simulations.runner import simulate
from fedmed.simulations.sites import dicom_sites
from fedmed.simulations.synthetic_dicom import write_sites

DEMO_SITES = ("A", "B", "C")


def run_demo(out: Path, rounds: int = 5, images_per_site: int = 240, seed: int = 0,
             emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Write synthetic DICOM for three sites, federate, print the final per-site table."""
    out = Path(out)
    started = time.perf_counter()
    data_dir, run_dir = out / "data", out / "run"
    emit(f"writing synthetic CT for sites {', '.join(DEMO_SITES)} "
         f"({images_per_site} images each) to {data_dir}")
    for name, info in write_sites(data_dir, DEMO_SITES, images_per_site=images_per_site, seed=seed).items():
        emit(f"  {name}: {info}")
    config = FederationConfig(rounds=rounds, min_sites=len(DEMO_SITES), seed=seed)
    emit(f"federating {len(DEMO_SITES)} sites for {rounds} rounds ({config.model}, "
         f"{config.image.size}x{config.image.size}); Flower's simulation engine starts first")
    emit(progress.header())
    status = simulate(dicom_sites(data_dir, out / "state"), config, run_dir,
                      on_round=lambda r: emit(progress.row(r)))
    records = read_metrics(run_dir)
    if records:
        emit("")
        emit(f"final round, per site (held-out patients):")
        emit(f"{'site':>6}  {'images':>6}  {'acc':>6}  {'auc':>6}  {'sens':>6}  {'spec':>6}")
        last = records[-1]
        for name, m in list(last["sites"].items()) + [("all", last["aggregate"])]:
            def f(key: str) -> str:
                value = m.get(key)
                return f"{value:6.3f}" if isinstance(value, (int, float)) else "     -"
            emit(f"{name:>6}  {int(m.get('num_examples') or 0):>6}  {f('accuracy')}  {f('auc')}  "
                 f"{f('sensitivity')}  {f('specificity')}")
    emit("")
    emit(f"{status['status']} in {time.perf_counter() - started:.0f} s. Outputs in {run_dir}: "
         "metrics.jsonl, checkpoints/, model-final.pt, config.json")
    if status["status"] != "completed":
        emit(f"reason: {status.get('reason')}")
    return status
