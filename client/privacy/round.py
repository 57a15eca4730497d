"""A site's privacy round, as one object: open -> plan -> reserve -> train -> record.

`PrivacyRound.open` opens the site's ledger for its data (refusing a silent fresh start);
`plan` fixes the run's noise (`fedmed.client.privacy.planning`); `reserve_training` checks
the budget and records the round's ε in one step under the ledger's lock, *before* any
training, so two runs on one state folder cannot both spend the same budget; `training()`
wraps the training itself and marks the reservation reported back (a process that dies
inside it leaves the reservation to be settled, counted, on the next open);
`release_evaluation` is the same for the round's evaluation metrics
(`fedmed.client.privacy.disclosure`). Every number the round sends is in its ledger.

The privacy unit (`PrivacyPolicy.unit`) is an image or a patient. With ``patient``, each
record of the round's DP-SGD is one patient: `PATIENT_IMAGES` of its images, drawn afresh
each round with the site's secret (`training_records`), whose gradients are averaged into
the patient's gradient before it is clipped (`dp_sgd.dp_step`). The record-level guarantee
-- Poisson sampling at q = 1/⌈P/B⌉ over the P patients, clipping, noise -- then holds per
patient: adding or removing a patient changes one record of every round, and how the other
patients' images are drawn does not depend on it. This is user-level DP-SGD (McMahan et al.
2018, "Learning Differentially Private Recurrent Language Models": sample users, bound each
user's contribution), with the bound applied to the mean of a few of the user's examples
as augmentation multiplicity does for the views of one image (De et al. 2022). The
ledger's data set is then the site's patients (`SiteData.patient_fingerprint`), δ is set
from P, and every row records the unit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .budget import BudgetDecision
from .disclosure import DERIVED, open_release, private_release
from .noise_check import keep_warning, noise_to_signal
from .dp_sgd import dp_schedule
from .ledger import GAUSSIAN, OPEN_RELEASE, LedgerEntry, PrivacyLedger, Reservation
from .planning import RunPlan, load_plan, plan_noise_multiplier, plan_release_noise, save_plan
from .policy import PATIENT_IMAGES, PrivacyPolicy
from fedmed.client.errors import SafeError
from fedmed.common.protocol import RELEASE_NOISE_KEY, WEIGHT_KEY

SECRET_FILE = "privacy-secret"
"""Random bytes that key the site's DP randomness (DP-SGD's Poisson sampling and noise, the
release noise, the per-patient image draw): the coordinator knows the run's seed, so
randomness drawn from it alone would be sampling it can replay and noise it can subtract."""


class PrivacyUnitError(SafeError, ValueError):
    """The site's privacy unit cannot be applied to its data."""


