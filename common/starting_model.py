"""`--init-from MODEL`: the weights a federation starts from instead of a random model.

MODEL is either

- a fedmed model file (`fedmed.common.checkpoint`: an earlier run's `model-final.pt` or a
  `fedmed pretrain` output). It must be the federation's architecture, classes (same
  names, same order) and image size; anything else is refused with one line saying which;
- a torchvision-format state dict (`torch.save(model.state_dict(), FILE)` of a torchvision
  model) of a supported architecture, today ResNet-18, that the user has on disk. Nothing
  is downloaded. It is adapted to fedmed's one-channel, GroupNorm ResNet-18: the RGB stem
  is summed over its colour channels (a grey image is the same value in R, G and B, so the
  first layer's response to it is unchanged); BatchNorm's affine weights become
  GroupNorm's (its running statistics have no counterpart and are dropped: a close start,
  not the same function); the stem of a small-image model (3×3, below 64 pixels) and a
  head for another number of classes start fresh.

Both are read with `torch.load(weights_only=True)`: a model file cannot run code here.
Weights left fresh are drawn from the run's seed exactly as a random start would be.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmed.common.checkpoint import FORMAT
from fedmed.common.federation import FederationConfig
from fedmed.common.freezing import check_freeze
from fedmed.common.models import build_model

# Architectures a torchvision state dict can start; the key that tells them apart.
TORCHVISION_ARCHITECTURES = {"resnet18": "layer4.1.conv2.weight"}
# A torchvision file must fill at least this share of the model's weights to be taken as
# that architecture: a ResNet-34 or -50 file matches far fewer names and shapes.
_MIN_MATCHED = 0.8


@dataclass(frozen=True)
class StartingModel:
    """The weights a run starts from, and where they came from."""

    state_dict: dict[str, torch.Tensor]
    path: str
    sha256: str
    source: str                      # "fedmed" or "torchvision"
    fresh: tuple[str, ...] = ()      # weights not taken from the file (random start)

    def to_meta(self) -> dict[str, Any]:
        """What the run's config.json records (`init_from`)."""
        return {"path": self.path, "sha256": self.sha256, "source": self.source, "fresh": list(self.fresh)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fresh_model(config: FederationConfig) -> torch.nn.Module:
    # The same draw as a random start (`fedmed.server.app.initial_arrays`).
    torch.manual_seed(config.seed)
    return build_model(config.model, len(config.classes), config.image.size)


def load_starting_model(path: str | Path, config: FederationConfig,
                        expected_sha256: str | None = None) -> StartingModel:
    """The start for a run of `config` from `path`. Raises ValueError with one line naming
    the file and what does not fit (and how to fix it)."""
    path = Path(path)
    where = f"--init-from {path}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file; give a fedmed model (e.g. a run's model-final.pt) "
                         "or a torchvision state-dict file")
    sha = _sha256(path)
    if expected_sha256 and sha != expected_sha256:
        raise ValueError(f"{where}: the file changed since the run was started (sha256 differs)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — torch raises many kinds for a bad file
        raise ValueError(f"{where}: not a model file torch can read safely ({type(exc).__name__})") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        weights, fresh, source = _from_fedmed(payload, config, where), (), "fedmed"
    elif isinstance(payload, dict) and _is_state_dict(payload.get("state_dict", payload)):
        weights, fresh = _from_torchvision(payload.get("state_dict", payload), config, where)
        source = "torchvision"
    else:
        raise ValueError(f"{where}: neither a fedmed model file nor a state dict of weights")
    return StartingModel(weights, str(path.resolve()), sha, source, tuple(fresh))


def _is_state_dict(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _from_fedmed(payload: dict, config: FederationConfig, where: str) -> dict[str, torch.Tensor]:
    model = str(payload.get("model"))
    classes = [str(c) for c in payload.get("classes") or []]
    size = (payload.get("image") or {}).get("size")
    if model != config.model:
        raise ValueError(f"{where}: a {model} model; this federation trains {config.model} "
                         f"(use --model {model})")
    if classes != list(config.classes):
        raise ValueError(f"{where}: trained for classes {','.join(classes)}; this federation has "
                         f"{','.join(config.classes)} (use --classes {','.join(classes)})")
    if size != config.image.size:
        raise ValueError(f"{where}: trained on {size}-pixel images; this federation uses "
                         f"{config.image.size} (use --image-size {size})")
    weights = payload.get("state_dict")
    expected = _fresh_model(config).state_dict()
    if not _is_state_dict(weights) or {k: tuple(v.shape) for k, v in weights.items()} != \
            {k: tuple(v.shape) for k, v in expected.items()}:
        raise ValueError(f"{where}: its weights do not fit a {model} model for {len(classes)} classes "
                         "and this image size; the file is damaged or was saved by another program")
    return {k: v.detach().clone() for k, v in weights.items()}


def _from_torchvision(source: dict[str, torch.Tensor], config: FederationConfig,
                      where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    if config.model not in TORCHVISION_ARCHITECTURES:
        raise ValueError(f"{where}: a torchvision state dict; torchvision weights can start "
                         f"{', '.join(TORCHVISION_ARCHITECTURES)} only, this federation trains "
                         f"{config.model} (use --model resnet18, or a fedmed model file)")
    target = _fresh_model(config).state_dict()
    out, fresh, matched = {}, [], 0
    for key, fresh_value in target.items():
        value = source.get(key)
        if value is not None and key == "conv1.weight" and value.ndim == 4 and value.shape[1] == 3 \
                and value.shape[2:] == fresh_value.shape[2:]:
            value = value.sum(dim=1, keepdim=True)  # RGB stem → one grey channel
        if value is not None and tuple(value.shape) == tuple(fresh_value.shape):
            out[key] = value.detach().clone().to(fresh_value.dtype)
            matched += 1
        else:
            out[key] = fresh_value
            fresh.append(key)
    if TORCHVISION_ARCHITECTURES[config.model] not in source or matched < _MIN_MATCHED * len(target):
        raise ValueError(f"{where}: not torchvision {config.model} weights ({matched} of "
                         f"{len(target)} weights match by name and shape)")
    # Name whole layers, not every tensor of them.
    layers = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in fresh))
    return out, layers


def transfer_meta(init_from: str | Path | None, freeze: str, config: FederationConfig) -> dict[str, Any]:
    """What a run's config.json records about its start: {"init_from": ..., "freeze": ...},
    or {} for a random start. Raises ValueError (one line) for a model file that does not
    fit `config`, an unknown freeze mode, or freezing without a starting model."""
    freeze = check_freeze(freeze)
    if init_from is None:
        if freeze != "none":
            raise ValueError(f"--freeze {freeze}: needs --init-from MODEL (frozen random weights learn nothing)")
        return {}
    start = load_starting_model(init_from, config)
    return {"init_from": start.to_meta(), "freeze": freeze}


def describe_transfer(meta: dict[str, Any]) -> str:
    """One line for the operator: what the run starts from and which weights train."""
    start = meta.get("init_from")
    if not start:
        return "starting from random weights"
    fresh = f"; started fresh: {', '.join(start['fresh'])}" if start.get("fresh") else ""
    freeze = meta.get("freeze", "none")
    trained = "all weights train" if freeze == "none" else f"--freeze {freeze}"
    return f"starting from {start['source']} model {start['path']}{fresh}; {trained}"
