"""The DP recipe's local optimiser (`fedmed.client.training`): SGD with momentum at a
cosine-decayed learning rate, the same at every site for a round."""

from __future__ import annotations

import pytest
import torch

from fedmed.client.training import DP_MOMENTUM, dp_round_lr, make_optimizer
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model


def test_the_dp_learning_rate_starts_at_dp_lr_and_decays_every_round():
    config = FederationConfig(rounds=10, dp_lr=0.4)
    rates = [dp_round_lr(config, r) for r in range(1, 11)]
    assert rates[0] == pytest.approx(0.4)
    assert all(a > b > 0 for a, b in zip(rates, rates[1:]))
    assert dp_round_lr(config, 99) == rates[-1]  # a resumed run past its plan stays at the floor


def test_a_dp_site_trains_with_sgd_and_momentum_whatever_the_runs_optimizer():
    config = FederationConfig(optimizer="adam", lr=1e-3, dp_lr=0.5, rounds=4)
    model = build_model("dpcnn", 2, 16)
    dp = make_optimizer(model, config, dp=True, server_round=3)
    assert isinstance(dp, torch.optim.SGD)
    assert dp.defaults["momentum"] == DP_MOMENTUM and dp.defaults["lr"] == pytest.approx(dp_round_lr(config, 3))
    assert isinstance(make_optimizer(model, config), torch.optim.Adam)
