"""The models a federation can train, chosen by name.

Both sides build the same architecture: the coordinator to hold and checkpoint the global
weights, each site to train them. Every model here takes one-channel images of any square
size and works under Opacus (no BatchNorm, no in-place operations on a residual path).
"""

from __future__ import annotations

import math
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


class StandardizedConv2d(nn.Conv2d):
    """A convolution whose kernel is standardised (zero mean, unit variance per output
    channel) on every forward pass: weight standardisation (Qiao et al. 2019, "Micro-Batch
    Training with Batch-Channel Normalization and Weight Standardization"), which De et al.
    2022 ("Unlocking High-Accuracy Differentially Private Image Classification through
    Scale") pair with GroupNorm for DP-SGD. The stored weights are plain conv weights, so
    checkpoints and federated averaging see an ordinary layer.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ImageStandardize(nn.Module):
    """Each image scaled to zero mean and unit variance on its own.

    It removes an image's overall brightness and contrast -- which differ between scanners
    and so between sites -- using nothing but that image, so it needs no statistic of any
    site's data (and no privacy budget).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (x - mean) / (std + 1e-3)


class DPCNN(nn.Module):
    """A small convolutional network built for DP-SGD: few weights, no dense layer on
    the feature map.

    DP-SGD adds noise of norm about σ·C·√d to each step's gradient sum for a model of d
    weights, while the clipped signal is at most C per record, so d is what a small
    hospital's data set pays for. Here d is about 25 k, against the `cnn` model's 421 k
    on 28×28 (most of them in its first dense layer); the ratio of noise to signal drops
    about four-fold. The design follows what the DP literature found to train well:

    * each image standardised on its own (`ImageStandardize`);
    * four 3×3 convolutions with weight standardisation and GroupNorm (De et al. 2022),
      no BatchNorm, whose batch statistics DP-SGD cannot use;
    * global average pooling then one linear layer, so the head's size does not grow
      with the image;
    * the final layer zero-initialised: the first steps then do not start from a random
      ranking of the classes, which noisy steps are slow to undo.

    Works for any square input of side ≥ 8.
    """

    def __init__(self, num_classes: int, image_size: int, widths: tuple[int, ...] = (16, 32, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [ImageStandardize()]
        channels = 1
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [
                StandardizedConv2d(channels, width, kernel_size=3, stride=stride, padding=1),
                nn.GroupNorm(min(8, width // 4), width),
                nn.ReLU(),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class ScatterNet(nn.Module):
    """A fixed scattering front end and a small trained head: DP-SGD pays only for the head.

    Tramèr & Boneh 2021 ("Differentially Private Learning Needs Better Features") showed
    that under DP-SGD a model on hand-designed features that need no data -- the
    scattering transform (`fedmed.common.scattering`) -- beats CNNs trained end to end,
    because the noise grows with the number of trained weights and the fixed features
    already separate the classes well. Here:

    * each image standardised on its own (`ImageStandardize`, no site statistic needed);
    * the scattering transform with J = 2 scales and L = 8 orientations: 81 maps at a
      quarter of the image's side (7×7 on 28×28), no trainable weights; on larger images
      the maps are averaged down to 7×7 (`MAX_SIDE`), so the head keeps the size that
      DP-SGD's noise was measured to allow (64×64 would give 16×16 maps and a head of
      41 k weights, which the noise drove to one class on sites of a few hundred images);
    * GroupNorm over the maps (its statistics come from each image alone);
    * ``head="linear"``: one zero-initialised linear layer on the normalised maps
      (81·7·7·2 + 2 ≈ 8 k weights at any image size); ``head="cnn"``: one 3×3 convolution of
      `width` channels, GroupNorm, ReLU, global average pooling and a zero-initialised
      linear layer.

    Any square input of side ≥ 8 works.
    """

    MAX_SIDE = 7

    def __init__(self, num_classes: int, image_size: int, head: str = "linear", width: int = 32,
                 groups: int = 27) -> None:
        super().__init__()
        from fedmed.common.scattering import Scattering2D

        self.standardize = ImageStandardize()
        self.scattering = Scattering2D(image_size, J=2, L=8)
        channels = self.scattering.channels
        side = min(self.scattering.side, self.MAX_SIDE)
        # Fixed like the transform (no weights): part of `scatter`, before the normalisation.
        self.pool = nn.AdaptiveAvgPool2d(side) if side < self.scattering.side else nn.Identity()
        self.norm = nn.GroupNorm(groups, channels)
        if head == "linear":
            self.features = nn.Flatten()
            self.head = nn.Linear(channels * side * side, num_classes)
        elif head == "cnn":
            self.features = nn.Sequential(
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.GroupNorm(min(8, width // 4), width),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Linear(width, num_classes)
        else:
            raise ValueError(f"scatternet head: expected linear or cnn, got {head!r}")
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed part: the scattering maps of the standardised images."""
        return self.pool(self.scattering(self.standardize(x)))

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        """The trained part, on scattering maps."""
        return self.head(self.features(self.norm(maps)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.scatter(x))


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
    "dpcnn": lambda num_classes, image_size: DPCNN(num_classes, image_size),
    "resnet18": build_resnet18,
    "scatternet": lambda num_classes, image_size: ScatterNet(num_classes, image_size),
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
