"""A site's differential privacy: its policy, the round that spends it, and the ledger.

* `policy` -- the site's own settings (budget, clipping, metric releases).
* `round` -- `PrivacyRound`: open -> plan -> reserve -> train -> record, the one object
  the ClientApp uses for a DP round and its evaluation release.
* `accounting` -- ε of a history of (subsampled) Gaussian mechanisms; the accountant and δ.
* `planning` -- the noise a run uses for its budget (DP-SGD and metric releases).
* `budget` -- the one decision type: spend this round, or why not.
* `ledger` -- ``privacy-ledger.jsonl``: every spend, reserved before it happens.
* `disclosure` -- what an evaluation reply releases, and how it is protected.
* `dp_sgd` -- DP-SGD training itself (Opacus).

`accounting`, `planning`, `budget` and `ledger` are pure accounting and files (no torch).
"""

from .accounting import ACCOUNTANT, AccountingError, default_delta, epsilon, merge_history
from .budget import BudgetDecision, decide_round
from .ledger import LedgerEntry, LedgerError, PrivacyLedger
from .planning import plan_noise_multiplier, rounds_affordable

__all__ = [
    "ACCOUNTANT",
    "AccountingError",
    "BudgetDecision",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "decide_round",
    "default_delta",
    "epsilon",
    "merge_history",
    "plan_noise_multiplier",
    "rounds_affordable",
]
