"""The models a federation can train, chosen by name.

Both sides build the same architecture: the coordinator to hold and checkpoint the global
weights, each site to train them. Every model here takes one-channel images of any square
size and works under Opacus (no BatchNorm, no in-place operations on a residual path).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from torch import nn

from fedmed.common.federation import MODEL_NAMES  # noqa: F401 — the names live with the config


class SmallCNN(nn.Module):
    """fedmed's original design: two conv 3×3 + ReLU + 2×2 max-pool blocks (32 and 64
    channels), then FC 128, ReLU, dropout, FC to the classes.

    The flattened size follows from `image_size`, so any square input of side ≥ 4 works.
    """

    def __init__(self, num_classes: int, image_size: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@lru_cache(maxsize=1)
def _out_of_place_basic_block() -> type:
    """torchvision's BasicBlock with the residual sum and activations out of place.

    Opacus' backward hooks fail on `out += identity` and `ReLU(inplace=True)`
    ("Output 0 of BackwardHookFunction is a view and is being modified inplace").
    Defined on first use: torchvision (and what it loads) stays out of processes that
    only ever build the small CNN.
    """
    from torchvision.models.resnet import BasicBlock

    class _OutOfPlaceBasicBlock(BasicBlock):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + identity)

    return _OutOfPlaceBasicBlock


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups is the GroupNorm paper's default (Wu & He, 2018); every ResNet-18 width
    # (64..512) divides by it.
    return nn.GroupNorm(min(32, channels), channels)


def build_resnet18(num_classes: int, image_size: int) -> nn.Module:
    """torchvision's ResNet-18 for one-channel images, GroupNorm instead of BatchNorm.

    Small inputs (MedMNIST's 28×28) keep their resolution: the 7×7 stride-2 stem and the
    max-pool would shrink them to 7×7 before the first block, so below 64 pixels the stem
    is a 3×3 stride-1 convolution without pooling.
    """
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes, norm_layer=_group_norm)
    if image_size < 64:
        model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.relu = nn.ReLU(inplace=False)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            block.__class__ = _out_of_place_basic_block()
            block.relu = nn.ReLU(inplace=False)
    return model


_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "cnn": lambda num_classes, image_size: SmallCNN(num_classes, image_size),
    "resnet18": build_resnet18,
}


def build_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """Build a model by name; raises ValueError naming the choices for an unknown name."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"model: expected one of {', '.join(MODEL_NAMES)}, got {name!r}"
        ) from None
    if num_classes < 2:
        raise ValueError(f"classes: expected at least 2 classes, got {num_classes}")
    return builder(num_classes, image_size)
