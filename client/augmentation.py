"""Label-preserving data augmentation at a site: pure functions of a batch of images.

Small medical data sets are the norm, and showing the model slightly different versions
of each training image (a few degrees of rotation, a pixel or two of shift, a little zoom,
a little brightness and contrast) is the standard answer to it. Every transform here keeps
the diagnosis: nothing is cut off, no colours are invented, and left–right flips are off
unless a federation turns them on (`FederationConfig.flips`), because laterality carries
meaning in many images (situs, a heart on the left, a marker on one side).

All functions take a float batch shaped (N, 1, H, W) of model inputs (already windowed and
normalised) and a `torch.Generator`, and return a new batch of the same shape: with the same
generator state they give the same result. Labels never change, so they are not passed.

With DP-SGD, `views` augmented copies of each record are averaged *before* the record's
gradient is clipped (augmentation multiplicity, De et al. 2022, "Unlocking High-Accuracy
Differentially Private Image Classification through Scale", §3.1): the record is still the
unit that is sampled, clipped and noised, so the privacy accounting does not change, while
the record's gradient becomes less noisy. `repeat_views` lays the copies out record-major
for that average (`fedmed.client.privacy.dp_sgd`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedmed.common.federation import FederationConfig


@dataclass(frozen=True)
class AugmentSettings:
    """How strongly to perturb each image.

    max_rotation: degrees, drawn uniformly in ±max_rotation.
    max_shift: fraction of the image side, drawn uniformly in ±max_shift along each axis.
    max_zoom: scale drawn uniformly in [1 − max_zoom, 1 + max_zoom].
    max_brightness: added to the normalised image, uniformly in ±max_brightness.
    max_contrast: the image is scaled about its mean by a factor in [1 − c, 1 + c].
    flips: left–right flips with probability ½ (off by default: laterality).
    """

    max_rotation: float = 10.0
    max_shift: float = 0.06
    max_zoom: float = 0.08
    max_brightness: float = 0.1
    max_contrast: float = 0.1
    flips: bool = False


def settings_for(config: FederationConfig) -> AugmentSettings | None:
    """The run's augmentation, or None when the federation turned it off."""
    return AugmentSettings(flips=config.flips) if config.augment else None


def _uniform(n: int, half_width: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    return (2 * u - 1) * half_width


def random_affine(x: torch.Tensor, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """Rotate, shift and zoom each image by its own small random amount.

    Pixels brought in from outside the image repeat its border (not black), so no edge
    appears that the model could learn from.
    """
    n = x.shape[0]
    if n == 0:
        return x.clone()
    angle = _uniform(n, math.radians(settings.max_rotation), generator, x.device)
    zoom = 1 + _uniform(n, settings.max_zoom, generator, x.device)
    shift = torch.stack([_uniform(n, 2 * settings.max_shift, generator, x.device),
                         _uniform(n, 2 * settings.max_shift, generator, x.device)], dim=1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], dim=1),
                         torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def intensity_jitter(x: torch.Tensor, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """Scale each image's contrast about its own mean and shift its brightness."""
    n = x.shape[0]
    if n == 0:
        return x.clone()
    shape = (n,) + (1,) * (x.dim() - 1)
    contrast = (1 + _uniform(n, settings.max_contrast, generator, x.device)).view(shape).to(x.dtype)
    brightness = _uniform(n, settings.max_brightness, generator, x.device).view(shape).to(x.dtype)
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return (x - mean) * contrast + mean + brightness


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left–right with probability ½."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < 0.5
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def augment(x: torch.Tensor, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """One random label-preserving version of every image of the batch."""
    out = random_affine(x, settings, generator)
    out = intensity_jitter(out, settings, generator)
    if settings.flips:
        out = random_flip(out, generator)
    return out


def repeat_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """Each record `views` times in a row: records r₀r₀r₀r₁r₁r₁..., so that the gradients of
    one record's views are rows [i·views, (i+1)·views) of a per-sample gradient."""
    if views < 1:
        raise ValueError(f"augmentation views: expected at least 1, got {views}")
    return x.repeat_interleave(views, dim=0)


def average_views(per_sample: torch.Tensor, views: int) -> torch.Tensor:
    """Per-view gradients (N·views, ...) → per-record gradients (N, ...), the mean of each
    record's views (the inverse layout of `repeat_views`)."""
    if per_sample.shape[0] % views:
        raise ValueError(f"augmentation views: {per_sample.shape[0]} per-sample gradients do not "
                         f"divide into groups of {views}")
    return per_sample.view(per_sample.shape[0] // views, views, *per_sample.shape[1:]).mean(dim=1)
