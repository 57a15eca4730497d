"""A site's privacy budget, end to end: planned, enforced across runs, tamper-evident,
opt-out recorded, and kept across a client restarted mid-run.

The federations run in Flower's simulation engine in-process, as in `test_simulation.py`;
each `simulate` costs half a minute of Ray start-up, so the scenarios share runs: run 1
spends the budget, the ledger of site C is then tampered with, and run 2 shows both the
exhausted budget (sites A and B) and the refused ledger (site C).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fedmed.client.privacy.accounting import epsilon
from fedmed.client.privacy.ledger import HEAD_NAME, LEDGER_NAME
from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.client.privacy.planning import PLAN_FILE
from fedmed.common.federation import FederationConfig
from fedmed.common.settings import ImageSettings
from fedmed.server.outputs import read_metrics, read_status
from fedmed.simulations.runner import simulate
from fedmed.simulations.sites import dicom_sites

BUDGET = 2.0
SITES = ("A", "B", "C")

pytestmark = pytest.mark.slow


def _config(rounds: int = 2) -> FederationConfig:
    return FederationConfig(rounds=rounds, epochs=1, batch_size=16, min_sites=3,
                            image=ImageSettings(size=32), seed=5)


def _ledger_rows(state_dir: Path) -> list[dict]:
    path = state_dir / LEDGER_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_budget_is_spent_once_and_a_tampered_ledger_is_refused(synthetic_sites: Path, tmp_path: Path):
    state = tmp_path / "state"
    policy = PrivacyPolicy(epsilon=BUDGET)

    # Run 1: the plan spends most of the budget, never more.
    first = tmp_path / "run1"
    status = simulate(dicom_sites(synthetic_sites, state, policy), _config(), first)
    assert status["status"] == "completed", status
    rows = read_metrics(first)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert {s["status"] for s in row["sites"].values()} == {"ok"}
        assert all(s["dp"] is True for s in row["sites"].values())
        assert row["privacy"]["no_dp_sites"] == []
    after_run1 = {}
    for site in SITES:
        ledger = _ledger_rows(state / site)
        # each round: its DP-SGD reservation, then its evaluation release
        assert [(r["round"], r["mechanism"]) for r in ledger] == [
            (1, "dp-sgd"), (1, "gaussian"), (2, "dp-sgd"), (2, "gaussian")]
        assert {r["run"] for r in ledger} == {ledger[0]["run"]}
        spent = ledger[-1]["epsilon"]
        assert 1.6 <= spent <= BUDGET, (site, spent)
        assert rows[-1]["sites"][site]["epsilon"] == pytest.approx(spent)
        assert rows[-1]["sites"][site]["dp_metrics"] is True
        plan = json.loads((state / site / PLAN_FILE).read_text())
        assert all(r["noise_multiplier"] == plan["noise_multiplier"] for r in ledger if r["mechanism"] == "dp-sgd")
        assert all(r["noise_multiplier"] == plan["release_noise"] for r in ledger if r["mechanism"] == "gaussian")
        after_run1[site] = (state / site / LEDGER_NAME).read_bytes()
    assert rows[-1]["privacy"]["max_epsilon"] <= BUDGET

    # An administrator "gives back" budget by lowering a recorded spend at site C.
    tampered = state / "C" / LEDGER_NAME
    lines = tampered.read_text().splitlines()
    row = json.loads(lines[-1])
    row["epsilon"] = 0.5
    lines[-1] = json.dumps(row)
    tampered.write_text("\n".join(lines) + "\n")
    tampered_bytes = tampered.read_bytes()

    # Run 2, same state folders: A and B have no budget left, C's ledger is refused.
    second = tmp_path / "run2"
    status = simulate(dicom_sites(synthetic_sites, state, policy), _config(), second)
    assert status["status"] == "failed"
    reason = status["reason"]
    assert "0 site(s) trained" in reason, reason
    for site in ("A", "B"):
        assert f"{site}: declined (remaining budget" in reason or f"{site}: budget-exhausted" in reason, reason
    assert "C: failed (train-error:LedgerError)" in reason, reason
    assert read_status(second)["rounds_completed"] == 0
    # Nothing was trained anywhere: every ledger is byte for byte what run 1 (or the
    # tampering) left, and none exceeds the budget.
    for site in ("A", "B"):
        assert (state / site / LEDGER_NAME).read_bytes() == after_run1[site]
        assert _ledger_rows(state / site)[-1]["epsilon"] <= BUDGET
    assert tampered.read_bytes() == tampered_bytes
    assert (state / "C" / HEAD_NAME).exists()


def test_no_dp_is_recorded_in_the_run_outputs(synthetic_sites: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from fedmed.cli.main import app

    out, state = tmp_path / "run", tmp_path / "state"
    result = CliRunner().invoke(app, [
        "simulate", "--data", str(synthetic_sites), "--state", str(state), "--out", str(out),
        "--rounds", "1", "--batch-size", "16", "--image-size", "32", "--no-dp",
    ])
    assert result.exit_code == 0, result.output
    assert "differential privacy OFF (--no-dp)" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["dp"] is False and config["epsilon"] is None
    (row,) = read_metrics(out)
    assert row["privacy"]["no_dp_sites"] == list(SITES)
    assert row["privacy"]["max_epsilon"] is None
    for site in SITES:
        assert row["sites"][site]["dp"] is False
        assert row["sites"][site]["status"] == "ok"
        assert not (state / site / LEDGER_NAME).exists()


# One message of a run, handled by the ClientApp in a process of its own, as a deployed
# SuperNode does: every message starts a fresh process, so nothing but the state folder
# carries over from round 1 to round 2.
_ONE_ROUND = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from fedmed.client.app import make_client_app
    from fedmed.client.privacy.policy import PrivacyPolicy
    from fedmed.client.site import dicom_site
    from fedmed.common.federation import FederationConfig
    from fedmed.common.protocol import ARRAYS_KEY, FEDERATION_KEY, SITE_KEY
    from fedmed.common.reply_fields import METRIC_PREFIX, reply_metrics

    data, state, weights, config_json, server_round, run_id = sys.argv[1:7]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = int(run_id), 0, 1
    site = dicom_site("A", Path(data), Path(state), PrivacyPolicy(epsilon=float(sys.argv[7])))
    app = make_client_app(lambda context: site)
    content = RecordDict({
        ARRAYS_KEY: ArrayRecord(torch.load(weights)),
        "config": ConfigRecord({FEDERATION_KEY: config_json, "server-round": int(server_round)}),
    })
    msg = Message(content=content, dst_node_id=1, message_type="train")
    reply = app(msg, Context(int(run_id), 1, {}, RecordDict(), {}))
    status = {k: v for k, v in reply.content[SITE_KEY].items()
              if not isinstance(v, bytes) and not k.startswith(METRIC_PREFIX)}  # not the weights
    print(json.dumps({**status, **reply_metrics(reply.content)}))
""")


