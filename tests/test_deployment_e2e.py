"""`fedmed server start --insecure` and three `fedmed client --insecure` processes on
loopback, for real: a SuperLink, three SuperNodes with fedmed's executors, the ServerApp.
The secure default (TLS, enrolled sites, the public-port proxy) is exercised by
`test_security_e2e.py` and `test_faults_e2e.py`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
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


def test_a_deployed_run_starts_from_a_saved_model(synthetic_sites: Path, tmp_path: Path, fedmed_cmd):
    """`server start --init-from MODEL --freeze body` with real processes: round 1 starts
    from the file's weights (the starting point the run folder records is the file's, and
    the weights the sites never train come back in the final model exactly as the file has
    them). Site A trains with DP on 24 images at a small budget: its own `fedmed client`
    output warns that the noise will swamp the signal; the coordinator's never does."""
    import torch

    from fedmed.common import torch_file
    from fedmed.common.checkpoint import load_checkpoint, save_checkpoint
    from fedmed.common.federation import FederationConfig
    from fedmed.common.freezing import frozen_names
    from fedmed.common.models import build_model
    from fedmed.common.settings import ImageSettings

    config = FederationConfig(model="dpcnn", image=ImageSettings(size=32))
    torch.manual_seed(5)
    saved = build_model(config.model, len(config.classes), config.image.size)
    torch.nn.init.normal_(saved.head.weight, std=0.1)  # not the fresh model's zero head
    model_file = save_checkpoint(tmp_path / "start.pt", saved.state_dict(), config, server_round=4)
    start_weights = load_checkpoint(model_file)["state_dict"]

    run_dir = tmp_path / "run"
    server, port = start_coordinator(fedmed_cmd + [
        "server", "start", "--insecure", "--address", "127.0.0.1:0", "--rounds", "1", "--min-sites", "2",
        "--out", str(run_dir), "--model", "dpcnn", "--image-size", "32", "--round-timeout", "300",
        "--init-from", str(model_file), "--freeze", "body",
    ], tmp_path / "server.log")
    site_options = {"A": ["--epsilon", "1"], "B": ["--no-dp"]}
    clients = [
        start(fedmed_cmd + [
            "client", "--site", site, "--data", str(synthetic_sites / site), "--server", f"127.0.0.1:{port}",
            "--state", str(tmp_path / "state" / site), "--insecure", *options,
        ], tmp_path / f"client-{site}.log")
        for site, options in site_options.items()
    ]
    try:
        code = server.wait(timeout=300)
    finally:
        stop(server, *clients)
    server_out = (tmp_path / "server.log").read_text()
    assert code == 0, server_out + (run_dir / "superlink.log").read_text()[-3000:]
    assert "starting from fedmed model" in server_out and "--freeze body" in server_out

    recorded = json.loads((run_dir / "config.json").read_text())
    assert Path(recorded["init_from"]["path"]).resolve() == model_file.resolve()
    assert recorded["freeze"] == "body"
    start_point = torch_file.read(run_dir / "starting-point.pt")["state_dict"]
    assert list(start_point) == list(start_weights)
    assert all(np.array_equal(start_point[k], start_weights[k].numpy()) for k in start_weights)

    final = load_checkpoint(run_dir / "model-final.pt")["state_dict"]
    body = frozen_names(build_model(config.model, len(config.classes), config.image.size), "body")
    # Equal but for float32 rounding: FedAvg's weighted mean of the sites' equal values.
    assert body and all(torch.allclose(final[k], start_weights[k], rtol=1e-6, atol=1e-7) for k in body)
    assert not torch.equal(final["head.weight"], start_weights["head.weight"])  # the sites trained the head
    torch.manual_seed(config.seed)  # what the run would have started from without --init-from
    unseeded = build_model(config.model, len(config.classes), config.image.size).state_dict()
    assert not torch.allclose(unseeded["features.1.weight"], final["features.1.weight"], atol=1e-3)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["sites"][s]["status"] for r in rows for s in ("A", "B")] == ["ok", "ok"]

    # The noise warning is the site's own: on its console, never sent to the coordinator.
    assert "warning: DP-SGD is unlikely to learn here" in (tmp_path / "client-A.log").read_text()
    coordinator_text = server_out + (run_dir / "superlink.log").read_text() + \
        (run_dir / "metrics.jsonl").read_text()
    assert "unlikely to learn" not in coordinator_text
