"""The independent reference for fedmed's ε: Google's PLD accountant (`dp-accounting`,
Doroshenko et al. 2022), which shares no code with Opacus."""

from __future__ import annotations

import pytest


def pld_epsilon(history, delta):
    """ε of a DP-SGD history [(σ, q, steps), ...] at δ; skips the test without dp-accounting."""
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(value_discretization_interval=1e-3)
    for sigma, q, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)
