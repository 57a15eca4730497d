"""The per-round budget check: may the site train this round without exceeding its (ε, δ)?

The site's budget is a target (ε, δ) for everything it ever trains on its data. Before each
round the client asks `decide_round` with the round's planned (σ, q, steps); the answer
composes the ledger's whole history plus that round (`fedmed.client.privacy.accounting`)
and says train, or "budget exhausted" with the reason. A plan that was made for a schedule
longer than the budget allows (`plan_noise_multiplier` capped at the site's largest σ) is
stopped here, at the first round that would cross the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from typing import TYPE_CHECKING

from .accounting import ACCOUNTANT, Accountant, HistoryEntry, check_entry, epsilon

if TYPE_CHECKING:
    from .ledger import PrivacyLedger

OK = "ok"
BUDGET_EXHAUSTED = "budget-exhausted"
DECLINED = "declined"


@dataclass(frozen=True)
class BudgetDecision:
    """Whether one round (a training round or a release) may run, and why: the one
    decision type of a site's privacy round.

    train: True when the round fits in the budget.
    reason: one line for the site's log and its reply (fixed words and numbers only).
    status: the reply's status: "ok", "budget-exhausted", or "declined" (no plan fits).
    spent_epsilon: ε of everything trained so far, at ``delta``.
    epsilon_after: ε including this round (what the ledger would record if it is trained).
    """

    train: bool
    reason: str
    target_epsilon: float
    delta: float
    spent_epsilon: float
    epsilon_after: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    status: str = OK

    @classmethod
    def declined(cls, reason: str, target_epsilon: float, delta: float, spent: float) -> "BudgetDecision":
        """Not even one round fits at the noise the site accepts (nothing was planned)."""
        return cls(train=False, reason=reason, target_epsilon=float(target_epsilon), delta=float(delta),
                   spent_epsilon=spent, epsilon_after=spent, noise_multiplier=0.0, sample_rate=0.0,
                   steps=0, accountant=ACCOUNTANT, status=DECLINED)

    @property
    def remaining_epsilon(self) -> float:
        """Budget left before this round (never negative)."""
        return max(0.0, self.target_epsilon - self.spent_epsilon)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_round(
    ledger: "PrivacyLedger | Sequence[HistoryEntry]",
    target_epsilon: float,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = ACCOUNTANT,
) -> BudgetDecision:
    """Decide whether the next round, ``(noise_multiplier, sample_rate, steps)``, fits.

    ledger: the site's `PrivacyLedger` (or a bare history, for planning and tests).
    target_epsilon, delta: the site's budget.

    The round fits when the ε of the ledger's history plus this round, at ``delta``, is at
    most ``target_epsilon``.
    """
    is_ledger = hasattr(ledger, "history")
    history = list(ledger.history if is_ledger else ledger)
    sigma, q, n_steps = check_entry((noise_multiplier, sample_rate, steps))
    target = float(target_epsilon)
    if not target > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
    # A ledger knows the verified ε of its last line; a bare history is composed here.
    spent = ledger.spent(delta, accountant) if is_ledger else epsilon(history, delta, accountant)
    after = epsilon(history + [(sigma, q, n_steps)], delta, accountant)
    round_text = f"sigma={sigma:g}, q={q:g}, {n_steps} steps"
    if after <= target:
        train = True
        reason = (
            f"within budget: epsilon {spent:.3f} -> {after:.3f} of {target:g} at delta={delta:g} "
            f"({round_text})"
        )
    elif spent >= target:
        train = False
        reason = (
            f"budget exhausted: epsilon {spent:.3f} already spent of {target:g} at delta={delta:g}"
        )
    else:
        train = False
        reason = (
            f"budget exhausted: one more round ({round_text}) would take epsilon from "
            f"{spent:.3f} to {after:.3f}, over the site's {target:g} at delta={delta:g}"
        )
    return BudgetDecision(
        train=train,
        reason=reason,
        target_epsilon=target,
        delta=float(delta),
        spent_epsilon=spent,
        epsilon_after=after,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=n_steps,
        accountant=accountant,
        status=OK if train else BUDGET_EXHAUSTED,
    )
