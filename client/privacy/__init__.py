"""Differential-privacy accounting for a site: ε of a training history, planning σ for a
budget, the per-round budget check, and the tamper-evident privacy ledger.

* `accounting` -- ε of a DP-SGD history (PRV / RDP), planning σ, the default δ.
* `ledger` -- ``privacy-ledger.jsonl``: every round the site trained on its data.
* `budget` -- train this round, or "budget exhausted" and why.

These three are pure accounting and files (no torch); the DP-SGD training itself and the
site's policy are in `dp_sgd` and `policy`.
"""

from .accounting import (
    AccountingError,
    can_afford,
    default_delta,
    epsilon,
    merge_history,
    plan_noise_multiplier,
    rounds_affordable,
)
from .budget import BudgetDecision, decide_round
from .ledger import LedgerEntry, LedgerError, PrivacyLedger

__all__ = [
    "AccountingError",
    "BudgetDecision",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "can_afford",
    "decide_round",
    "default_delta",
    "epsilon",
    "merge_history",
    "plan_noise_multiplier",
    "rounds_affordable",
]
