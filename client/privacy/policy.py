"""A site's privacy policy: its own decision, never the coordinator's.

The site sets the (ε, δ) budget for everything it will ever train on its data, the
per-sample clipping norm, and the largest noise multiplier it accepts (past that the
model would learn nothing, so the site declines the run instead). `enabled=False` is the
explicit `--no-dp` opt-out; it is recorded in every reply and in the run's outputs.

With DP on, the evaluation metrics the site sends are noised too, from `eval_share` of its
budget (`fedmed.client.privacy.disclosure`); `private_metrics=False` (`--no-dp-metrics`)
sends them exactly instead, for trials, and says so in every reply and in the ledger.
`new_ledger` is an administrator's reason for starting a new ledger where the state
folder shows the data set was spent on before (`--new-ledger REASON`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

DEFAULT_EPSILON = 8.0
DEFAULT_MAX_GRAD_NORM = 1.0
DEFAULT_MAX_NOISE_MULTIPLIER = 10.0
PRIVACY_UNITS = ("image", "patient")
"""What one privacy unit is: one image (record-level DP-SGD) or one patient (a patient's
images form one record, whose gradient is clipped as one; `fedmed.client.privacy.round`)."""
PATIENT_IMAGES = 1
"""With the patient unit, how many of a patient's images make up its record in a round
(drawn afresh each round; with fewer images, some are drawn twice). Their gradients are
averaged before the record is clipped, so the guarantee is per patient whatever this is.
More images give a less noisy gradient per patient, but the step's DP noise, not that,
limits learning: on the synthetic CT sites 4 images per patient measured no better than
one (exact held-out AUC 0.62 against 0.66, one run each, docs/privacy.md) at about seven
times the compute (per-input gradients instead of ghost clipping)."""
DEFAULT_EVAL_SHARE = 0.1
"""Share of ε the per-round evaluation releases of one run compose to on their own."""


@dataclass(frozen=True)
class PrivacyPolicy:
    enabled: bool = True
    epsilon: float = DEFAULT_EPSILON
    delta: float | None = None          # None: fedmed.client.privacy.accounting.default_delta(N)
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER
    private_metrics: bool = True
    eval_share: float = DEFAULT_EVAL_SHARE
    new_ledger: str | None = None
    unit: str = "image"

    def delta_for(self, n_train: int) -> float:
        """The site's δ: its own, else `default_delta` of its training-set size."""
        from .accounting import default_delta

        return self.delta or default_delta(n_train)

    def __post_init__(self) -> None:
        if self.enabled:
            if not self.epsilon > 0:
                raise ValueError(f"--epsilon: expected a positive budget, got {self.epsilon}")
            if self.delta is not None and not 0 < self.delta < 1:
                raise ValueError(f"--delta: expected 0 < delta < 1, got {self.delta}")
            if not self.max_grad_norm > 0:
                raise ValueError(f"--max-grad-norm: expected a positive norm, got {self.max_grad_norm}")
            if not self.max_noise_multiplier > 0:
                raise ValueError(f"--max-noise: expected a positive cap, got {self.max_noise_multiplier}")
            if self.unit not in PRIVACY_UNITS:
                raise ValueError(f"--privacy-unit: expected one of {', '.join(PRIVACY_UNITS)}, got {self.unit!r}")
            if not 0 < self.eval_share < 1:
                raise ValueError(f"--eval-share: expected a share of the budget in (0, 1), got {self.eval_share}")

    def to_node_config(self) -> dict[str, Any]:
        """As SuperNode node-config entries (TOML values)."""
        config = {"dp": self.enabled, "epsilon": float(self.epsilon), "delta": float(self.delta or 0.0),
                  "max-grad-norm": float(self.max_grad_norm), "max-noise": float(self.max_noise_multiplier),
                  "dp-metrics": self.private_metrics, "eval-share": float(self.eval_share),
                  "privacy-unit": self.unit}
        if self.new_ledger:
            config["new-ledger"] = self.new_ledger
        return config

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any]) -> "PrivacyPolicy":
        delta = float(config.get("delta", 0.0) or 0.0)
        return cls(
            enabled=bool(config.get("dp", True)),
            epsilon=float(config.get("epsilon", DEFAULT_EPSILON)),
            delta=delta or None,
            max_grad_norm=float(config.get("max-grad-norm", DEFAULT_MAX_GRAD_NORM)),
            max_noise_multiplier=float(config.get("max-noise", DEFAULT_MAX_NOISE_MULTIPLIER)),
            private_metrics=bool(config.get("dp-metrics", True)),
            eval_share=float(config.get("eval-share", DEFAULT_EVAL_SHARE)),
            new_ledger=str(config["new-ledger"]) if config.get("new-ledger") else None,
            unit=str(config.get("privacy-unit", "image")),
        )