def test_a_client_restarted_mid_run_continues_its_ledger(synthetic_sites: Path, tmp_path: Path):
    from fedmed.server.app import initial_arrays

    config = _config(rounds=2)
    weights = tmp_path / "global.pt"
    torch.save(initial_arrays(config).to_torch_state_dict(), weights)
    state = tmp_path / "state-A"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}

    def round_in_a_new_process(server_round: int) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _ONE_ROUND, str(synthetic_sites / "A"), str(state), str(weights),
             config.to_json(), str(server_round), "77", str(BUDGET)],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = round_in_a_new_process(1)
    assert first["status"] == "ok", first
    plan = json.loads((state / PLAN_FILE).read_text())
    assert plan["run"] == "77" and plan["planned_rounds"] == 2
    second = round_in_a_new_process(2)
    assert second["status"] == "ok", second

    ledger = _ledger_rows(state)
    assert [(r["run"], r["round"]) for r in ledger] == [("77", 1), ("77", 2)]
    # Round 2 kept round 1's plan (same σ), and its ε is the whole run's, not a round's.
    assert json.loads((state / PLAN_FILE).read_text()) == plan
    assert {r["noise_multiplier"] for r in ledger} == {plan["noise_multiplier"]}
    assert first["noise_multiplier"] == second["noise_multiplier"] == plan["noise_multiplier"]
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in ledger]
    assert ledger[0]["epsilon"] == pytest.approx(epsilon(history[:1], plan["delta"]))
    assert ledger[1]["epsilon"] == pytest.approx(epsilon(history, plan["delta"]))
    assert ledger[0]["epsilon"] < ledger[1]["epsilon"] <= BUDGET
    assert first["epsilon"] == pytest.approx(ledger[0]["epsilon"])
    assert second["epsilon"] == pytest.approx(ledger[1]["epsilon"])


