"""ε of DP-SGD histories, planning σ for a budget, the per-round budget check, default δ."""

from __future__ import annotations

import pytest

from fedmed.client.privacy import (
    AccountingError,
    PrivacyLedger,
    decide_round,
    default_delta,
    epsilon,
    merge_history,
    plan_noise_multiplier,
    rounds_affordable,
)
from pld_reference import pld_epsilon  # noqa: E402 — tests/ is on sys.path under pytest

DELTA = 1e-5


# ----------------------------------------------------------------------------- epsilon
def test_empty_history_spends_nothing():
    assert epsilon([], DELTA) == 0.0
    assert epsilon([(1.0, 0.01, 0)], DELTA) == 0.0
    assert epsilon([], DELTA, accountant="rdp") == 0.0


def test_merging_identical_entries_changes_nothing():
    rounds = [(1.1, 0.01, 100)] * 10 + [(1.3, 0.02, 50)] * 4 + [(1.1, 0.01, 100)] * 5
    assert merge_history(rounds) == [(1.1, 0.01, 1500), (1.3, 0.02, 200)]
    assert epsilon(rounds, DELTA) == epsilon([(1.1, 0.01, 1500), (1.3, 0.02, 200)], DELTA)


def test_prv_matches_pld_and_is_below_rdp():
    history = [(1.1, 0.01, 1000)]
    prv, rdp = epsilon(history, DELTA), epsilon(history, DELTA, accountant="rdp")
    assert prv == pytest.approx(pld_epsilon(history, DELTA), rel=0.02)
    assert prv < rdp


def test_prv_is_opacus_prv_accountant_exactly():
    """fedmed's PRV only caches the RDP bounds that size Opacus' discretisation domain."""
    from opacus.accountants import PRVAccountant

    from fedmed.client.privacy.accounting import _prv_eps_error

    history = [(1.1, 0.01, 300), (1.5, 0.02, 200)]
    stock = PRVAccountant()
    stock.history = list(history)
    assert epsilon(history, DELTA) == stock.get_epsilon(DELTA, eps_error=_prv_eps_error(history, DELTA))


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    assert epsilon([(1.0, 0.01, 200)], DELTA) < epsilon([(1.0, 0.01, 400)], DELTA)
    assert epsilon([(2.0, 0.01, 200)], DELTA) < epsilon([(1.0, 0.01, 200)], DELTA)


def test_full_batch_sampling_works():
    eps = epsilon([(1.0, 1.0, 10)], DELTA)
    assert 10 < eps < epsilon([(1.0, 1.0, 10)], DELTA, accountant="rdp")


@pytest.mark.parametrize(
    "history, delta, accountant",
    [
        ([(0.0, 0.01, 10)], DELTA, "prv"),
        ([(1.0, 0.0, 10)], DELTA, "prv"),
        ([(1.0, 1.5, 10)], DELTA, "prv"),
        ([(1.0, 0.01, -1)], DELTA, "prv"),
        ([(1.0, 0.01, 2.5)], DELTA, "prv"),
        ([(1.0, 0.01)], DELTA, "prv"),
        ([(1.0, 0.01, 10)], 0.0, "prv"),
        ([(1.0, 0.01, 10)], DELTA, "gdp"),
    ],
)
def test_bad_input_is_refused(history, delta, accountant):
    with pytest.raises(AccountingError):
        epsilon(history, delta, accountant=accountant)


def test_budget_check_of_one_more_round():
    assert decide_round([(1.1, 0.01, 500)], 2.0, DELTA, 1.1, 0.01, 100).train
    assert not decide_round([(1.1, 0.01, 500)], 2.0, DELTA, 0.5, 0.01, 1000).train


# ----------------------------------------------------------------------------- planning
def test_plan_uses_most_of_the_budget_and_never_exceeds_it():
    sigma = plan_noise_multiplier(
        [], sample_rate=0.01, steps_per_round=100, rounds=10, target_epsilon=2.0, delta=DELTA
    )
    assert sigma is not None
    assert round(sigma * 100) == pytest.approx(sigma * 100)  # on the 0.01 grid
    planned = epsilon([(sigma, 0.01, 1000)], DELTA)
    assert 1.8 <= planned <= 2.0
    # rounded up: 0.01 less noise would overspend
    assert epsilon([(round(sigma - 0.01, 2), 0.01, 1000)], DELTA) > 2.0


def test_two_planned_runs_on_one_ledger_stay_within_budget(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, "data-a")
    target, q, steps = 2.0, 0.02, 50
    # run 1 plans 4 rounds but stops after 2; run 2 plans 4 rounds on what is left
    for run, trained in ((1, 2), (2, 4)):
        sigma = plan_noise_multiplier(ledger.history, q, steps, rounds=4, target_epsilon=target, delta=DELTA)
        assert sigma is not None
        for rnd in range(1, trained + 1):
            decision = decide_round(ledger, target, DELTA, sigma, q, steps)
            assert decision.train, decision.reason
            ledger.append(run, rnd, sigma, q, steps, DELTA)
            assert ledger.epsilon <= target
    assert 1.8 <= ledger.epsilon <= target
    # less budget left for the same number of rounds: run 2 needed more noise
    assert ledger.entries[0].noise_multiplier < ledger.entries[-1].noise_multiplier
    # nothing is left for a third run at the noise levels used so far
    assert plan_noise_multiplier(ledger.history, q, steps, 4, target, DELTA, max_noise_multiplier=1.5) is None


def test_plan_returns_none_when_not_one_round_fits():
    assert plan_noise_multiplier([], 0.01, 100, 10, target_epsilon=0.01, delta=DELTA) is None
    spent = [(0.6, 0.05, 2000)]
    assert epsilon(spent, DELTA) > 2.0
    assert plan_noise_multiplier(spent, 0.01, 100, 1, target_epsilon=2.0, delta=DELTA) is None


def test_plan_caps_at_max_sigma_and_the_budget_check_stops_the_site():
    prior, q, steps, target = [(1.0, 0.01, 1000)], 0.01, 100, 2.0
    sigma = plan_noise_multiplier(
        prior, q, steps, rounds=20, target_epsilon=target, delta=DELTA, max_noise_multiplier=1.2
    )
    assert sigma == 1.2
    fit = rounds_affordable(prior, (sigma, q, steps), target, DELTA, max_rounds=20)
    assert 1 <= fit < 20
    history = list(prior)
    for _ in range(fit):
        assert decide_round(history, target, DELTA, sigma, q, steps).train
        history.append((sigma, q, steps))
    decision = decide_round(history, target, DELTA, sigma, q, steps)
    assert not decision.train
    assert decision.reason.startswith("budget exhausted")
    assert decision.spent_epsilon <= target < decision.epsilon_after


def test_budget_decision_when_already_spent():
    decision = decide_round([(0.6, 0.05, 2000)], 2.0, DELTA, 1.0, 0.01, 10)
    assert not decision.train
    assert "already spent" in decision.reason
    assert decision.remaining_epsilon == 0.0
    assert decision.to_dict()["train"] is False


# ----------------------------------------------------------------------------- delta
@pytest.mark.parametrize(
    "n, expected",
    [(1, 1e-5), (1000, 1e-5), (9999, 1e-5), (12345, 8e-6), (30000, 3e-6), (250000, 4e-7), (10**7, 1e-8)],
)
def test_default_delta(n, expected):
    delta = default_delta(n)
    assert delta == expected
    assert delta <= 1 / (10 * n)


def test_default_delta_refuses_empty_data():
    with pytest.raises(AccountingError):
        default_delta(0)
