"""The local optimisers a site trains with: SGD (with or without momentum) and Adam.

Why not `torch.optim`: in torch 2.x every `torch.optim.Optimizer` imports `torch._dynamo`
(the compiler, with SymPy: about 80 MiB of private memory, measured) the first time it is used --
`add_param_group` (called by the constructor), `zero_grad`, `state_dict` and
`load_state_dict` are wrapped in `torch._disable_dynamo`, which imports it on the first
call, and `step` is wrapped in `_use_grad_for_differentiable`, which imports it on every
call. The functional forms (`torch.optim._functional`) carry the same wrappers. A site's
executor never compiles anything, so these classes apply the same update rules with plain
tensor operations and keep the compiler out of its memory. `tests/test_optimizers.py`
checks that they match `torch.optim` step for step, and `tests/test_light_processes.py`
that a site's training round, plain or DP-SGD, leaves `torch._dynamo` out of
`sys.modules`; a torch upgrade that changes either fails there. Two DP paths still load the compiler, through `torch.func.grad`, which
imports it: Opacus' `functorch` grad-sample mode, and the `dpcnn` model, whose
weight-standardised convolutions Opacus handles with functorch in every mode.

The update rules are torch's per-parameter ("for-loop") implementations with their
defaults (no weight decay, dampening, Nesterov, AMSGrad or maximisation), so on the CPU
the weights come out bit for bit the same as with `torch.optim.SGD` / `torch.optim.Adam`
(on a GPU, torch's default is its multi-tensor implementation: the same arithmetic, which
may round differently in the last bit).

They keep the parts of the optimiser interface that training and Opacus use:
`param_groups` (a list of dicts with ``params`` and the hyper-parameters), `defaults`,
`state` (per parameter), `step()`, `zero_grad()`, `state_dict()` / `load_state_dict()`.
Opacus' `DPOptimizer` wraps any object with these (it reads and writes `param_groups`,
`state` and `defaults` and calls `step` and `zero_grad`), so DP-SGD clips and noises the
gradients and then calls the same update rule. A parameter without a gradient (a frozen
weight) is left as it is, as torch does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Callable

import torch


class LocalOptimizer:
    """Parameter groups, per-parameter state and the calls around an update rule; a
    subclass supplies `DEFAULTS` and `_update` (one parameter group's step)."""

    DEFAULTS: dict[str, Any] = {}

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], **hyper: Any) -> None:
        unknown = set(hyper) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unexpected hyper-parameter(s) {', '.join(sorted(unknown))}")
        self.defaults: dict[str, Any] = {**self.DEFAULTS, **hyper}
        self._check(self.defaults)
        self.state: dict[torch.Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError(f"{type(self).__name__}: a parameter appears in more than one group")
        full = {**self.defaults, **group, "params": params}
        self._check(full)
        self.param_groups.append(full)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update(group)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: parameters by their index over the groups, in order."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError(f"{type(self).__name__}: the saved state has other parameter groups")
        by_index = {i: p for s, g in zip(saved, self.param_groups) for i, p in zip(s["params"], g["params"])}
        self.state = {}
        for i, values in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {k: v.to(device=p.device, dtype=p.dtype) if isinstance(v, torch.Tensor)
                             and v.is_floating_point() else v for k, v in values.items()}
        for s, g in zip(saved, self.param_groups):
            g.update({k: v for k, v in s.items() if k != "params"})

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({hyper})"

    def _check(self, hyper: dict[str, Any]) -> None:
        if not (isinstance(hyper["lr"], (int, float)) and math.isfinite(hyper["lr"]) and hyper["lr"] >= 0):
            raise ValueError(f"{type(self).__name__}: expected a learning rate >= 0, got {hyper['lr']!r}")

    def _update(self, group: dict[str, Any]) -> None:
        raise NotImplementedError


class SGD(LocalOptimizer):
    """Stochastic gradient descent with heavy-ball momentum μ, as `torch.optim.SGD`:

        b_1 = g_1,  b_t = μ·b_{t-1} + g_t,   θ_t = θ_{t-1} − lr·b_t

    (Polyak 1964, in the form of Sutskever et al. 2013, "On the importance of
    initialization and momentum in deep learning"); with μ = 0, θ_t = θ_{t-1} − lr·g_t.
    """

    DEFAULTS = {"lr": 1e-3, "momentum": 0.0}

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        if not 0.0 <= hyper["momentum"] < 1.0:
            raise ValueError(f"SGD: expected a momentum in [0, 1), got {hyper['momentum']!r}")

    def _update(self, group: dict[str, Any]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            step = p.grad
            if momentum != 0:
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = step.detach().clone()
                else:
                    buf.mul_(momentum).add_(step)
                step = buf
            p.add_(step, alpha=-lr)


class Adam(LocalOptimizer):
    """Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1),
    as `torch.optim.Adam`:

        m_t = β1·m_{t-1} + (1−β1)·g_t          (as torch: a linear interpolation)
        v_t = β2·v_{t-1} + (1−β2)·g_t²
        θ_t = θ_{t-1} − lr/(1−β1^t) · m_t / (√v_t / √(1−β2^t) + ε)
    """

    DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        beta1, beta2 = hyper["betas"]
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"Adam: expected betas in [0, 1), got {hyper['betas']!r}")
        if not hyper["eps"] >= 0.0:
            raise ValueError(f"Adam: expected eps >= 0, got {hyper['eps']!r}")

    def _update(self, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = self.state.setdefault(p, {})
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = float(state["step"])
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = lr / (1 - beta1 ** step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)
