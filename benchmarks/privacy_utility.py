"""What a site's privacy budget costs in model quality: the same federation at ε = 1, 3, 8
and without DP.

    python -m benchmarks.privacy_utility            # the full table (tens of minutes on a 2-core CPU)
    python -m benchmarks.privacy_utility --smoke    # ε = 8 and no DP on tiny data, for CI (< 2 minutes)
    python -m benchmarks.privacy_utility --privacy-unit patient --epsilons 8   # per-patient DP

Three synthetic CT sites (`fedmed.simulations.synthetic_dicom`, abnormal fractions 50/30/15 %)
are written once; then the federation is run with `simulate` -- the real ServerApp and
ClientApp in Flower's simulation engine, DP-SGD, planning, budget checks and ledger
included -- once per budget, with the same data, seed and settings, and a fresh state
folder per run so that no run spends another's budget. Only the preprocessed-image cache
is copied into the fresh state folders, because decoding is not what is measured.

The table reports, per run: the budget, the noise multiplier σ the sites planned (the
largest over sites), the final cumulative ε the sites reported (the largest over sites;
every site's ledger holds it), the global model's example-weighted AUC and accuracy on the
sites' held-out patients, the worst site's AUC, and the run's wall time (Ray start-up,
training and evaluation). The held-out metrics are *not* differentially private: they are
the yardstick, computed at the sites on patients never trained on.

Why these settings (the full run; `docs/privacy.md` discusses them): DP-SGD's noise per
step is σ·C/B in every coordinate while the signal is at most C, so what helps is many
records per site (the privacy cost of a pass over the data falls with q = B/N), large
batches, a model with few weights (the small CNN's first dense layer has 64·(S/4)² ·128
weights at S×S pixels) and a step size large enough that the few, noisy steps go
somewhere. 48×48 keeps the synthetic nodules a few pixels wide (at 32×32 they are one or
two, and even the non-private model learns them slowly) while the CNN has 1.2 M weights
instead of 2.1 M at 64×64. DP sites train with the federation's DP recipe (SGD with
momentum at `dp_lr`); the run without DP uses Adam at fedmed's default learning rate
(1e-3: at 1e-2 this CNN's units died and every image got the same score).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.common.federation import FederationConfig
from fedmed.common.settings import ImageSettings
from fedmed.server.outputs import read_metrics, read_status
from fedmed.simulations.runner import simulate
from fedmed.simulations.sites import dicom_sites
from fedmed.simulations.synthetic_dicom import write_sites

from benchmarks.machine import cpu_model

SITES = ("A", "B", "C")
EPSILONS = (1.0, 3.0, 8.0)
NO_DP = "no DP"


@dataclass(frozen=True)
class Setup:
    """One size of the benchmark: the data written and the federation's settings."""

    images_per_site: int
    image_size: int
    rounds: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    max_grad_norm: float
    seed: int = 0

    def federation(self) -> FederationConfig:
        return FederationConfig(
            # DP sites train with the DP recipe's SGD at dp_lr (FederationConfig); this study
            # keeps its batch size for them too.
            rounds=self.rounds, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            dp_batch_size=self.batch_size,
            optimizer=self.optimizer, model="cnn", image=ImageSettings(size=self.image_size),
            min_sites=len(SITES), seed=self.seed,
        )


FULL = Setup(images_per_site=2000, image_size=48, rounds=5, epochs=4, batch_size=256,
             optimizer="adam", lr=1e-3, max_grad_norm=1.0)
# The smoke run checks that the pipeline produces the table, not that DP learns: one
# budget and the no-DP run (each `simulate` is 30-40 s of Ray start-up), 60 images per site
# (enough patients for both classes in every held-out split) at 32×32, one round.
SMOKE = Setup(images_per_site=60, image_size=32, rounds=1, epochs=1, batch_size=16,
              optimizer="adam", lr=1e-3, max_grad_norm=1.0)
SMOKE_EPSILONS = (8.0,)


@dataclass
class Result:
    budget: str            # "1", "3", "8" or "no DP"
    status: str            # the run's status.json: "completed" or "failed"
    reason: str
    sigma: float | None    # largest planned noise multiplier over the sites
    epsilon: float | None  # largest final cumulative ε over the sites
    auc: float | None
    accuracy: float | None
    worst_site_auc: float | None
    seconds: float


def _warm_cache(data: Path, warm: Path, config: FederationConfig) -> None:
    """Decode every site once, so each run's fresh state folder can start from the cache."""
    for site in dicom_sites(data, warm, PrivacyPolicy(enabled=False)):
        site.load_data(config)


