"""A site's privacy round through the real ClientApp: the budget is reserved before
training (two runs on one state folder cannot overspend), a deleted ledger is not a fresh
budget, and nothing a reply carries gives a malicious coordinator a class count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmed.client import app as client_app
from fedmed.client.app import make_client_app
from fedmed.client.privacy import PrivacyLedger, epsilon
from fedmed.client.privacy.dp_sgd import PrivateTraining
from fedmed.client.privacy.ledger import HEAD_NAME, LEDGER_NAME, LedgerError
from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.client.privacy.round import SECRET_FILE
from fedmed.client.site import Site
from fedmed.client.sitedata import SiteData
from fedmed.client.sitedata.report import SkipReport
from fedmed.common.federation import FederationConfig
from fedmed.common.metrics import histogram_key
from fedmed.common.models import build_model
from fedmed.common.protocol import ARRAYS_KEY, FEDERATION_KEY, SITE_KEY
from fedmed.common.reply_fields import METRIC_PREFIX, reply_metrics
from fedmed.common.settings import ImageSettings
from pld_reference import pld_epsilon  # noqa: E402 — tests/ is on sys.path under pytest

N_TRAIN, N_VAL = 60, 40
TRAIN_CLASS0, VAL_CLASS1 = 21, 13


def _data(seed: int = 0) -> SiteData:
    rng = np.random.default_rng(seed)
    train_y = np.array([0] * TRAIN_CLASS0 + [1] * (N_TRAIN - TRAIN_CLASS0), dtype=np.int64)
    val_y = np.array([0] * (N_VAL - VAL_CLASS1) + [1] * VAL_CLASS1, dtype=np.int64)
    return SiteData(classes=("normal", "abnormal"),
                    train_x=rng.normal(size=(N_TRAIN, 1, 28, 28)).astype(np.float32), train_y=train_y,
                    val_x=rng.normal(size=(N_VAL, 1, 28, 28)).astype(np.float32), val_y=val_y,
                    num_patients={"train": N_TRAIN, "val": N_VAL}, skipped=SkipReport(),
                    fingerprint="test-site-data")


def _site(state: Path, **policy) -> Site:
    data = _data()
    return Site(name="A", state_dir=state, load_data=lambda config: data, privacy=PrivacyPolicy(**policy))


def _config(**overrides) -> FederationConfig:
    settings = dict(rounds=2, epochs=1, batch_size=16, image=ImageSettings(size=28), seed=1, lr=1e-3)
    settings.update(overrides)
    return FederationConfig(**settings)


def _message(kind: str, config: FederationConfig, server_round: int, run_id: int,
             model: torch.nn.Module | None = None) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
    model = model or build_model(config.model, len(config.classes), config.image.size)
    content = RecordDict({
        ARRAYS_KEY: ArrayRecord(model.state_dict()),
        "config": ConfigRecord({FEDERATION_KEY: config.to_json(), "server-round": server_round}),
    })
    return Message(content=content, dst_node_id=1, message_type=kind)


def _ask(site: Site, kind: str, config: FederationConfig, server_round: int, run_id: int, model=None) -> dict:
    client_app._DATA_MEMO.clear()
    reply = make_client_app(lambda context: site)(_message(kind, config, server_round, run_id, model),
                                                  Context(run_id, 1, {}, RecordDict(), {}))
    metrics = reply_metrics(reply.content)
    status = {k: v for k, v in reply.content[SITE_KEY].items() if not k.startswith(METRIC_PREFIX)}
    return {**status, **metrics}


def _rows(state: Path) -> list[dict]:
    path = state / LEDGER_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------------------- reserve
@pytest.mark.slow
def test_two_runs_on_one_state_folder_cannot_overspend(tmp_path, monkeypatch):
    """Run 2's whole round happens while run 1 trains: both plan for the full budget on the
    same empty ledger, and only one may spend it."""
    state, budget = tmp_path / "state", 2.0
    site = _site(state, epsilon=budget)
    config = _config(rounds=1)
    original = PrivateTraining.train
    second: list[dict] = []

    def train_while_another_run_trains(self, epochs, device="cpu"):
        if not second:
            second.append({})
            second[0] = _ask(site, "train", config, 1, run_id=202)
        return original(self, epochs, device)

    monkeypatch.setattr(PrivateTraining, "train", train_while_another_run_trains)
    first = _ask(site, "train", config, 1, run_id=101)
    assert first["status"] == "ok", first
    rows = _rows(state)
    # Run 2 saw run 1's reservation: it trained on what was left (at more noise), or not at all.
    assert [r["run"] for r in rows][0] == "101"
    assert rows[-1]["epsilon"] <= budget
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
    assert epsilon(history, rows[-1]["delta"]) <= budget


def test_a_reservation_whose_process_died_is_settled_and_counted(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, "data")
    decision, reservation = ledger.reserve("9", 1, (1.2, 0.1, 20), 1e-5, target_epsilon=4.0)
    assert decision.train
    spent = ledger.epsilon
    # The process dies mid-round: its lock goes, its in-flight file stays.
    import os

    os.close(reservation._fd)
    reopened = PrivacyLedger.open(tmp_path, "data")
    assert [e.mechanism for e in reopened.entries] == ["dp-sgd", "settled"]
    assert "line 1" in reopened.entries[-1].note
    assert reopened.epsilon == pytest.approx(spent)  # counted: its update may have left
    assert not list(tmp_path.glob("privacy-inflight-*"))
    # A reservation still running is left alone.
    _, running = reopened.reserve("9", 2, (1.2, 0.1, 20), 1e-5, target_epsilon=4.0)
    assert len(PrivacyLedger.open(tmp_path, "data")) == 3
    running.finish()
    assert not list(tmp_path.glob("privacy-inflight-*"))


# ----------------------------------------------------------------------------- new ledger
def test_a_deleted_ledger_is_not_a_fresh_budget(tmp_path):
    state = tmp_path / "state"
    config = _config(rounds=1)
    assert _ask(_site(state, epsilon=2.0), "train", config, 1, run_id=1)["status"] == "ok"
    (state / LEDGER_NAME).unlink()
    (state / HEAD_NAME).unlink()

    again = _ask(_site(state, epsilon=2.0), "train", config, 1, run_id=2)
    assert again["status"] == "failed" and again["reason"] == "train-error:LedgerError", again
    with pytest.raises(LedgerError, match="--new-ledger"):
        PrivacyLedger.open(state, "test-site-data")
    # Without the plan, the ledger's mark in the cache folder still tells.
    (state / "privacy-plan.json").unlink()
    with pytest.raises(LedgerError, match="cache/privacy-spent-"):
        PrivacyLedger.open(state, "test-site-data")

    reason = "restored the PACS export after a disk failure; old ledger lost"
    fresh = _ask(_site(state, epsilon=2.0, new_ledger=reason), "train", config, 1, run_id=3)
    assert fresh["status"] == "ok", fresh
    rows = _rows(state)
    assert rows[0]["mechanism"] == "new-ledger" and rows[0]["note"] == reason and rows[0]["steps"] == 0
    assert rows[1]["mechanism"] == "dp-sgd"


# ----------------------------------------------------------------------------- malicious coordinator
def _crafted(config: FederationConfig, constant_class: int) -> torch.nn.Module:
    """The audit's model: last layer zeroed, bias 30 on one class, so every image scores
    that class with certainty and the loss is a count of the other class."""
    model = build_model(config.model, len(config.classes), config.image.size)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0]))
        last.bias[constant_class] = 30.0
    return model


@pytest.mark.slow
def test_no_reply_gives_the_coordinator_a_class_count(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / SECRET_FILE).write_bytes(b"fixed test key: a site's own is random")
    site = _site(state, epsilon=4.0)
    # Full batch and a learning rate of 1e-12: the update is nothing but the reply.
    # Six rounds planned, so that the six releases asked for below fit the plan.
    config = _config(rounds=6, batch_size=N_TRAIN * 2, lr=1e-12, optimizer="sgd")
    counts = {TRAIN_CLASS0, N_TRAIN - TRAIN_CLASS0, VAL_CLASS1, N_VAL - VAL_CLASS1}

    for server_round in (1, 2, 3):
        trained = _ask(site, "train", config, server_round, 7, _crafted(config, 1))
        assert trained["status"] == "ok", trained
        assert "train_loss" not in trained
        # Scalars the coordinator could scale by the count or the split size.
        scalars = [v for k, v in trained.items() if isinstance(v, (int, float)) and k != "dp"]
        for value in scalars:
            for scale in (1, N_TRAIN, N_TRAIN / 30, trained["num-examples"]):
                assert not any(abs(value * scale - c) < 1e-6 for c in counts), (value, scale)
        assert trained["num-examples"] != N_TRAIN  # rounded up to the batch, as `steps` shows

        for constant in (0, 1):
            reply = _ask(site, "evaluate", config, server_round, 7, _crafted(config, constant))
            assert reply["status"] == "ok", reply
            estimates = [reply["accuracy"] * reply["num-examples"], reply["num-examples"],
                         sum(reply[histogram_key(1)]), sum(reply[histogram_key(0)]),
                         reply["sensitivity"] * reply["num-examples"]]
            for estimate in estimates:
                if math.isfinite(estimate):
                    assert not any(abs(estimate - c) < 1e-6 for c in counts), estimate
            # Not even rounding the noised counts gives them back.
            assert round(sum(reply[histogram_key(1)])) != VAL_CLASS1
            assert round(sum(reply[histogram_key(0)])) != N_VAL - VAL_CLASS1

    # Every release is its own row, and the rows recompute with Google's PLD accountant.
    rows = _rows(state)
    assert [r["mechanism"] for r in rows].count("gaussian") == 6
    assert [r["mechanism"] for r in rows].count("dp-sgd") == 3
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
    for k in range(1, len(rows) + 1):
        assert rows[k - 1]["epsilon"] == pytest.approx(epsilon(history[:k], rows[k - 1]["delta"]))
    reference = pld_epsilon([h for h in history if h[2]], rows[-1]["delta"])
    assert rows[-1]["epsilon"] == pytest.approx(reference, rel=0.02)
    assert rows[-1]["epsilon"] <= 4.0


def test_exact_metrics_are_the_sites_recorded_choice(tmp_path):
    state = tmp_path / "state"
    site = _site(state, epsilon=4.0, private_metrics=False)
    config = _config(rounds=1)
    reply = _ask(site, "evaluate", config, 1, 5)
    assert reply["status"] == "ok" and reply["dp_metrics"] == 0
    assert reply["num-examples"] == N_VAL
    assert sum(reply[histogram_key(1)]) == VAL_CLASS1  # disclosed exactly, as chosen
    (row,) = _rows(state)
    assert row["mechanism"] == "open-release" and row["steps"] == 0 and "--no-dp-metrics" in row["note"]


@pytest.mark.parametrize("per_patient", [1, 4])
def test_a_patient_record_is_images_of_that_patient_only(tmp_path, monkeypatch, per_patient):
    """With the patient unit a round's record is PATIENT_IMAGES images of one patient (some
    drawn twice when it has fewer), drawn with the site's secret: another round, another draw."""
    from fedmed.client.privacy import round as privacy_round
    from fedmed.client.privacy.round import PrivacyRound

    monkeypatch.setattr(privacy_round, "PATIENT_IMAGES", per_patient)
    PATIENT_IMAGES = per_patient

    patients = np.array(["p1"] * 6 + ["p2"] * 2 + ["p3"] * 5)
    x = np.arange(len(patients), dtype=np.float32).reshape(-1, 1, 1, 1)
    y = np.array([0] * 6 + [1] * 2 + [0] * 5)
    policy = PrivacyPolicy(unit="patient")
    ledger = PrivacyLedger.open(tmp_path, "patients-fingerprint")
    draws = []
    for server_round in range(1, 11):
        rnd = PrivacyRound(ledger, policy, "A", "1", server_round, 10, n_train=3)
        rx, ry = rnd.training_records(x, y, patients)
        assert rx.shape == (3, PATIENT_IMAGES, 1, 1, 1) and ry.shape == (3, PATIENT_IMAGES)
        for record, wanted in zip(rx.reshape(3, -1).astype(int), ("p1", "p2", "p3")):
            assert set(patients[record]) == {wanted}
        if PATIENT_IMAGES > 2:
            assert set(rx[1].ravel().astype(int)) == {6, 7}  # both of p2's images, some twice
        assert len(set(rx[0].ravel().astype(int))) == PATIENT_IMAGES  # no repeats while it has enough
        draws.append(rx.ravel().tolist())
    assert len({tuple(d) for d in draws}) > 1  # rounds draw afresh (ten equal draws: chance < 1e-15)
