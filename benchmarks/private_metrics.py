"""What private evaluation metrics cost in accuracy of the metrics themselves.

    python -m benchmarks.private_metrics            # the table in docs/privacy.md (seconds)

A site with DP on sends its held-out score histograms with Gaussian noise whose σ the
planner gives its evaluation share (10 % of ε) for a run of 5 rounds
(`fedmed.client.privacy.planning.plan_release_noise`); the coordinator makes the counts
consistent and derives AUC and balanced accuracy (`fedmed.common.metrics`). This measures,
for held-out splits of a given size per site (40 % class 1), how far the AUC derived from
one site's noised histograms, and from three sites' pooled, lands from the AUC of the
same histograms without noise: mean ± standard deviation of the error over `--draws`
draws. The scores are a logistic model's on synthetic features (exact AUC about 0.92),
so the figures describe the noise, not any model.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from fedmed.client.privacy.planning import plan_release_noise
from fedmed.common.metrics import choose_threshold, consistent_counts, histogram_metrics, score_histograms

EPSILONS = (8.0, 3.0, 1.0)
SIZES = (100, 400, 1600)
ROUNDS, SHARE, DELTA, SITES = 5, 0.1, 1e-5, 3


def _scores(rng: np.random.Generator, n: int) -> np.ndarray:
    labels = (rng.random(n) < 0.4).astype(int)
    logits = rng.normal(0, 1.5, n) + 3.0 * (labels - 0.5)
    return score_histograms(1 / (1 + np.exp(-logits)), labels)


def _summary(errors: list[float]) -> str:
    finite = [e for e in errors if math.isfinite(e)]
    undefined = len(errors) - len(finite)
    text = f"{np.mean(finite):+.3f} ± {np.std(finite):.3f}" if finite else "undefined"
    return text + (f" ({undefined} undefined)" if undefined else "")


def measure(draws: int, seed: int = 0) -> list[dict]:
    rows = []
    for eps in EPSILONS:
        sigma = plan_release_noise(ROUNDS, SHARE * eps, DELTA)
        rng = np.random.default_rng(seed)
        for n in SIZES:
            site_err, pooled_err = [], []
            for _ in range(draws):
                hists = [_scores(rng, n) for _ in range(SITES)]
                noised = [consistent_counts(h + rng.normal(0, sigma, h.shape)) for h in hists]
                site_err.append(histogram_metrics(noised[0])["auc"] - histogram_metrics(hists[0])["auc"])
                exact, pooled = sum(hists), sum(noised)
                pooled_err.append(histogram_metrics(pooled, choose_threshold(pooled))["auc"]
                                  - histogram_metrics(exact, choose_threshold(exact))["auc"])
            rows.append({"epsilon": eps, "sigma": sigma, "n": n, "site": _summary(site_err),
                         "pooled": _summary(pooled_err)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"| site ε | release σ | held-out images per site | AUC error, one site | AUC error, {SITES} sites pooled |")
    print("|---|---|---|---|---|")
    for row in measure(args.draws):
        print(f"| {row['epsilon']:g} | {row['sigma']:.1f} | {row['n']} | {row['site']} | {row['pooled']} |")


if __name__ == "__main__":
    main()
