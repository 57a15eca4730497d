"""Privacy accounting for DP-SGD: the ε of a training history, and planning σ for a budget.

A *history* is what Opacus' accountants keep: a list of ``(noise_multiplier, sample_rate,
steps)`` tuples, each meaning ``steps`` applications of the Poisson-subsampled Gaussian
mechanism of DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"): every
record joins a batch with probability ``sample_rate`` = q, per-sample gradients are clipped
to norm C and Gaussian noise of standard deviation ``noise_multiplier`` · C = σ · C is added
to their sum.

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
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import Domain

HistoryEntry = tuple[float, float, int]
"""One history entry: (noise_multiplier σ, sample_rate q, steps)."""

Accountant = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")

PRV_MIN_EPS_ERROR = 0.01
"""Smallest absolute ε error the PRV accountant is asked for (Opacus' default)."""
PRV_RELATIVE_EPS_ERROR = 0.004
"""The PRV ε error, relative to the RDP bound of the same history (see `_prv_eps_error`)."""
PRV_MAX_EPS_ERROR = 0.5
"""Largest absolute ε error the PRV accountant is asked for."""

_SCALE_ORDERS: tuple[float, ...] = (1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 128)

PLAN_TOLERANCE = 0.01
"""Planned noise multipliers are multiples of this; the plan rounds σ up to the grid."""


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


def _check_delta(delta: float) -> float:
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


def epsilon(history: Iterable[Sequence[float]], delta: float, accountant: Accountant = "prv") -> float:
    """The ε of all of ``history`` composed, at ``delta``.

    history: ``(noise_multiplier, sample_rate, steps)`` entries (Opacus' accountant history).
    accountant: ``"prv"`` (Gopi et al. 2021; tight, the default) or ``"rdp"`` (Mironov 2017,
        Mironov et al. 2019; looser).

    The empty history (or one with 0 steps in all) has ε = 0. With ``"prv"``, if the
    numerical composition fails (Opacus raises for extreme parameters, e.g. a huge domain
    or a δ too small for floating point), the RDP bound is returned instead: also a valid
    upper bound, only looser, and just as reproducible.
    """
    delta = _check_delta(delta)
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


def can_afford(
    prior_history: Iterable[Sequence[float]],
    next_entry: Sequence[float],
    target_epsilon: float,
    delta: float,
    accountant: Accountant = "prv",
) -> bool:
    """Whether ``prior_history`` plus ``next_entry`` stays within ``target_epsilon`` at ``delta``."""
    history = list(prior_history) + [tuple(next_entry)]
    return epsilon(history, delta, accountant) <= float(target_epsilon)


def rounds_affordable(
    prior_history: Iterable[Sequence[float]],
    round_entry: Sequence[float],
    target_epsilon: float,
    delta: float,
    max_rounds: int,
    accountant: Accountant = "prv",
) -> int:
    """How many rounds of ``round_entry`` (σ, q, steps per round), at most ``max_rounds``,
    fit in ``target_epsilon`` on top of ``prior_history`` (binary search; ε grows with rounds)."""
    prior = list(prior_history)
    sigma, q, steps = check_entry(round_entry)

    def fits(rounds: int) -> bool:
        return epsilon(prior + [(sigma, q, steps * rounds)], delta, accountant) <= target_epsilon

    lo, hi = 0, int(max_rounds)  # fits(lo) is assumed; find the largest fitting count
    if hi <= 0 or not fits(1):
        return 0
    lo = 1
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def plan_noise_multiplier(
    prior_history: Iterable[Sequence[float]],
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    target_epsilon: float,
    delta: float,
    max_noise_multiplier: float = 10.0,
    accountant: Accountant = "prv",
) -> float | None:
    """The smallest σ, a multiple of `PLAN_TOLERANCE` (0.01), for which ``prior_history``
    plus ``rounds`` rounds of ``(σ, sample_rate, steps_per_round)`` has ε ≤ ``target_epsilon``.

    ε decreases as σ grows, so this is a root search on the 0.01 grid (`_smallest_fitting_k`,
    bracketed by the cheaper RDP plan, which needs at least as much noise). The returned σ is
    rounded *up* and was itself evaluated: the planned schedule is within budget, and
    σ − 0.01 is not.

    When the full schedule does not fit even at ``max_noise_multiplier`` but at least one
    round does, ``max_noise_multiplier`` is returned: the site trains at the largest noise it
    accepts, and the per-round budget check (`fedmed.client.privacy.budget`) stops it when
    the budget runs out -- training fewer rounds rather than adding more noise than the site
    allowed. `rounds_affordable` says how many rounds that will be.

    Returns None when not even one round at ``max_noise_multiplier`` fits (the budget is
    exhausted, or the remaining budget is too small for a single round).
    """
    prior = merge_history(prior_history)
    delta = _check_delta(delta)
    target_epsilon = float(target_epsilon)
    if rounds < 1 or steps_per_round < 1:
        raise AccountingError("plan_noise_multiplier: rounds and steps_per_round must be >= 1")
    check_entry((max_noise_multiplier, sample_rate, steps_per_round))
    grid = PLAN_TOLERANCE

    def eps_at(sigma: float, n_rounds: int) -> float:
        entry = (sigma, float(sample_rate), steps_per_round * n_rounds)
        return epsilon(prior + [entry], delta, accountant)

    k_max = math.floor(max_noise_multiplier / grid + 1e-9)
    sigma_max = round(k_max * grid, 10)
    eps_full_max = eps_at(sigma_max, rounds)
    if eps_full_max > target_epsilon:
        return sigma_max if eps_at(sigma_max, 1) <= target_epsilon else None

    def eps_of_k(k: int) -> float:
        return eps_at(round(k * grid, 10), rounds)

    k_hi, e_hi = k_max, eps_full_max
    slope: float | None = None
    if accountant == "prv":
        # RDP upper-bounds ε, so the σ that RDP plans fits the PRV too (checked below); it
        # brackets the search cheaply and keeps the PRV away from tiny σ, where its domain
        # (and its cost) explodes.
        def rdp_of_k(k: int) -> float:
            entry = (round(k * grid, 10), float(sample_rate), steps_per_round * rounds)
            return epsilon(prior + [entry], delta, "rdp")

        e_rdp_max = rdp_of_k(k_max)
        if e_rdp_max <= target_epsilon:
            k_rdp = _smallest_fitting_k(rdp_of_k, target_epsilon, k_max, e_rdp_max)
            e_prv = eps_of_k(k_rdp)
            if e_prv <= target_epsilon:
                k_hi, e_hi = k_rdp, e_prv
                # The RDP curve's local slope (log ε against log σ) is a good first guess of
                # the PRV's, which sits a little lower but has a similar shape.
                k_ref = max(1, round(k_rdp * 0.9))
                if k_ref < k_rdp:
                    slope = (math.log(rdp_of_k(k_ref)) - math.log(rdp_of_k(k_rdp))) / (
                        math.log(k_ref) - math.log(k_rdp)
                    )
    # The PRV's σ rarely sits more than 30 % below the RDP's: never probe further down at once.
    k = _smallest_fitting_k(eps_of_k, target_epsilon, k_hi, e_hi, slope, max_shrink=0.7)
    return round(k * grid, 10)


def _smallest_fitting_k(
    eps_of_k: Callable[[int], float],
    target: float,
    k_hi: int,
    e_hi: float,
    slope: float | None = None,
    max_shrink: float = 0.5,
) -> int:
    """Smallest k >= 1 with eps_of_k(k) <= target, given that k_hi fits (e_hi = eps_of_k(k_hi))
    and that eps_of_k decreases in k.

    Root finding on f(k) = log ε(k) − log target against log k: extrapolation along ``slope``
    (d log ε / d log k; a secant of the points seen, or −1, when not given) until a k that
    does not fit is found, each step lowering k by at most the factor ``max_shrink``; then
    the Illinois variant of regula falsi inside the bracket. When a guess lands within 2 %
    of the target, its grid neighbour on the other side is checked at once, which usually
    ends the search. After 8 guesses it falls back to bisection, so it always ends, and the
    k it returns is one that was evaluated and fits.
    """
    log_target = math.log(target)

    def f(e: float) -> float:
        return math.log(e) - log_target if e > 0 else -math.inf

    k_lo, f_lo = 0, math.inf  # k = 0 (no noise) never fits
    f_hi = f(e_hi)
    g_lo, g_hi = f_lo, f_hi  # Illinois-scaled copies used for interpolation
    last_side = 0  # +1: the last guess replaced k_hi; -1: it replaced k_lo
    seen_fitting: list[tuple[int, float]] = [(k_hi, f_hi)]
    guesses = 0
    while k_hi - k_lo > 1:
        guesses += 1
        if guesses > 8:
            k = (k_lo + k_hi) // 2
        else:
            x_hi = math.log(k_hi)
            if k_lo == 0:
                s = slope
                if s is None and len(seen_fitting) >= 2 and math.isfinite(seen_fitting[-2][1]):
                    (k_a, f_a), (k_b, f_b) = seen_fitting[-2], seen_fitting[-1]
                    s = (f_a - f_b) / (math.log(k_a) - math.log(k_b))
                if s is None or not math.isfinite(s) or s >= -1e-3:
                    s = -1.0
                x = x_hi + (0.0 - f_hi) / s - 0.01  # aim just past the root
                x = max(x, x_hi + math.log(max_shrink))
            elif not (math.isfinite(g_hi) and math.isfinite(g_lo)) or g_hi == g_lo:
                x = (math.log(k_lo) + x_hi) / 2
            else:
                x_lo = math.log(k_lo)
                x = (x_lo * g_hi - x_hi * g_lo) / (g_hi - g_lo)
            if not math.isfinite(x):
                x = (math.log(max(k_lo, 1)) + x_hi) / 2
            k = min(max(math.ceil(math.exp(min(x, 50.0))), k_lo + 1), k_hi - 1)
        e = eps_of_k(k)
        fk = f(e)
        points = [(k, fk)]
        if abs(fk) < 0.02:
            neighbour = k - 1 if fk <= 0 else k + 1
            if k_lo < neighbour < k_hi and neighbour >= 1:
                points.append((neighbour, f(eps_of_k(neighbour))))
        for kk, ff in points:
            if ff <= 0 and kk < k_hi:
                k_hi, f_hi, g_hi = kk, ff, ff
                seen_fitting.append((kk, ff))
                if last_side == 1 and math.isfinite(g_lo):
                    g_lo /= 2
                last_side = 1
            elif ff > 0 and kk > k_lo:
                k_lo, f_lo, g_lo = kk, ff, ff
                if last_side == -1:
                    g_hi /= 2
                last_side = -1
    return k_hi


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
