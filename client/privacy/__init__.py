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

from importlib import import_module

# Where each name lives. Loaded on first use (PEP 562), so that `policy`, which the site's
# launcher reads, does not pull in Opacus and torch through this package.
_HOMES = {
    "ACCOUNTANT": "accounting",
    "AccountingError": "accounting",
    "default_delta": "accounting",
    "epsilon": "accounting",
    "merge_history": "accounting",
    "BudgetDecision": "budget",
    "decide_round": "budget",
    "LedgerEntry": "ledger",
    "LedgerError": "ledger",
    "PrivacyLedger": "ledger",
    "plan_noise_multiplier": "planning",
    "rounds_affordable": "planning",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