def _fresh_state(warm: Path, state: Path) -> None:
    for site in SITES:
        (state / site).mkdir(parents=True)
        if (warm / site / "cache").is_dir():
            shutil.copytree(warm / site / "cache", state / site / "cache")


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _result(budget: str, run_dir: Path, seconds: float) -> Result:
    status = read_status(run_dir) or {"status": "failed", "reason": "no status.json"}
    rows = read_metrics(run_dir)
    last = rows[-1] if rows else {"sites": {}, "aggregate": {}, "privacy": {}}
    sigmas = [s.get("noise_multiplier") for row in rows for s in row["sites"].values()]
    sigmas = [v for v in map(_finite, sigmas) if v is not None]
    aggregate = last.get("aggregate", {})
    return Result(
        budget=budget, status=status["status"], reason=status.get("reason", ""),
        sigma=max(sigmas) if sigmas else None,
        epsilon=_finite((last.get("privacy") or {}).get("max_epsilon")),
        auc=_finite(aggregate.get("auc")), accuracy=_finite(aggregate.get("accuracy")),
        worst_site_auc=_finite(aggregate.get("worst_site_auc")), seconds=seconds,
    )


def run_benchmark(setup: Setup, out: Path, epsilons: tuple[float, ...] = EPSILONS,
                  log=print, units: tuple[str, ...] = ("image",), no_dp: bool = True) -> list[Result]:
    """Write the sites under `out`, run one federation per budget and one without DP."""
    data, warm = out / "data", out / "warm-cache"
    config = setup.federation()
    log(f"writing {len(SITES)} sites x {setup.images_per_site} images under {data}")
    write_sites(data, SITES, images_per_site=setup.images_per_site, seed=setup.seed)
    _warm_cache(data, warm, config)
    results = []
    runs = [(eps, unit) for eps in epsilons for unit in units] + ([(None, "image")] if no_dp else [])
    for eps, unit in runs:
        per = "" if unit == "image" else f" per {unit}"
        budget = NO_DP if eps is None else f"{eps:g}{per}"
        label = "no-dp" if eps is None else f"eps-{eps:g}-{unit}"
        state, run_dir = out / f"state-{label}", out / f"run-{label}"
        _fresh_state(warm, state)
        policy = (PrivacyPolicy(enabled=False) if eps is None
                  else PrivacyPolicy(epsilon=eps, max_grad_norm=setup.max_grad_norm, unit=unit))
        started = time.perf_counter()
        simulate(dicom_sites(data, state, policy), config, run_dir,
                 meta={"benchmark": "privacy_utility", "dp": eps is not None, "epsilon": eps})
        result = _result(budget, run_dir, time.perf_counter() - started)
        log(f"  epsilon {budget}: {result.status}, AUC {result.auc}, {result.seconds:.0f} s")
        results.append(result)
    return results


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(setup: Setup, results: list[Result]) -> str:
    """The results as a markdown table, preceded by how and where they were measured."""
    import torch

    lines = [
        f"3 synthetic CT sites × {setup.images_per_site} images (abnormal 50/30/15 %), "
        f"{setup.image_size}×{setup.image_size}, cnn, batch {setup.batch_size}, "
        f"{setup.rounds} rounds × {setup.epochs} local epochs; without DP {setup.optimizer} lr "
        f"{setup.lr:g}, with DP the DP recipe's SGD ("
        f"lr {FederationConfig().dp_lr:g} cosine-decayed); "
        f"clip norm C = {setup.max_grad_norm:g}, δ = default_delta(N), seed {setup.seed}.",
        f"Measured {date.today().isoformat()} on {cpu_model()} ({os.cpu_count()} cores), "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        "| ε budget | planned σ | final ε (max over sites) | AUC | accuracy | worst-site AUC | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        note = "" if r.status == "completed" else f" ({r.status}: {r.reason})"
        lines.append(
            f"| {r.budget} | {_num(r.sigma, 2)} | {_num(r.epsilon, 2)} | {_num(r.auc, 3)}{note} | "
            f"{_num(r.accuracy, 3)} | {_num(r.worst_site_auc, 3)} | {r.seconds:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny data, one round: checks the pipeline only")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for data, state and runs (default: a temporary folder, removed)")
    p.add_argument("--images-per-site", type=int, default=None, help="override the setup's data size")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--epsilons", type=float, nargs="+", default=None, help="budgets to run (default 1 3 8)")
    p.add_argument("--privacy-unit", choices=("image", "patient", "both"), default="image",
                   help="what DP protects in the DP rows (both: a row for each)")
    p.add_argument("--no-baseline", action="store_true", help="leave out the run without DP")
    return p


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the markdown table."""
    args = _parser().parse_args(argv)
    setup = SMOKE if args.smoke else FULL
    if args.images_per_site:
        setup = replace(setup, images_per_site=args.images_per_site)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="fedmed-privacy-utility-") as tmp:
        out = args.out or Path(tmp)
        if args.out is not None and out.exists() and any(out.iterdir()):
            raise SystemExit(f"--out {out}: expected an empty or new folder")
        out.mkdir(parents=True, exist_ok=True)
        epsilons = tuple(args.epsilons) if args.epsilons else (SMOKE_EPSILONS if args.smoke else EPSILONS)
        units = ("image", "patient") if args.privacy_unit == "both" else (args.privacy_unit,)
        results = run_benchmark(setup, out, epsilons, log=lambda msg: print(msg, file=sys.stderr, flush=True),
                                units=units, no_dp=not args.no_baseline)
    table = markdown(setup, results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"setup": asdict(setup), "results": [asdict(r) for r in results]},
                                        indent=2) + "\n")
    return table


if __name__ == "__main__":
    main()
