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


DP_EPSILON = 8.0  # the default budget of `fedmed client` and `fedmed simulate`
DP_EPOCHS = 5
DP_LR = 0.37


def _site_table(record: dict[str, Any], emit: Callable[[str], None], epsilon: bool = False) -> None:
    """The final round's per-site figures (and the pooled row), as the sites sent them."""
    emit(f"{'site':>6}  {'images':>6}  {'acc':>6}  {'auc':>6}  {'sens':>6}  {'spec':>6}"
         + (f"  {'eps':>5}" if epsilon else ""))
    for name, m in list(record["sites"].items()) + [("all", record["aggregate"])]:
        def f(key: str) -> str:
            value = m.get(key)
            return f"{value:6.3f}" if isinstance(value, (int, float)) else "     -"
        spent = (record.get("privacy") or {}).get("max_epsilon") if name == "all" else m.get("epsilon")
        emit(f"{name:>6}  {int(m.get('num_examples') or 0):>6}  {f('accuracy')}  {f('auc')}  "
             f"{f('sensitivity')}  {f('specificity')}"
             + ((f"  {spent:5.2f}" if isinstance(spent, (int, float)) else "      -") if epsilon else ""))


def run_demo(out: Path, rounds: int = 6, images_per_site: int = 240, seed: int = 0,
             epochs: int = 3, dp_rounds: int = 2, emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Write synthetic DICOM for three sites, federate, print the final per-site table;
    then (dp_rounds > 0) a short federation of the same sites with DP-SGD, for its row."""
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
    # The main federation trains without DP, for speed and to show what the data allows;
    # a short DP federation afterwards shows what DP costs on sites this small.
    emit("differential privacy is OFF in this federation, for speed; `fedmed client` and `fedmed simulate` "
         "use DP by default, "
         + ("and a short DP federation of the same sites follows" if dp_rounds > 0 else "as the README's examples show"))
    emit(progress.header())
    status = simulate(dicom_sites(data_dir, out / "state", PrivacyPolicy(enabled=False)), config, run_dir,
                      meta={"dp": False, "demo": True},
                      on_round=lambda r: [emit(line) for line in (progress.row(r), *progress.warnings(r, config.classes))])
    records = read_metrics(run_dir)
    if records:
        emit("")
        emit("final round, per site (held-out patients):")
        _site_table(records[-1], emit)
        emit("  -: not sent; a site withholds sens/spec while a held-out class has fewer than "
             "10 images (docs/privacy.md), and AUC is undefined on one class")
    emit("")
    if status["status"] == "completed" and (words := progress.final_words(records[-1] if records else None,
                                                                          config.classes)):
        emit(words)
    if status["status"] == "completed" and dp_rounds > 0:
        status = dict(status, dp=_dp_row(data_dir, out, dp_rounds, seed, emit))
    emit(f"{status['status']} in {time.perf_counter() - started:.0f} s. Outputs in {run_dir}: "
         "metrics.jsonl, checkpoints/, model-final.pt, config.json, report.html"
         + (f"; the DP federation's in {out / 'run-dp'}" if status.get("dp") else ""))
    if status["status"] != "completed":
        emit(f"reason: {status.get('reason')}")
    return status


def _dp_row(data_dir: Path, out: Path, rounds: int, seed: int, emit: Callable[[str], None]) -> dict[str, Any]:
    """The same sites federated with DP-SGD as `fedmed simulate` trains by default (its
    model and DP recipe, ε = 8 per site; the epochs and lr below), for a few rounds: the row it prints shows the
    budget spent and what the model learned, with the model-health warning when it did
    not. The sites send exact held-out metrics here (a trial on synthetic data, as
    `--no-dp-metrics` does): noised histograms of some 50 held-out images per site would
    hide what the DP model really does."""
    # A site of 190 images is smaller than DP-SGD's batch of 512: an epoch is a single
    # full-batch step, each as large as the recipe's lr makes a step of 512 records. So the
    # row trains DP_EPOCHS local epochs a round at DP_LR, the recipe's lr scaled by 190/512
    # (for the demo's default of 240 images per site, about 190 of them for training)
    # (measured on the demo's sites over three seeds, 2 rounds: 5 epochs at that lr, held-out
    # AUC 0.86-0.93; 3 epochs at lr 1, 0.62-0.75; docs/privacy.md).
    config = FederationConfig(rounds=rounds, epochs=DP_EPOCHS, min_sites=len(DEMO_SITES), seed=seed,
                              image=ImageSettings(modalities=("CT",)), dp_lr=DP_LR)
    run_dir = out / "run-dp"
    emit(f"with DP-SGD (epsilon {DP_EPSILON:g} per site, the default): the same sites for {rounds} round(s) "
         f"of {config.epochs} local epochs at lr {config.dp_lr:g}, {config.model} (DP's default model); "
         "exact held-out metrics, as --no-dp-metrics gives")
    privacy = PrivacyPolicy(enabled=True, epsilon=DP_EPSILON, private_metrics=False)
    # The state folders are the federation's above: the decoded images are cached there.
    status = simulate(dicom_sites(data_dir, out / "state", privacy), config, run_dir,
                      meta={"dp": True, "epsilon": DP_EPSILON, "demo": True})
    records = read_metrics(run_dir)
    if status["status"] != "completed" or not records:
        emit(f"the DP federation did not complete: {status.get('reason')}")
        return status
    emit("final DP round, per site (held-out patients; eps: the budget each site has spent):")
    _site_table(records[-1], emit, epsilon=True)
    words = progress.final_words(records[-1], config.classes)
    emit(words if words else "the DP model ranks every site's held-out patients better than chance")
    emit("")
    return status