class PrivacyRound:
    """One round of one run at a site with DP on (see the module docstring)."""

    def __init__(self, ledger: PrivacyLedger, policy: PrivacyPolicy, site: str, run: str,
                 server_round: int, total_rounds: int, n_train: int) -> None:
        """``n_train``: training records in the policy's unit (images, or patients)."""
        self.ledger = ledger
        self.policy = policy
        self.site = site
        self.run = run
        self.server_round = server_round
        self.total_rounds = total_rounds
        self.n_train = n_train
        self.delta = policy.delta_for(n_train)
        self._plan: RunPlan | None = None
        self._reservation: Reservation | None = None
        self.entry: LedgerEntry | None = None

    @classmethod
    def open(cls, state_dir: Path, data, policy: PrivacyPolicy, *, site: str, run: str,
             server_round: int, total_rounds: int) -> "PrivacyRound":
        """The round for a site's `SiteData`, in the policy's privacy unit."""
        if policy.unit == "patient":
            if data.train_patients is None or data.patient_fingerprint is None:
                raise PrivacyUnitError("--privacy-unit patient: this site's data has no patient IDs; "
                                       "use --privacy-unit image")
            fingerprint, n_train = data.patient_fingerprint, len(set(data.train_patients.tolist()))
        else:
            fingerprint, n_train = data.fingerprint, len(data.train_y)
        ledger = PrivacyLedger.open(state_dir, fingerprint, new_ledger=policy.new_ledger)
        return cls(ledger, policy, site, str(run), server_round, total_rounds, n_train)

    def training_records(self, x: np.ndarray, y: np.ndarray, patients: np.ndarray | None):
        """The round's training records: every image, or with the patient unit one record
        per patient, `PATIENT_IMAGES` of its images stacked (x: P×K×…, y: P×K)."""
        if self.policy.unit != "patient":
            return x, y
        rng = np.random.default_rng(self._secret_seed("patient-images"))
        by_patient: dict[str, list[int]] = {}
        for index, patient in enumerate(patients.tolist()):
            by_patient.setdefault(str(patient), []).append(index)
        chosen = np.stack([_draw_images(rng, indices, PATIENT_IMAGES)
                           for _, indices in sorted(by_patient.items())])
        return x[chosen], y[chosen]

    @property
    def state_dir(self) -> Path:
        return self.ledger.state_dir

    # ------------------------------------------------------------------ plan
    def plan(self, batch_size: int, epochs: int) -> RunPlan:
        """The run's plan: made at its first round here, reused after (`planning`)."""
        if self._plan is not None:
            return self._plan
        schedule = dp_schedule(self.n_train, batch_size, 1.0, self.policy.max_grad_norm)
        steps = schedule.steps_per_epoch * epochs
        rounds_left = max(1, self.total_rounds - self.server_round + 1)
        eval_share = self.policy.eval_share if self.policy.private_metrics else None
        saved = load_plan(self.state_dir)
        wanted = (self.run, schedule.sample_rate, steps, self.delta, self.policy.epsilon,
                  self.ledger.data_fingerprint, eval_share, self.policy.unit)
        if saved is not None and (saved.run, saved.sample_rate, saved.steps_per_round, saved.delta,
                                  saved.target_epsilon, saved.data, saved.eval_share, saved.unit) == wanted:
            self._plan = saved
            return saved
        release = None
        if eval_share is not None:
            release = plan_release_noise(rounds_left, eval_share * self.policy.epsilon, self.delta)
        releases = [(release, 1.0, rounds_left)] if release is not None else []
        sigma = plan_noise_multiplier(
            self.ledger.history + releases, schedule.sample_rate, steps, rounds_left,
            self.policy.epsilon, self.delta, max_noise_multiplier=self.policy.max_noise_multiplier)
        self._plan = RunPlan(run=self.run, noise_multiplier=sigma, sample_rate=schedule.sample_rate,
                             steps_per_round=steps, delta=self.delta, target_epsilon=self.policy.epsilon,
                             planned_rounds=rounds_left, data=self.ledger.data_fingerprint,
                             release_noise=release, eval_share=eval_share, unit=self.policy.unit)
        save_plan(self.state_dir, self._plan)
        return self._plan

    # ------------------------------------------------------------------ train
    def reserve_training(self, batch_size: int, epochs: int, trainable: int | None = None) -> BudgetDecision:
        """Plan, then check and record this round's DP-SGD spend in one locked step.
        With `trainable` (the model's trained weights), the first round of a plan also
        warns when the plan's noise would swamp the signal (`noise_check`): on the site's
        stderr (`fedmed client` shows it) and in its state folder (`simulate` shows it)."""
        plan = self.plan(batch_size, epochs)
        if plan.noise_multiplier is None:
            spent = self.ledger.spent(self.delta)
            return BudgetDecision.declined(
                f"remaining budget cannot fit one round at noise <= {self.policy.max_noise_multiplier:g} "
                f"(spent {spent:.3f} of {self.policy.epsilon:g})", self.policy.epsilon, self.delta, spent)
        decision, self._reservation = self.ledger.reserve(
            self.run, self.server_round, plan.round_entry, plan.delta, self.policy.epsilon, unit=self.policy.unit)
        if decision.train:
            self.entry = self._reservation.entry
            if self.server_round == 1 or plan.planned_rounds == self.total_rounds - self.server_round + 1:
                self._say(f"DP-SGD plan: noise multiplier {plan.noise_multiplier:.2f}, q={plan.sample_rate:.4f}, "
                          f"{plan.steps_per_round} steps/round for {plan.planned_rounds} round(s), "
                          f"one {self.policy.unit} per record ({self.n_train} in training)"
                          + (f", metric releases at noise {plan.release_noise:.2f}" if plan.release_noise else "")
                          + f", budget epsilon={self.policy.epsilon:g} delta={plan.delta:.0e} "
                          f"(already spent {decision.spent_epsilon:.3f})")
                if trainable:
                    check = noise_to_signal(plan.noise_multiplier, plan.sample_rate, self.n_train, trainable,
                                            plan.steps_per_round * plan.planned_rounds)
                    if (warning := check.warning()) is not None:
                        self._say(f"warning: {warning}")
                        keep_warning(self.state_dir, self.run, warning)
        else:
            self._say(f"round {self.server_round}: not training: {decision.reason}")
        return decision

    @contextlib.contextmanager
    def training(self) -> Iterator[RunPlan]:
        """Train inside this block, after a reservation that fits; the reservation is
        marked reported back when the block ends (it stays counted either way)."""
        if self._reservation is None or self._plan is None:
            raise RuntimeError("privacy round: train only after reserve_training() said train")
        try:
            yield self._plan
        finally:
            self._reservation.finish()

    # ------------------------------------------------------------------ evaluate
    def release_evaluation(self, probs: np.ndarray, labels: np.ndarray, batch_size: int,
                           epochs: int) -> tuple[BudgetDecision | None, dict[str, object]]:
        """The evaluation reply's metrics, released privately and charged to the ledger
        (or exactly, and recorded as such, when the site chose ``--no-dp-metrics``).
        Returns (None or the refusing decision, metrics)."""
        if not self.policy.private_metrics:
            self.ledger.append(self.run, self.server_round, 1.0, 1.0, 0, self.delta,
                               mechanism=OPEN_RELEASE, note="exact evaluation metrics (--no-dp-metrics)")
            return None, {**open_release(probs, labels), "dp_metrics": 0}
        withheld = {WEIGHT_KEY: 0, **{name: float("nan") for name in DERIVED}, "dp_metrics": 1}
        plan = self.plan(batch_size, epochs)
        if plan.release_noise is None or probs.shape[1] != 2:
            return None, withheld
        decision, _ = self.ledger.reserve(self.run, self.server_round, plan.release_entry(), plan.delta,
                                          self.policy.epsilon, mechanism=GAUSSIAN, unit=self.policy.unit,
                                          in_flight=False)
        if not decision.train:
            return decision, withheld
        rng = np.random.default_rng(self._secret_seed("release"))
        return None, {**private_release(probs, labels, plan.release_noise, rng), "dp_metrics": 1,
                      "epsilon": decision.epsilon_after, RELEASE_NOISE_KEY: float(plan.release_noise)}

    def training_seed(self) -> int:
        """DP-SGD's seed (Poisson sampling, noise, dropout) for this round: keyed by the
        site's secret, so the coordinator cannot replay the sampling or subtract the noise
        (the guarantee assumes both are hidden from it; Abadi et al. 2016, §3.1)."""
        # Not keyed by the run's ID (a fresh one each run): the ledger's length already makes
        # every round of every run on this data draw afresh, and a simulation stays repeatable.
        digest = hashlib.sha256(
            _site_secret(self.state_dir) + f":dp-sgd:{self.server_round}:{len(self.ledger)}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % 2**63

    # ------------------------------------------------------------------ helpers
    def _secret_seed(self, purpose: str) -> int:
        digest = hashlib.sha256(
            _site_secret(self.state_dir) + f":{purpose}:{self.run}:{self.server_round}:{len(self.ledger)}".encode()
        ).digest()
        return int.from_bytes(digest[:8], "little")

    def _say(self, text: str) -> None:
        print(f"[fedmed site {self.site}] {text}", file=sys.stderr)


def key_simulated_site(state_dir: Path, seed: int, site: str) -> None:
    """Key a *simulated* site's DP randomness from the simulation's seed, so that a
    researcher's simulation is reproducible. Only for simulations, where one person holds
    every site's data: a real site's key is random bytes, made on first use. A state folder
    that already has a key keeps it."""
    path = Path(state_dir) / SECRET_FILE
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(hashlib.sha256(f"fedmed-simulation:{seed}:{site}".encode()).digest())


def _site_secret(state_dir: Path) -> bytes:
    """The site's noise key, made on first use (readable by the site's account only)."""
    path = Path(state_dir) / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return path.read_bytes()


def _draw_images(rng: np.random.Generator, indices: list[int], k: int) -> np.ndarray:
    """`k` of one patient's image indices: without repeats while it has that many, else
    all of them and the rest drawn again at random."""
    if len(indices) >= k:
        return rng.choice(indices, size=k, replace=False)
    return np.concatenate([rng.permutation(indices), rng.choice(indices, size=k - len(indices))])
