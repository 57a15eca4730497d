"""Will DP-SGD learn anything here? A site's noise-to-signal ratio, checked before training.

Each DP-SGD step adds Gaussian noise of standard deviation σ·C to every one of the model's
d trainable weights of the sum of clipped per-record gradients, whose norm is at most C per
record; averaged over an expected batch of q·N records, the noise has norm about σ·C·√d /
(q·N) while the signal is at most C. Their ratio,

    noise-to-signal = σ · √d / (q · N),

is the first thing to look at when a private model does not learn (De et al. 2022,
"Unlocking High-Accuracy Differentially Private Image Classification through Scale", §3;
Tramèr & Boneh 2021, "Differentially Private Learning Needs Better Features", §2). It needs
no data, only the plan: σ from the budget, q and N from the site's size, d from the model.

`NOISE_WARNING_RATIO` is where fedmed's measurements on PneumoniaMNIST stopped learning
(docs/benchmarks.md): sites below it learned, sites well above it sent mostly noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

NOISE_WARNING_RATIO = 3.0
"""Warn when the planned noise-to-signal ratio per step is above this."""


@dataclass(frozen=True)
class NoiseCheck:
    """The planned ratio and, when it predicts no learning, one line saying what to do."""

    ratio: float
    noise_multiplier: float
    expected_batch: float
    parameters: int

    @property
    def learns(self) -> bool:
        return self.ratio <= NOISE_WARNING_RATIO

    def warning(self) -> str | None:
        """One line for the site's log, or None when the plan looks workable."""
        if self.learns:
            return None
        return (
            f"DP-SGD is unlikely to learn here: per step the noise is {self.ratio:.1f}x the largest "
            f"gradient signal (noise multiplier {self.noise_multiplier:.2f}, expected batch "
            f"{self.expected_batch:.0f} images, {self.parameters:,} trainable weights; learning needs "
            f"about {NOISE_WARNING_RATIO:g}x or less). Remedies: fewer rounds or local epochs, a larger "
            "epsilon, more training images at this site, a larger batch, or a smaller model "
            "(--model dpcnn)."
        )


def trainable_parameters(model: nn.Module) -> int:
    """d: the number of weights DP-SGD adds noise to."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def noise_to_signal(noise_multiplier: float, sample_rate: float, num_examples: int,
                    parameters: int) -> NoiseCheck:
    """σ·√d / (q·N) for a plan of noise multiplier σ at sampling rate q over N records."""
    expected_batch = max(sample_rate * num_examples, 1e-12)
    ratio = noise_multiplier * math.sqrt(parameters) / expected_batch
    return NoiseCheck(ratio=ratio, noise_multiplier=float(noise_multiplier),
                      expected_batch=expected_batch, parameters=int(parameters))
