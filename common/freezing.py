"""Which of a model's weights the sites train when a federation starts from a saved model.

`--freeze` (on `fedmed server start` and `fedmed simulate`, with `--init-from`):

- ``none``: every weight trains;
- ``body``: only the head trains, the final linear layer that maps features to classes
  (a linear probe on the starting model's features);
- ``all-but-last-block``: the head and the last block before it train — the last top-level
  part of the network with weights other than the head (ResNet-18: ``layer4``; the `cnn`:
  its fully connected ``classifier``).

The rule is read off the module tree, so a new architecture needs no table entry.

Frozen weights are not trained and, under DP-SGD, not noised: they get no gradient, and
Opacus clips and noises only parameters that require one. The privacy guarantee (σ, q,
steps, hence ε) is unchanged, but the noise added per step has norm σ·C·√d over the d
*trained* weights while a record's clipped gradient still has norm up to C: training fewer
weights gives each step a better signal-to-noise ratio (Tramèr & Boneh 2021, "Differentially
private learning needs better features (or much more data)"). `trainable_count` gives d.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where a model is at hand: the ServerApp checks modes without it
    from torch import nn

FREEZE_MODES = ("none", "body", "all-but-last-block")


def check_freeze(mode: str) -> str:
    if mode not in FREEZE_MODES:
        raise ValueError(f"--freeze: expected one of {', '.join(FREEZE_MODES)}, got {mode!r}")
    return mode


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def head_name(model: nn.Module) -> str:
    """The qualified name of the model's last linear layer (its classification head)."""
    from torch import nn

    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"--freeze: {type(model).__name__} has no linear head to train")
    return linear[-1]


def trainable_prefixes(model: nn.Module, mode: str) -> tuple[str, ...]:
    """Module-name prefixes whose parameters train under `mode` ("" = all)."""
    check_freeze(mode)
    if mode == "none":
        return ("",)
    head = head_name(model)
    if mode == "body":
        return (head,)
    top = [name for name, child in model.named_children() if _has_weights(child)]
    last = top[-1]
    if last == head:  # the head is a top-level layer of its own (ResNet's fc)
        last = top[-2] if len(top) > 1 else head
    return tuple(dict.fromkeys((last, head)))


def _trains(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def apply_freeze(model: nn.Module, mode: str) -> int:
    """Set `requires_grad` by `mode`; return the number of weights that train."""
    prefixes = trainable_prefixes(model, mode)
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(_trains(name, prefixes))
        count += param.numel() if param.requires_grad else 0
    return count


def trainable_count(model: nn.Module, mode: str = "none") -> int:
    """How many weights train under `mode` (d in the DP noise norm σ·C·√d)."""
    prefixes = trainable_prefixes(model, mode)
    return sum(p.numel() for name, p in model.named_parameters() if _trains(name, prefixes))


def frozen_names(model: nn.Module, mode: str) -> list[str]:
    """The state_dict keys of the parameters that do not train under `mode`."""
    prefixes = trainable_prefixes(model, mode)
    return [name for name, _ in model.named_parameters() if not _trains(name, prefixes)]