def test_patient_level_privacy(synthetic_sites: Path, tmp_path: Path):
    """`--privacy-unit patient`: a patient is one record, the accountant's sample
    rate over patients, every ledger row saying so, and ε as Google's PLD computes it."""
    import math

    from fedmed.client.sitedata import load_dicom_site
    from pld_reference import pld_epsilon  # noqa: E402 — tests/ is on sys.path under pytest

    state, config = tmp_path / "state", _config(rounds=1)
    status = simulate(dicom_sites(synthetic_sites, state, PrivacyPolicy(epsilon=BUDGET, unit="patient")),
                      config, tmp_path / "run")
    assert status["status"] == "completed", status
    data = load_dicom_site(synthetic_sites / "A", state / "A", config.image, config.classes,
                           val_fraction=config.val_fraction, seed=config.seed)
    patients = len(set(data.train_patients.tolist()))
    assert patients < len(data.train_y)  # several images per patient
    rows = _ledger_rows(state / "A")
    assert {r["unit"] for r in rows} == {"patient"}
    (training,) = [r for r in rows if r["mechanism"] == "dp-sgd"]
    assert training["sample_rate"] == pytest.approx(1 / math.ceil(patients / config.dp_batch_size))
    assert training["data"] == data.patient_fingerprint != data.fingerprint
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
    assert rows[-1]["epsilon"] == pytest.approx(pld_epsilon(history, rows[-1]["delta"]), rel=0.02)
    assert rows[-1]["epsilon"] <= BUDGET
    (row,) = read_metrics(tmp_path / "run")
    # the train reply's count is the schedule's: ⌈P/B⌉·B, over patients
    assert row["sites"]["A"]["num_train_examples"] == math.ceil(patients / config.dp_batch_size) * config.dp_batch_size


def test_simulate_shows_each_too_small_sites_noise_warning_once(synthetic_sites: Path, tmp_path: Path):
    """The synthetic sites (24 training images each) cannot learn with DP at this budget:
    `simulate`, without --verbose, prints each site's warning once, with its remedies."""
    from typer.testing import CliRunner

    from fedmed.cli.main import app

    out, state = tmp_path / "run", tmp_path / "state"
    result = CliRunner().invoke(app, [
        "simulate", "--data", str(synthetic_sites), "--state", str(state), "--out", str(out),
        "--rounds", "2", "--image-size", "32", "--epsilon", "2",
    ])
    assert result.exit_code == 0, result.output
    for site in SITES:
        assert result.output.count(f"site {site}: warning: DP-SGD is unlikely to learn here") == 1, result.output
    assert "Remedies: a larger epsilon" in result.output
    # Before the first round's row: the sites warned before they trained.
    lines = result.output.splitlines()
    first_row = next(i for i, line in enumerate(lines) if line.split()[:2] == ["1", "3/3"])
    assert all(lines.index(next(line for line in lines if line.startswith(f"site {site}: warning:"))) < first_row
               for site in SITES), result.output
