"""A federation's training configuration: what the coordinator decides for every site.

It is written to the run's `config.json`, travels to the sites inside every training and
evaluation message (as one JSON string in the message's ConfigRecord), and is stored in
every checkpoint. What a site decides for itself (its name, data, privacy budget) is not
here: that is the site's own configuration and never leaves it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fedmed.common.settings import DEFAULT_CLASSES, ImageSettings

# The models `common/models.py` builds; named here so that reading a config needs no torch.
MODEL_NAMES = ("cnn", "dpcnn", "resnet18", "scatternet")
OPTIMIZERS = ("sgd", "adam")
STRATEGIES = ("fedavg", "fedavgm", "fedadam")
# The server-side settings each strategy reads; the others leave them unused.
STRATEGY_SETTINGS = {"fedavg": (), "fedavgm": ("server_momentum",), "fedadam": ("server_lr",)}


@dataclass(frozen=True)
class FederationConfig:
    """Training settings shared by all sites of one run."""

    rounds: int = 5
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    model: str = "scatternet"
    classes: tuple[str, ...] = DEFAULT_CLASSES
    image: ImageSettings = field(default_factory=ImageSettings)
    min_sites: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    round_timeout: float = 1800.0
    strategy: str = "fedavg"
    server_lr: float = 1e-2
    # A site training with DP-SGD uses these instead of batch_size/lr/optimizer: plain SGD
    # (momentum dp_momentum) on large Poisson batches (docs/privacy.md, "The DP recipe").
    dp_batch_size: int = 512
    dp_lr: float = 1.0
    dp_momentum: float = 0.0
    # Label-preserving augmentation at the sites (fedmed.client.augmentation); flips only
    # where left and right carry no meaning. Sites without DP augment every batch. A DP-SGD
    # site augments only with augment_views = K ≥ 2: K augmented views of each sampled
    # record averaged before its gradient is clipped (one view per record measured worse
    # than none under DP; docs/privacy.md).
    augment: bool = True
    flips: bool = False
    augment_views: int = 1
    server_momentum: float = 0.9

    def __post_init__(self) -> None:
        checks = [
            (self.rounds >= 1, f"rounds: expected at least 1, got {self.rounds}"),
            (self.epochs >= 1, f"epochs: expected at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size: expected at least 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate: expected a positive number, got {self.lr}"),
            (self.optimizer in OPTIMIZERS,
             f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.model in MODEL_NAMES,
             f"model: expected one of {', '.join(MODEL_NAMES)}, got {self.model!r}"),
            (len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes),
             f"classes: expected at least two distinct names, got {','.join(self.classes)!r}"),
            (self.min_sites >= 1, f"min sites: expected at least 1, got {self.min_sites}"),
            (0.0 < self.val_fraction < 1.0,
             f"validation fraction: expected a number between 0 and 1, got {self.val_fraction}"),
            (self.round_timeout > 0, f"round timeout: expected seconds > 0, got {self.round_timeout}"),
            (self.strategy in STRATEGIES,
             f"strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}"),
            (self.server_lr > 0, f"server learning rate: expected a positive number, got {self.server_lr}"),
            (self.dp_batch_size >= 1, f"DP batch size: expected at least 1, got {self.dp_batch_size}"),
            (self.dp_lr > 0, f"DP learning rate: expected a positive number, got {self.dp_lr}"),
            (0 <= self.dp_momentum < 1,
             f"DP momentum: expected 0 <= momentum < 1, got {self.dp_momentum}"),
            (1 <= self.augment_views <= 64,
             f"augmentation views: expected 1 to 64, got {self.augment_views}"),
            (0 <= self.server_momentum < 1,
             f"server momentum: expected 0 <= momentum < 1, got {self.server_momentum}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def with_(self, **changes: Any) -> "FederationConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["image"] = self.image.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FederationConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "classes" in known:
            known["classes"] = tuple(str(c) for c in known["classes"])
        if "image" in known:
            known["image"] = ImageSettings.from_dict(known["image"])
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> "FederationConfig":
        return cls.from_dict(json.loads(text))


def parse_classes(text: str) -> tuple[str, ...]:
    """`normal,abnormal` → ("normal", "abnormal")."""
    return tuple(c.strip() for c in text.split(",") if c.strip())
