"""Will DP-SGD learn anything here? A site's noise-to-signal ratio, checked before training.

Each DP-SGD step adds Gaussian noise of standard deviation σ·C to every one of the model's
d trainable weights of the sum of clipped per-record gradients, whose norm is at most C per
record; averaged over an expected batch of q·N records, the noise has norm about σ·C·√d /
(q·N) while the signal is at most C. Their ratio,

    noise-to-signal per step = σ · √d / (q · N),

is the first thing to look at when a private model does not learn (De et al. 2022,
"Unlocking High-Accuracy Differentially Private Image Classification through Scale", §3;
Tramèr & Boneh 2021, "Differentially Private Learning Needs Better Features", §2). Over the
T steps of a run the signal adds up T times while independent noise adds up only √T times,
so what decides whether the run learns is

    noise-to-signal over the run = σ · √d / (q · N · √T).

Both need no data, only the plan: σ from the budget, q and N from the site's size, T from
the rounds and epochs, d from the model. `RUN_WARNING_RATIO` is where fedmed's measurements
on PneumoniaMNIST (docs/privacy.md) stopped learning: 0.08–0.19 learned (AUC ≥ 0.8), 0.29
ended with the classes ranked the wrong way round at two of three seeds.

A warning goes to the site's own output and is kept in its state folder (`keep_warning`);
it is a statistic of the site's data (its size), so it is never sent to the coordinator. A
simulation, whose researcher holds every site's data, reads the kept ones (`kept_warning`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from fedmed.common.file_replace import replace_text

RUN_WARNING_RATIO = 0.25
"""Warn when the planned noise-to-signal ratio over the whole run is above this."""
WARNING_FILE = "noise-warning.json"
"""The site's latest warning and the run it was made for, in its state folder."""


@dataclass(frozen=True)
class NoiseCheck:
    """The planned ratios and, when they predict no learning, one line saying what to do."""

    per_step: float
    over_run: float
    noise_multiplier: float
    expected_batch: float
    parameters: int
    steps: int

    @property
    def learns(self) -> bool:
        return self.over_run <= RUN_WARNING_RATIO

    def warning(self) -> str | None:
        """One line for the site's log, or None when the plan looks workable."""
        if self.learns:
            return None
        return (
            f"DP-SGD is unlikely to learn here: the noise is {self.per_step:.1f}x the largest gradient "
            f"signal per step and {self.over_run:.2f}x over the run's {self.steps} steps (noise "
            f"multiplier {self.noise_multiplier:.2f}, expected batch {self.expected_batch:.0f} images, "
            f"{self.parameters:,} trainable weights; learning needs about {RUN_WARNING_RATIO:g}x or "
            "less over the run). Remedies: a larger epsilon, more training images at this site, "
            "fewer rounds or local epochs at a larger batch, or a model with fewer weights "
            "(--model scatternet, if it is not the model already)."
        )


def trainable_parameters(model: nn.Module) -> int:
    """d: the number of weights DP-SGD adds noise to."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def noise_to_signal(noise_multiplier: float, sample_rate: float, num_examples: int,
                    parameters: int, steps: int) -> NoiseCheck:
    """σ·√d / (q·N) per step, and divided by √T over a run of T steps."""
    expected_batch = max(sample_rate * num_examples, 1e-12)
    per_step = noise_multiplier * math.sqrt(parameters) / expected_batch
    steps = max(int(steps), 1)
    return NoiseCheck(per_step=per_step, over_run=per_step / math.sqrt(steps),
                      noise_multiplier=float(noise_multiplier), expected_batch=expected_batch,
                      parameters=int(parameters), steps=steps)


def keep_warning(state_dir: Path, run: str, text: str) -> None:
    """Keep a run's warning in the site's state folder (replacing an earlier run's)."""
    replace_text(Path(state_dir) / WARNING_FILE, json.dumps({"run": run, "warning": text}))


def kept_warning(state_dir: Path) -> tuple[str, str] | None:
    """(run, warning) as `keep_warning` left it, or None when there is none (or it is unreadable)."""
    try:
        kept = json.loads((Path(state_dir) / WARNING_FILE).read_text())
        return str(kept["run"]), str(kept["warning"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
