"""Planning noise for a budget: the σ of a run's DP-SGD rounds and of its metric releases.

At a site's first round of a run, `plan_run` fixes two noise multipliers for the rest of
the run, so that everything already in the site's ledger plus every round still to come
stays within the site's (ε, δ):

* the evaluation releases (one Gaussian release of the score histograms per round,
  `fedmed.client.privacy.disclosure`) get σ such that those releases *alone* compose to
  the site's evaluation share of ε (`PrivacyPolicy.eval_share`, 10 % by default);
* DP-SGD then gets the smallest σ on a 0.01 grid for which the ledger, the planned
  training rounds *and* the planned releases, composed together, fit the whole budget.

Both searches are root searches of a decreasing ε(σ) (`plan_noise_multiplier`). The plan
is kept in ``<state>/privacy-plan.json`` so that a client restarted mid-run (in a
deployment every message runs in a fresh process) keeps the same σ; it also carries the
data fingerprint, which is how the ledger knows this data set was spent on before
(`fedmed.client.privacy.ledger`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmed.common.file_replace import replace_text

from .accounting import (
    ACCOUNTANT,
    Accountant,
    AccountingError,
    HistoryEntry,
    check_delta,
    check_entry,
    epsilon,
    merge_history,
)

PLAN_FILE = "privacy-plan.json"
PLAN_TOLERANCE = 0.01
"""Planned noise multipliers are multiples of this; the plan rounds σ up to the grid."""
MAX_RELEASE_NOISE = 1000.0
"""Largest σ the planner considers for a metric release (counts drowned at this level)."""


@dataclass(frozen=True)
class RunPlan:
    """The noise a site uses for one run, and the schedule it was planned for.

    noise_multiplier, sample_rate, steps_per_round: each DP-SGD round's history entry
        (noise_multiplier None: not one round fits; the site declines the run's training).
    release_noise: σ of each evaluation release (None: no private release fits, or the
        site releases exact metrics, ``eval_share`` None).
    """

    run: str
    noise_multiplier: float | None
    sample_rate: float
    steps_per_round: int
    delta: float
    target_epsilon: float
    planned_rounds: int
    data: str
    release_noise: float | None = None
    eval_share: float | None = None
    unit: str = "image"

    @property
    def round_entry(self) -> HistoryEntry:
        return (self.noise_multiplier, self.sample_rate, self.steps_per_round)

    def release_entry(self) -> HistoryEntry:
        if self.release_noise is None:
            raise AccountingError("this run's plan has no private metric release")
        return (self.release_noise, 1.0, 1)


def load_plan(state_dir: Path) -> RunPlan | None:
    """The plan kept in ``state_dir``, or None when there is none (or it is unreadable)."""
    try:
        return RunPlan(**json.loads((Path(state_dir) / PLAN_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_plan(state_dir: Path, plan: RunPlan) -> None:
    path = Path(state_dir) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps(asdict(plan), indent=2))


def plan_release_noise(releases: int, epsilon_share: float, delta: float,
                       accountant: Accountant = ACCOUNTANT) -> float | None:
    """σ (rounded up to the 0.01 grid) of ``releases`` Gaussian releases of sensitivity-1
    counts that compose to at most ``epsilon_share`` at ``delta``; None when not even the
    largest σ considered fits."""
    return plan_noise_multiplier([], 1.0, 1, releases, epsilon_share, delta,
                                 max_noise_multiplier=MAX_RELEASE_NOISE, accountant=accountant,
                                 cap_to_one_round=False)


def rounds_affordable(
    prior_history: Iterable[Sequence[float]],
    round_entry: Sequence[float],
    target_epsilon: float,
    delta: float,
    max_rounds: int,
    accountant: Accountant = ACCOUNTANT,
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
    accountant: Accountant = ACCOUNTANT,
    cap_to_one_round: bool = True,
) -> float | None:
    """The smallest σ, a multiple of `PLAN_TOLERANCE` (0.01), for which ``prior_history``
    plus ``rounds`` rounds of ``(σ, sample_rate, steps_per_round)`` has ε ≤ ``target_epsilon``.

    ε decreases as σ grows, so this is a root search on the 0.01 grid (`_smallest_fitting_k`,
    bracketed by the cheaper RDP plan, which needs at least as much noise). The returned σ is
    rounded *up* and was itself evaluated: the planned schedule is within budget, and
    σ − 0.01 is not.

    When the full schedule does not fit even at ``max_noise_multiplier`` but at least one
    round does, ``max_noise_multiplier`` is returned: the site trains at the largest noise it
    accepts, and the reservation's budget check (`fedmed.client.privacy.budget`) stops it when
    the budget runs out -- training fewer rounds rather than adding more noise than the site
    allowed. `rounds_affordable` says how many rounds that will be.

    Returns None when not even one round at ``max_noise_multiplier`` fits (the budget is
    exhausted, or the remaining budget is too small for a single round), or, with
    ``cap_to_one_round`` False, when the full schedule does not fit at that σ.
    """
    prior = merge_history(prior_history)
    delta = check_delta(delta)
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
        if not cap_to_one_round:
            return None
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


