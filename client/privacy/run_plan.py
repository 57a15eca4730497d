"""The site's privacy decisions for one run: plan σ once, then check every round.

At a site's first training round of a run, the noise multiplier is planned so that the
whole remaining schedule of the run — (rounds left) × (local epochs) × ⌈N/B⌉ Poisson
steps at q = 1/⌈N/B⌉ — plus everything the ledger already holds stays within the site's
(ε, δ). The plan is kept in ``<state>/privacy-plan.json`` so a client restarted mid-run
(every message runs in a fresh process in a deployment) keeps the same σ. Before each
round `decide_round` composes the ledger with that round; a round that would cross the
budget is not trained.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmed.client.privacy.accounting import default_delta, plan_noise_multiplier
from fedmed.client.privacy.budget import decide_round
from fedmed.client.privacy.dp_sgd import dp_schedule
from fedmed.client.privacy.ledger import PrivacyLedger
from fedmed.client.privacy.policy import PrivacyPolicy

PLAN_FILE = "privacy-plan.json"
ACCOUNTANT = "prv"


@dataclass(frozen=True)
class RunPlan:
    """The σ a site trains a run with, and the schedule it was planned for."""

    run: str
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float
    target_epsilon: float
    planned_rounds: int
    data: str


@dataclass(frozen=True)
class RoundDecision:
    train: bool
    status: str          # "ok" | "budget-exhausted" | "declined"
    reason: str          # a fixed phrase with numbers only: it is sent to the coordinator
    plan: RunPlan | None
    spent_epsilon: float


def _load_plan(path: Path) -> RunPlan | None:
    try:
        return RunPlan(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save_plan(path: Path, plan: RunPlan) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(plan), indent=2))
    os.replace(tmp, path)


def plan_run(ledger: PrivacyLedger, policy: PrivacyPolicy, *, run: str, server_round: int,
             total_rounds: int, n_train: int, batch_size: int, epochs: int,
             state_dir: Path) -> RunPlan | None:
    """The run's plan, made at its first round here and reused after; None when even one
    round at the site's largest acceptable σ does not fit the remaining budget."""
    schedule = dp_schedule(n_train, batch_size, 1.0, policy.max_grad_norm)
    steps = schedule.steps_per_epoch * epochs
    delta = policy.delta or default_delta(n_train)
    path = Path(state_dir) / PLAN_FILE
    saved = _load_plan(path)
    if saved is not None and (saved.run, saved.sample_rate, saved.steps_per_round, saved.delta,
                              saved.target_epsilon, saved.data) == \
            (run, schedule.sample_rate, steps, delta, policy.epsilon, ledger.data_fingerprint):
        return saved
    sigma = plan_noise_multiplier(
        ledger.history, schedule.sample_rate, steps, max(1, total_rounds - server_round + 1),
        policy.epsilon, delta, max_noise_multiplier=policy.max_noise_multiplier, accountant=ACCOUNTANT,
    )
    if sigma is None:
        return None
    plan = RunPlan(run=run, noise_multiplier=sigma, sample_rate=schedule.sample_rate,
                   steps_per_round=steps, delta=delta, target_epsilon=policy.epsilon,
                   planned_rounds=max(1, total_rounds - server_round + 1),
                   data=ledger.data_fingerprint)
    _save_plan(path, plan)
    return plan


def decide(ledger: PrivacyLedger, policy: PrivacyPolicy, plan: RunPlan | None) -> RoundDecision:
    """Train this round, or say why not (in words safe to send: numbers only)."""
    delta = plan.delta if plan else (policy.delta or 1e-5)
    spent = ledger.spent(delta, ACCOUNTANT) if len(ledger) else 0.0
    if plan is None:
        return RoundDecision(False, "declined",
                             f"remaining budget cannot fit one round at noise <= {policy.max_noise_multiplier:g} "
                             f"(spent {spent:.3f} of {policy.epsilon:g})", None, spent)
    decision = decide_round(ledger, policy.epsilon, plan.delta, plan.noise_multiplier,
                            plan.sample_rate, plan.steps_per_round, ACCOUNTANT)
    if not decision.train:
        return RoundDecision(False, "budget-exhausted",
                             f"budget exhausted: spent {decision.spent_epsilon:.3f}, one more round "
                             f"would reach {decision.epsilon_after:.3f} > {policy.epsilon:g}",
                             plan, decision.spent_epsilon)
    return RoundDecision(True, "ok", "", plan, decision.spent_epsilon)
