"""Faults, for real on loopback: a site killed mid-round and a coordinator killed mid-run.

One TLS federation of four enrolled sites, three rounds, quorum of two:

- site D is broken: every update it sends is NaN (`poisoned_site/sitecustomize.py`
  does that to its processes); each round leaves it out, and the coordinator's log and
  audit log name it;
- site C is killed with SIGKILL (the whole site: `fedmed client`, its SuperNode and its
  executor) while it trains in round 1, and restarted: round 1 completes with A and B,
  and C takes part again in a later round. C trains with DP-SGD: its privacy ledger
  carries on across its own kill and the coordinator's, every round it contributed is in
  the ledger, and ε accumulates over both runs;
- after round 2 the whole coordinator (`fedmed server start`, SuperLink, proxy,
  ServerApp) is killed with SIGKILL and restarted with `--resume`: the run ends with
  the planned three rounds, numbered on from where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fedmed.server.audit import read_audit, verify_chain
from fedmed.server.outputs import read_metrics
from process_tree import kill_tree, start, start_coordinator, stop, wait_for  # noqa: E402 — tests/ is on sys.path under pytest
from enrolled_federation import enrolled_federation  # noqa: E402 — tests/ is on sys.path under pytest

pytestmark = pytest.mark.e2e


def test_a_killed_site_rejoins_and_a_killed_coordinator_resumes(synthetic_sites: Path, tmp_path: Path,
                                                                fedmed_cmd):
    co, keys = enrolled_federation(tmp_path, ("A", "B", "C", "D"))
    run_dir = tmp_path / "run"
    secure = ["--certs", str(co), "--sites-dir", str(keys)]
    # Port 0: the coordinator picks its port itself (and retries a clash); the sites are
    # started once it says where it is.
    server, port = start_coordinator(fedmed_cmd + [
        "server", "start", *secure, "--address", "127.0.0.1:0", "--out", str(run_dir), "--rounds", "3",
        "--min-sites", "2", "--round-timeout", "60", "--image-size", "32", "--batch-size", "16"],
        tmp_path / "server.log")

    def client(site: str, log: str, data: str | None = None, env: dict | None = None) -> subprocess.Popen:
        return start(fedmed_cmd + [
            "client", "--site", site, "--data", str(synthetic_sites / (data or site)),
            "--server", f"127.0.0.1:{port}",
            "--state", str(tmp_path / "state" / site), "--certs", str(tmp_path / f"certs-{site}"),
            # Only C trains with DP-SGD (its ledger must survive the kills); for the
            # others it would only slow the rounds down.
            *([] if site == "C" else ["--no-dp"]),
        ], tmp_path / log, env)

    poisoned = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(Path(__file__).parent / d) for d in ("poisoned_site", "site_hooks"))}
    sites = {s: client(s, f"client-{s}.log") for s in ("A", "B", "C")}
    sites["D"] = client("D", "client-D.log", data="A", env=poisoned)
    resumed = None
    try:
        # C dies while it trains in round 1, and comes back once round 1 is over. Round 1
        # ends when the SuperLink drops C's dead session (two missed heartbeats, about a
        # minute); started earlier, C is refused meanwhile and retries every 10 s, and with
        # rounds of a few seconds the run could end between two of its retries.
        c_log = tmp_path / "client-C.log"
        assert wait_for(lambda: "Receiving: train message" in c_log.read_text(), 240), c_log.read_text()
        kill_tree(sites["C"])
        assert wait_for(lambda: len(read_metrics(run_dir)) >= 1, 300), (tmp_path / "server.log").read_text()
        sites["C"] = client("C", "client-C-restarted.log")

        # The coordinator dies after round 2, and is resumed.
        assert wait_for(lambda: len(read_metrics(run_dir)) >= 2, 300), (tmp_path / "server.log").read_text()
        kill_tree(server)
        assert [r["round"] for r in read_metrics(run_dir)] == [1, 2]
        resumed, _ = start_coordinator(fedmed_cmd + ["server", "start", *secure, "--address",
                                                     f"127.0.0.1:{port}", "--resume", str(run_dir)],
                                       tmp_path / "server-resumed.log")
        code = resumed.wait(timeout=300)
    finally:
        stop(server, resumed, *sites.values())
    resumed_out = (tmp_path / "server-resumed.log").read_text()
    assert code == 0, resumed_out + (run_dir / "superlink.log").read_text()[-3000:]
    assert "resuming after round 2 of 3" in resumed_out

    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3]
    # Round 1 went on without C; C trained again in a later round.
    assert rows[0]["sites"]["A"]["status"] == rows[0]["sites"]["B"]["status"] == "ok"
    assert rows[0]["sites"].get("C", {}).get("num_train_examples") is None
    assert any(r["sites"].get("C", {}).get("num_train_examples") for r in rows[1:])
    for n in (1, 2, 3):
        assert (run_dir / "checkpoints" / f"round-{n:03d}.pt").exists()
    assert json.loads((run_dir / "status.json").read_text())["rounds_completed"] == 3

    audit = list(read_audit(run_dir))
    assert verify_chain(run_dir) is None
    starts = [e for e in audit if e["event"] == "run-started"]
    assert len(starts) == 2 and starts[1]["resumed_after_round"] == 2
    completed = {e["round"]: e for e in audit if e["event"] == "round-completed"}
    assert set(completed) == {1, 2, 3}
    assert completed[1]["contributors"] == ["A", "B"] and "C" in completed[1]["left_out"]
    assert any("C" in completed[n]["contributors"] for n in (2, 3))

    # D's NaN updates were left out of every round and named in both logs.
    assert all("D" not in e["contributors"] for e in completed.values())
    rejected = [e for e in audit if e["event"] == "update-rejected"]
    assert rejected and {e["site"] for e in rejected} == {"D"}
    assert all(e["reason"].startswith("non-finite") for e in rejected)
    assert completed[1]["left_out"]["D"].startswith("rejected (update-rejected:non-finite")
    assert rows[0]["sites"]["D"]["status"] == "rejected"
    assert "round 1: update from site D rejected (non-finite" in (tmp_path / "server.log").read_text()
    assert "update from site D rejected (non-finite" in resumed_out
    # C's privacy ledger went on across both kills: every round C contributed to is in
    # it, ε only grew, and an auditor's recomputation of every line agrees.
    from fedmed.client.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger.audit(tmp_path / "state" / "C")
    # A round's row merges training and evaluation: C may have rejoined in time to be
    # evaluated but not to train, so "trained" is a round with training examples.
    trained = [r["round"] for r in rows if r["sites"].get("C", {}).get("num_train_examples")]
    assert trained and set(trained) <= {e.round for e in ledger.entries}
    epsilons = [e.epsilon for e in ledger.entries]
    assert epsilons == sorted(epsilons) and 0 < epsilons[-1] <= 8.0
    run_of = {e.round: e.run for e in ledger.entries}
    if 2 in trained and 3 in trained:
        assert run_of[2] != run_of[3]  # the resumed run is a new run: ε composed over both
    last = rows[trained[-1] - 1]["sites"]["C"]["epsilon"]
    assert last == pytest.approx(epsilons[-1])

    finished = [e for e in audit if e["event"] == "run-finished"]
    assert finished and finished[-1]["status"] == "completed" and finished[-1]["rounds_completed"] == 3
