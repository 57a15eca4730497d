"""The DP recipe (docs/privacy.md): the `scatternet` model, plain SGD at a cosine-decayed
learning rate on Poisson batches of 512, the same at every site for a round."""

from __future__ import annotations

import pytest
import torch

from fedmed.client.training import dp_round_lr, make_optimizer
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model


def test_the_dp_learning_rate_starts_at_dp_lr_and_decays_every_round():
    config = FederationConfig(rounds=10, dp_lr=0.4)
    rates = [dp_round_lr(config, r) for r in range(1, 11)]
    assert rates[0] == pytest.approx(0.4)
    assert all(a > b > 0 for a, b in zip(rates, rates[1:]))
    assert dp_round_lr(config, 99) == rates[-1]  # a resumed run past its plan stays at the floor


def test_the_recipe_is_the_default():
    config = FederationConfig()
    assert (config.model, config.dp_batch_size, config.dp_lr, config.dp_momentum) == ("scatternet", 512, 1.0, 0.0)
    with pytest.raises(ValueError, match="DP momentum"):
        FederationConfig(dp_momentum=1.0)


def test_a_dp_site_trains_with_sgd_whatever_the_runs_optimizer():
    config = FederationConfig(optimizer="adam", lr=1e-3, dp_lr=0.5, rounds=4)
    model = build_model("dpcnn", 2, 16)
    dp = make_optimizer(model, config, dp=True, server_round=3)
    assert isinstance(dp, torch.optim.SGD)
    assert dp.defaults["momentum"] == config.dp_momentum and dp.defaults["lr"] == pytest.approx(dp_round_lr(config, 3))
    assert make_optimizer(model, config.with_(dp_momentum=0.9), dp=True).defaults["momentum"] == 0.9
    assert isinstance(make_optimizer(model, config), torch.optim.Adam)
