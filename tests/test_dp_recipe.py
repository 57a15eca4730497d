"""The DP recipe (docs/privacy.md): the `scatternet` model, plain SGD at a cosine-decayed
learning rate on Poisson batches of 512, the same at every site for a round."""

from __future__ import annotations

import pytest

from fedmed.client.optimizers import SGD, Adam
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
    assert isinstance(dp, SGD)
    assert dp.defaults["momentum"] == config.dp_momentum and dp.defaults["lr"] == pytest.approx(dp_round_lr(config, 3))
    assert make_optimizer(model, config.with_(dp_momentum=0.9), dp=True).defaults["momentum"] == 0.9
    assert isinstance(make_optimizer(model, config), Adam)


def test_two_rounds_of_the_recipe_through_the_client_app_spend_what_pld_computes(tmp_path):
    """The default recipe (scatternet, Poisson batches, plain SGD) through the real
    ClientApp: its ledger's ε is Google's PLD accountant's for the same history."""
    from test_privacy_round import _ask, _rows, _site
    from pld_reference import pld_epsilon
    from fedmed.client.privacy import epsilon
    from fedmed.common.settings import ImageSettings

    site = _site(tmp_path / "state", epsilon=3.0)
    config = FederationConfig(rounds=2, image=ImageSettings(size=28), seed=1, dp_batch_size=32)
    assert config.model == "scatternet"
    for server_round in (1, 2):
        reply = _ask(site, "train", config, server_round, 11)
        assert reply["status"] == "ok" and reply["steps"] == 2, reply   # ⌈60 / 32⌉ Poisson steps
    rows = [r for r in _rows(tmp_path / "state") if r["mechanism"] == "dp-sgd"]
    assert len(rows) == 2 and rows[0]["sample_rate"] == 0.5
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
    assert rows[-1]["epsilon"] == pytest.approx(epsilon(history, rows[-1]["delta"]))
    assert rows[-1]["epsilon"] == pytest.approx(pld_epsilon(history, rows[-1]["delta"]), rel=0.02)


def test_augmentation_multiplicity_through_the_client_app_spends_what_pld_computes(tmp_path, monkeypatch):
    """Two DP rounds with K = 2 augmented views per record through the real ClientApp:
    every step runs each sampled record as 2 augmented views averaged back to one
    gradient, and the ledger's ε is still the independent PLD accountant's for the
    record-level history -- the same as the run without views."""
    from test_privacy_round import _ask, _rows, _site
    from pld_reference import pld_epsilon
    from fedmed.client.privacy import dp_sgd
    from fedmed.common.settings import ImageSettings

    augmented, averaged = [], []
    real_augment, real_average = dp_sgd.augment, dp_sgd.average_views

    def spy_augment(x, settings, generator):
        augmented.append(len(x))
        return real_augment(x, settings, generator)

    def spy_average(grad_sample, views):
        averaged.append((grad_sample.shape[0], views))
        return real_average(grad_sample, views)

    monkeypatch.setattr(dp_sgd, "augment", spy_augment)
    monkeypatch.setattr(dp_sgd, "average_views", spy_average)

    def ledger(state, views):
        site = _site(state, epsilon=3.0)
        config = FederationConfig(rounds=2, image=ImageSettings(size=28), seed=1, dp_batch_size=32,
                                  augment=True, augment_views=views)
        for server_round in (1, 2):
            reply = _ask(site, "train", config, server_round, 12)
            assert reply["status"] == "ok" and reply["steps"] == 2, reply
        return [r for r in _rows(state) if r["mechanism"] == "dp-sgd"]

    rows = ledger(tmp_path / "views", views=2)
    # Every non-empty Poisson batch of B records went through augmentation as 2B views, and
    # each record's per-view gradients were averaged into one (per trained tensor) before clipping.
    assert augmented and all(n % 2 == 0 and n > 0 for n in augmented), augmented
    assert averaged and all(views == 2 for _, views in averaged)
    assert {n for n, _ in averaged} <= set(augmented)  # the per-view gradients of those very batches

    assert len(rows) == 2 and rows[0]["sample_rate"] == 0.5
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
    assert rows[-1]["epsilon"] == pytest.approx(pld_epsilon(history, rows[-1]["delta"]), rel=0.02)

    augmented.clear()
    single = ledger(tmp_path / "one-view", views=1)
    assert not augmented  # one view under DP: no augmentation (docs/privacy.md)
    assert [(r["noise_multiplier"], r["sample_rate"], r["steps"], r["epsilon"]) for r in single] == \
        [(r["noise_multiplier"], r["sample_rate"], r["steps"], r["epsilon"]) for r in rows]
