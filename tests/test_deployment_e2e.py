"""`fedmed server start --insecure` and three `fedmed client --insecure` processes on
loopback, for real: a SuperLink, three SuperNodes with fedmed's executors, the ServerApp.
The secure default (TLS, enrolled sites, the public-port proxy) is exercised by
`test_security_e2e.py` and `test_faults_e2e.py`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from process_tree import start, start_coordinator, stop  # noqa: E402 — tests/ is on sys.path under pytest

pytestmark = pytest.mark.e2e


def test_server_and_three_clients_finish_two_rounds(synthetic_sites: Path, tmp_path: Path, fedmed_cmd):
    run_dir = tmp_path / "run"
    # Port 0: the coordinator picks a free port itself (retrying a clash) and prints it.
    server, port = start_coordinator(fedmed_cmd + [
        "server", "start", "--insecure", "--address", "127.0.0.1:0",
        "--rounds", "2", "--min-sites", "3", "--out", str(run_dir),
        "--image-size", "32", "--batch-size", "16", "--round-timeout", "300",
        "--tensorboard", str(tmp_path / "tb"),
    ], tmp_path / "server.log")
    clients = [
        start(fedmed_cmd + [
            "client", "--site", site, "--data", str(synthetic_sites / site),
            "--server", f"127.0.0.1:{port}", "--state", str(tmp_path / "state" / site), "--insecure",
        ], tmp_path / f"client-{site}.log")
        for site in ("A", "B", "C")
    ]
    try:
        code = server.wait(timeout=420)
    finally:
        stop(server, *clients)
    server_out = (tmp_path / "server.log").read_text()
    assert code == 0, server_out + (run_dir / "superlink.log").read_text()[-3000:]
    assert "site A joined" in server_out and "node-" not in server_out  # names, not node IDs

    assert (run_dir / "checkpoints" / "round-001.pt").exists()
    assert (run_dir / "checkpoints" / "round-002.pt").exists()
    assert (run_dir / "model-final.pt").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r["sites"]) == {"A", "B", "C"}
        assert all(s["status"] == "ok" and s["num_examples"] > 0 for s in r["sites"].values())
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert "run completed" in server_out

    # --tensorboard logged every round as it completed.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "tb"))
    board.Reload()
    assert [e.step for e in board.Scalars("participation/trained")] == [1, 2]
    assert [e.step for e in board.Scalars("time/round_seconds")] == [1, 2]
    # Metrics come from noised histograms (DP on); on splits this small every site's noised
    # count can be 0 in a round, and then its accuracy is unknown (absent), not made up: the
    # board has a point exactly where a round reported one.
    aggregate = [r["round"] for r in rows if isinstance(r["aggregate"].get("accuracy"), (int, float))
                 and math.isfinite(r["aggregate"]["accuracy"])]
    charts = board.Tags()["scalars"]
    assert [e.step for e in board.Scalars("aggregate/accuracy")] == aggregate if aggregate \
        else "aggregate/accuracy" not in charts
    reported = {f"site/accuracy/{s}" for r in rows for s, v in r["sites"].items()
                if isinstance(v.get("accuracy"), (int, float)) and math.isfinite(v["accuracy"])}
    assert reported and {t for t in board.Tags()["scalars"] if t.startswith("site/accuracy/")} == reported

    # The audit log: who started the run with which app, who contributed to each round.
    from fedmed.common.app_bundle import fab_hash
    from fedmed.server.audit import read_audit, verify_chain

    audit = list(read_audit(run_dir))
    started = next(e for e in audit if e["event"] == "run-started")
    assert started["app_hash"] == fab_hash() and started["tls"] is False and started["by"]
    assert [e["contributors"] for e in audit if e["event"] == "round-completed"] == [["A", "B", "C"]] * 2
    assert audit[-1]["event"] == "run-finished" and audit[-1]["status"] == "completed"
    assert verify_chain(run_dir) is None

    # Nothing a site owns reached the coordinator: no patient names or IDs, no paths.
    coordinator_text = server_out + (run_dir / "superlink.log").read_text() + \
        (run_dir / "metrics.jsonl").read_text() + (run_dir / "config.json").read_text()
    assert "SYNTH" not in coordinator_text
    assert str(synthetic_sites) not in coordinator_text
