"""Privacy accounting: the ε of a site's history of Gaussian mechanisms (DP-SGD and releases).

Planning σ for a budget is `fedmed.client.privacy.planning`.

A *history* is what Opacus' accountants keep: a list of ``(noise_multiplier, sample_rate,
steps)`` tuples, each meaning ``steps`` applications of the Poisson-subsampled Gaussian
mechanism of DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"): every
record joins a batch with probability ``sample_rate`` = q, per-sample gradients are clipped
to norm C and Gaussian noise of standard deviation ``noise_multiplier`` · C = σ · C is added
to their sum.

A release of noised counts (the evaluation histograms of `fedmed.client.privacy.disclosure`)
is the plain Gaussian mechanism (Dwork & Roth 2014, "The Algorithmic Foundations of
Differential Privacy", §3.5.3): counts of L2 sensitivity 1 plus Gaussian noise of standard
deviation σ. It is the subsampled Gaussian with q = 1 and one step, so it enters the same
history as ``(σ, 1.0, 1)`` and is composed with the training rounds by the same accountant.

Two accountants turn a history into (ε, δ)-DP:

* ``"prv"`` (default) -- numerical composition of privacy loss random variables (Gopi, Lee &
  Wutschitz 2021, "Numerical Composition of Differential Privacy"), via Opacus'
  ``PRVAccountant``. Tight: within a small, controlled error of the exact ε, and the value
  returned is the *upper* end of that error interval, so it never under-states ε.
* ``"rdp"`` -- Rényi DP (Mironov 2017, "Rényi Differential Privacy") of the subsampled
  Gaussian (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled
  Gaussian Mechanism"), via Opacus' ``RDPAccountant``. A valid but looser upper bound.

Both agree, up to their error, with the privacy loss distribution accountants (Koskela et
al. 2020; Doroshenko et al. 2022, "Connect the Dots: Tighter Discrete Approximations of
Privacy Loss Distributions"), which is how fedmed's tests check them.

Composition is commutative, and k applications of one mechanism followed by m more are k+m
applications of it, so a history is first *merged*: every entry with the same (σ, q) is
folded into one entry whose steps are the sum (in order of first appearance, so that the
computation is deterministic and an auditor re-running it gets the same number). A ledger of
a hundred rounds trained with a few distinct σ therefore costs as much as a few entries.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from functools import lru_cache
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import Domain

HistoryEntry = tuple[float, float, int]
"""One history entry: (noise_multiplier σ, sample_rate q, steps)."""

Accountant = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
ACCOUNTANT: Accountant = "prv"
"""The accountant fedmed spends and records with (every caller takes it from here)."""

PRV_MIN_EPS_ERROR = 0.01
"""Smallest absolute ε error the PRV accountant is asked for (Opacus' default)."""
PRV_RELATIVE_EPS_ERROR = 0.004
"""The PRV ε error, relative to the RDP bound of the same history (see `_prv_eps_error`)."""
PRV_MAX_EPS_ERROR = 0.5
"""Largest absolute ε error the PRV accountant is asked for."""

_SCALE_ORDERS: tuple[float, ...] = (1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 128)

class AccountingError(ValueError):
    """A history or parameter that no accountant can give an ε for."""


def check_entry(entry: Sequence[float]) -> HistoryEntry:
    """Validate one history entry and return it as ``(float σ, float q, int steps)``."""
    if len(entry) != 3:
        raise AccountingError(
            f"history entry {tuple(entry)!r}: expected (noise_multiplier, sample_rate, steps)"
        )
    sigma, q, steps = entry
    sigma, q = float(sigma), float(q)
    if isinstance(steps, bool) or int(steps) != steps:
        raise AccountingError(f"history entry {tuple(entry)!r}: steps must be a whole number")
    steps = int(steps)
    if not (math.isfinite(sigma) and sigma > 0):
        raise AccountingError(f"history entry {tuple(entry)!r}: noise_multiplier must be > 0")
    if not (0 < q <= 1):
        raise AccountingError(f"history entry {tuple(entry)!r}: sample_rate must be in (0, 1]")
    if steps < 0:
        raise AccountingError(f"history entry {tuple(entry)!r}: steps must be >= 0")
    return sigma, q, steps


def check_delta(delta: float) -> float:
    delta = float(delta)
    if not (0 < delta < 1):
        raise AccountingError(f"delta must be in (0, 1), got {delta}")
    return delta


def merge_history(history: Iterable[Sequence[float]]) -> list[HistoryEntry]:
    """Fold entries with the same (σ, q) into one, summing their steps.

    Entries keep the order in which their (σ, q) first appears; entries with 0 steps are
    dropped. The merged history has the same ε as the original (composition is commutative
    and composing a mechanism k times then m times is composing it k + m times).
    """
    steps_by_key: dict[tuple[float, float], int] = {}
    for entry in history:
        sigma, q, steps = check_entry(entry)
        if steps:
            steps_by_key[(sigma, q)] = steps_by_key.get((sigma, q), 0) + steps
    return [(sigma, q, steps) for (sigma, q), steps in steps_by_key.items()]


@lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one step of the subsampled Gaussian at each order (Mironov et al. 2019)."""
    return np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)))


def _rdp_epsilon(history: list[HistoryEntry], delta: float, orders: Sequence[float] | None = None) -> float:
    """ε of a merged history by RDP composition (additive in the orders) and Opacus'
    RDP-to-(ε, δ) conversion; what Opacus' ``RDPAccountant`` computes, with the per-step RDP
    of each (σ, q) cached so that planning does not recompute it."""
    orders = tuple(orders) if orders else tuple(RDPAccountant.DEFAULT_ALPHAS)
    rdp = sum(steps * _rdp_per_step(sigma, q, orders) for sigma, q, steps in history)
    with warnings.catch_warnings():
        # Opacus warns when the best order sits at the edge of the order grid; the bound
        # stays valid (just less tight), which is all that is needed here.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def _prv_eps_error(history: list[HistoryEntry], delta: float) -> float:
    """The ε error the PRV accountant is asked for.

    Gopi et al.'s mesh is ``eps_error / sqrt(k · log(12/δ_err) / 2)`` for k composed steps,
    so a fixed absolute error makes long or high-ε histories needlessly expensive. fedmed
    asks for an error of 0.4 % of a quick RDP bound of the same history, clamped to
    [0.01, 0.5]: at most about 0.5 % of ε in relative terms. The value depends only on the
    history and δ, so a recomputation reproduces it.
    """
    scale = _rdp_epsilon(history, delta, orders=_SCALE_ORDERS)
    return min(max(PRV_MIN_EPS_ERROR, PRV_RELATIVE_EPS_ERROR * scale), PRV_MAX_EPS_ERROR)


class _CachedDomainPRVAccountant(PRVAccountant):
    """Opacus' PRV accountant, sizing its discretisation domain from cached RDP bounds.

    Gopi et al. (2021, remark 5.6) truncate each privacy loss random variable to [−L, L] with
    L taken from RDP bounds: of the whole composition at δ_err/4, and of a single step of
    each mechanism at δ_err/(8k) for k composed steps; Opacus' ``PRVAccountant`` uses the
    larger of these (and eps_error) plus 3, and a mesh of eps_error / sqrt(k · log(12/δ_err)/2).
    This subclass computes exactly those quantities, but from `_rdp_per_step`, so that the
    per-step RDP of each (σ, q) -- most of the PRV accountant's cost for short histories --
    is computed once per process instead of on every call. The ε it returns is the same.
    """

    def _get_domain(self, prvs, num_self_compositions, eps_error, delta_error):
        history = [
            (prv.noise_multiplier, prv.sample_rate, count) for prv, count in zip(prvs, num_self_compositions)
        ]
        total_steps = sum(num_self_compositions)
        bound = _rdp_epsilon(history, delta_error / 4)
        for sigma, q, _ in history:
            bound = max(bound, _rdp_epsilon([(sigma, q, 1)], delta_error / (8 * total_steps)))
        half_width = max(bound, eps_error) + 3
        mesh = eps_error / math.sqrt(total_steps * math.log(12 / delta_error) / 2)
        return Domain.create_aligned(-half_width, half_width, mesh)


def _prv_epsilon(history: list[HistoryEntry], delta: float) -> float:
    accountant = _CachedDomainPRVAccountant()
    accountant.history = list(history)
    eps_error = _prv_eps_error(history, delta)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Opacus' PRV evaluates log(1 - q) (= -inf at q = 1) and integrates numerically;
        # neither warning affects the bound.
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta, eps_error=eps_error))


def epsilon(history: Iterable[Sequence[float]], delta: float, accountant: Accountant = ACCOUNTANT) -> float:
    """The ε of all of ``history`` composed, at ``delta``.

    history: ``(noise_multiplier, sample_rate, steps)`` entries (Opacus' accountant history).
    accountant: ``"prv"`` (Gopi et al. 2021; tight, the default) or ``"rdp"`` (Mironov 2017,
        Mironov et al. 2019; looser).

    The empty history (or one with 0 steps in all) has ε = 0. With ``"prv"``, if the
    numerical composition fails (Opacus raises for extreme parameters, e.g. a huge domain
    or a δ too small for floating point), the RDP bound is returned instead: also a valid
    upper bound, only looser, and just as reproducible.
    """
    delta = check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise AccountingError(f"accountant: expected one of {ACCOUNTANTS}, got {accountant!r}")
    merged = merge_history(history)
    if not merged:
        return 0.0
    return _merged_epsilon(tuple(merged), delta, accountant)


@lru_cache(maxsize=512)
def _merged_epsilon(merged: tuple[HistoryEntry, ...], delta: float, accountant: str) -> float:
    """`epsilon` of a validated, merged, non-empty history; memoised, since the budget check,
    the ledger and the planner often ask for the same history within one process."""
    history = list(merged)
    if accountant == "rdp":
        return max(0.0, _rdp_epsilon(history, delta))
    try:
        eps = _prv_epsilon(history, delta)
    except (RuntimeError, ValueError, FloatingPointError, MemoryError, OverflowError):
        eps = _rdp_epsilon(history, delta)
    if not math.isfinite(eps):
        eps = _rdp_epsilon(history, delta)
    return max(0.0, eps)


def default_delta(n_train: int) -> float:
    """The δ fedmed uses for a site with ``n_train`` training records, unless configured.

    Rule: δ = 1 / (10 · N), rounded *down* to one significant figure, and at most 1e-5.
    So δ ≤ 1/(10·N), well below the 1/N at which "(ε, δ)-DP" stops meaning anything
    (a mechanism that publishes one random record in full is (0, 1/N)-DP). Examples:
    N = 1000 → 1e-5 (cap); N = 30 000 → 3e-6; N = 250 000 → 4e-7.
    """
    n = int(n_train)
    if n < 1:
        raise AccountingError(f"default_delta: n_train must be >= 1, got {n_train}")
    exact = Fraction(1, 10 * n)
    exponent = -1
    while Fraction(10) ** exponent > exact:
        exponent -= 1
    mantissa = math.floor(exact / Fraction(10) ** exponent)  # 1..9, rounded down
    return min(float(f"{mantissa}e{exponent}"), 1e-5)
