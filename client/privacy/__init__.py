"""Differential-privacy accounting for a site: ε of a training history, planning σ for a
budget, the per-round budget check, and the tamper-evident privacy ledger.

* `accounting` -- ε of a DP-SGD history (PRV / RDP), planning σ, the default δ.
* `ledger` -- ``privacy-ledger.jsonl``: every round the site trained on its data.
* `budget` -- train this round, or "budget exhausted" and why.

These three are pure accounting and files (no torch); the DP-SGD training itself and the
site's policy are in `dp_sgd` and `policy`.
"""

from importlib import import_module

# Where each name lives. Loaded on first use (PEP 562), so that `policy`, which the site's
# launcher reads, does not pull in Opacus and torch through this package.
_HOMES = {
    "AccountingError": "accounting",
    "can_afford": "accounting",
    "default_delta": "accounting",
    "epsilon": "accounting",
    "merge_history": "accounting",
    "plan_noise_multiplier": "accounting",
    "rounds_affordable": "accounting",
    "BudgetDecision": "budget",
    "decide_round": "budget",
    "LedgerEntry": "ledger",
    "LedgerError": "ledger",
    "PrivacyLedger": "ledger",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
