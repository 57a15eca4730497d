"""fedmed's local optimisers (`fedmed.client.optimizers`) apply torch.optim's update rules:
the same weights, step for step, plain and under Opacus' DP-SGD. If a torch upgrade
changes `torch.optim.SGD` or `torch.optim.Adam`, these fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedmed.client.optimizers import SGD, Adam

STEPS = 6


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model[0].bias.requires_grad_(False)  # a frozen weight: no gradient, left as it is
    return model


def _batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 1, 8, 8, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(STEPS)]


def _train(model: nn.Module, optimizer, batches) -> list[torch.Tensor]:
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


CASES = [
    ("sgd", lambda ps: SGD(ps, lr=0.05), lambda ps: torch.optim.SGD(ps, lr=0.05, foreach=False)),
    ("sgd-momentum", lambda ps: SGD(ps, lr=0.05, momentum=0.9),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, foreach=False)),
    ("adam", lambda ps: Adam(ps, lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=False)),
    ("adam-betas", lambda ps: Adam(ps, lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
     lambda ps: torch.optim.Adam(ps, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, foreach=False)),
]


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_same_weights_as_torch_optim(name, ours, theirs):
    """Bit for bit on the CPU: the same operations in the same order as torch's
    per-parameter implementation."""
    batches = _batches()
    mine, reference = _model(), _model()
    got = _train(mine, ours(mine.parameters()), batches)
    want = _train(reference, theirs(reference.parameters()), batches)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert torch.equal(mine[0].bias, _model()[0].bias)  # the frozen weight did not move


def test_zero_grad_and_state_dict_round_trip():
    model = _model()
    optimizer = Adam(model.parameters(), lr=1e-2)
    _train(model, optimizer, _batches()[:2])
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    saved = optimizer.state_dict()
    fresh = Adam(model.parameters(), lr=0.5)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["lr"] == 1e-2
    for p in model.parameters():
        if p in optimizer.state:
            assert fresh.state[p]["step"] == optimizer.state[p]["step"] == 2
            assert torch.equal(fresh.state[p]["exp_avg"], optimizer.state[p]["exp_avg"])


def test_bad_hyper_parameters_are_refused():
    params = list(_model().parameters())
    with pytest.raises(ValueError, match="learning rate"):
        SGD(params, lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(params, lr=0.1, momentum=1.0)
    with pytest.raises(TypeError, match="nesterov"):
        SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        Adam([], lr=0.1)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_same_dp_sgd_step_as_torch_optim_under_opacus(mode):
    """Opacus' DPOptimizer wraps fedmed's SGD as it wraps torch's: with one seed (the same
    Poisson samples and noise), the same weights."""
    from fedmed.client.privacy.dp_sgd import make_private_training
    from fedmed.common.models import build_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 2, size=40)
    weights = []
    for make in (lambda ps: SGD(ps, lr=0.1, momentum=0.5),
                 lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5, foreach=False)):
        torch.manual_seed(0)
        model = build_model("cnn", 2, 8)
        training = make_private_training(model, make(model.parameters()), x, y, batch_size=8,
                                         noise_multiplier=1.0, max_grad_norm=1.0, seed=3, mode=mode,
                                         model_name="cnn")
        training.train(1)
        weights.append(training.state_dict())
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key])
