"""The demo: three synthetic hospitals and a short federation, on this machine."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.common.federation import FederationConfig
from fedmed.common.settings import ImageSettings
from fedmed.server import progress
from fedmed.server.outputs import read_metrics
from fedmed.simulations.runner import simulate
from fedmed.simulations.sites import dicom_sites
from fedmed.simulations.synthetic_dicom import write_sites

DEMO_SITES = ("A", "B", "C")


MARKER = ".fedmed-demo"


def _fresh_demo_folder(out: Path) -> Path:
    """The demo's folder, emptied if an earlier demo made it; never someone else's files."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ValueError(f"--out {out}: folder exists and was not made by the demo; "
                             "choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `fedmed demo`; the next demo run replaces this folder\n")
    return out


def run_demo(out: Path, rounds: int = 6, images_per_site: int = 240, seed: int = 0,
             epochs: int = 3, emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Write synthetic DICOM for three sites, federate, print the final per-site table."""
    out = _fresh_demo_folder(Path(out))
    started = time.perf_counter()
    data_dir, run_dir = out / "data", out / "run"
    emit(f"writing synthetic CT for sites {', '.join(DEMO_SITES)} "
         f"({images_per_site} images each) to {data_dir}")
    for name, info in write_sites(data_dir, DEMO_SITES, images_per_site=images_per_site, seed=seed).items():
        emit(f"  {name}: {info}")
    # The synthetic sites are CT; declaring it makes the model say so, and predict warn on MR.
    # The demo trains without DP, and on its few hundred 64×64 images with small nodules the
    # original CNN (a dense layer over the whole feature map) learns within its few rounds,
    # while `dpcnn`, built for DP-SGD, averages the map and measured AUC 0.78 (the default
    # `scatternet`, the DP recipe's model, was not measured on the demo's data).
    config = FederationConfig(rounds=rounds, epochs=epochs, min_sites=len(DEMO_SITES), seed=seed,
                              model="cnn", image=ImageSettings(modalities=("CT",)))
    emit(f"federating {len(DEMO_SITES)} sites for {rounds} rounds of {epochs} local epochs "
         f"({config.model}, {config.image.size}x{config.image.size}); Flower's simulation engine starts first")
    # DP-SGD needs thousands of images per site to learn (docs/privacy.md); with the demo's
    # few hundred it would only show noise, so the demo says so and trains without it.
    emit("differential privacy is OFF in this demo: its sites are too small for DP-SGD to learn "
         "(see docs/privacy.md); `fedmed client` and `fedmed simulate` use DP by default")
    emit(progress.header())
    status = simulate(dicom_sites(data_dir, out / "state", PrivacyPolicy(enabled=False)), config, run_dir,
                      meta={"dp": False, "demo": True},
                      on_round=lambda r: [emit(line) for line in (progress.row(r), *progress.warnings(r, config.classes))])
    records = read_metrics(run_dir)
    if records:
        emit("")
        emit("final round, per site (held-out patients):")
        emit(f"{'site':>6}  {'images':>6}  {'acc':>6}  {'auc':>6}  {'sens':>6}  {'spec':>6}")
        last = records[-1]
        for name, m in list(last["sites"].items()) + [("all", last["aggregate"])]:
            def f(key: str) -> str:
                value = m.get(key)
                return f"{value:6.3f}" if isinstance(value, (int, float)) else "     -"
            emit(f"{name:>6}  {int(m.get('num_examples') or 0):>6}  {f('accuracy')}  {f('auc')}  "
                 f"{f('sensitivity')}  {f('specificity')}")
        emit("  -: not sent; a site withholds sens/spec while a held-out class has fewer than "
             "10 images (docs/privacy.md), and AUC is undefined on one class")
    emit("")
    if status["status"] == "completed" and (words := progress.final_words(records[-1] if records else None,
                                                                          config.classes)):
        emit(words)
    emit(f"{status['status']} in {time.perf_counter() - started:.0f} s. Outputs in {run_dir}: "
         "metrics.jsonl, checkpoints/, model-final.pt, config.json, report.html")
    if status["status"] != "completed":
        emit(f"reason: {status.get('reason')}")
    return status
