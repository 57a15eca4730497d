"""The coordinator writes each round's operating threshold (the aggregate `threshold` of
its metrics row) into that round's checkpoint and into model-final.pt, where `predict` and
`evaluate` read it; a run whose rows have none saves arg-max models."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord

from fedmed.client.predict import load_model
from fedmed.common.checkpoint import load_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model
from fedmed.common.settings import ImageSettings
from fedmed.server.outputs import FINAL_MODEL, RunRecorder, read_metrics

CONFIG = FederationConfig(rounds=2, image=ImageSettings(size=16))


def _arrays(seed: int) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(build_model(CONFIG.model, 2, CONFIG.image.size).state_dict())


def _recorder(out: Path, thresholds: dict[int, float | None], resume_after: int = 0,
              config: FederationConfig = CONFIG) -> RunRecorder:
    recorder = RunRecorder(out, config, resume_after=resume_after, checkpoint_extra=lambda: {"k": 1})

    def hand_made(server_round: int, evaluated, pooled=None) -> dict:
        aggregate = {"accuracy": 0.8}
        if thresholds.get(server_round) is not None:
            aggregate["threshold"] = thresholds[server_round]
        return {"round": server_round, "sites": {}, "aggregate": aggregate, "privacy": {}, "seconds": 0.1}

    recorder.round_record = hand_made
    return recorder


def test_round_threshold_reaches_checkpoints_and_the_final_model(tmp_path: Path):
    recorder = _recorder(tmp_path, {1: 0.31, 2: 0.27})
    for server_round in (1, 2):
        recorder.on_train(server_round, [], _arrays(server_round))
        recorder.on_evaluate(server_round, [], None)
    recorder.finish("completed", final_arrays=_arrays(2))
    first = load_checkpoint(tmp_path / "checkpoints" / "round-001.pt")
    assert first["threshold"] == 0.31 and first["strategy_state"] == {"k": 1} and "round 1" in first["threshold_rule"]
    final = load_checkpoint(tmp_path / FINAL_MODEL)
    assert final["threshold"] == 0.27 and "round 2" in final["threshold_rule"]
    assert load_model(tmp_path / FINAL_MODEL).threshold == 0.27
    assert [r["aggregate"]["threshold"] for r in read_metrics(tmp_path)] == [0.31, 0.27]


def test_no_threshold_in_the_metrics_means_argmax(tmp_path: Path):
    recorder = _recorder(tmp_path, {1: 0.4, 2: None})
    for server_round in (1, 2):
        recorder.on_train(server_round, [], _arrays(server_round))
        recorder.on_evaluate(server_round, [], None)
    recorder.finish("completed", final_arrays=_arrays(2))
    final = load_checkpoint(tmp_path / FINAL_MODEL)
    assert final.get("threshold") is None and final["threshold_rule"] == "argmax"
    assert "threshold" not in load_checkpoint(tmp_path / "checkpoints" / "round-002.pt")
    assert load_model(tmp_path / FINAL_MODEL).threshold is None


def test_a_resumed_run_keeps_the_last_rounds_threshold(tmp_path: Path):
    recorder = _recorder(tmp_path, {1: 0.35})
    recorder.on_train(1, [], _arrays(1))
    recorder.on_evaluate(1, [], None)
    resumed = _recorder(tmp_path, {}, resume_after=1)
    resumed.finish("completed", final_arrays=_arrays(1))
    assert load_checkpoint(tmp_path / FINAL_MODEL)["threshold"] == 0.35


def test_a_multi_class_run_saves_no_threshold(tmp_path: Path):
    config = CONFIG.with_(classes=("a", "b", "c"))
    recorder = _recorder(tmp_path, {1: 0.3}, config=config)
    recorder.on_train(1, [], ArrayRecord(build_model(config.model, 3, 16).state_dict()))
    recorder.on_evaluate(1, [], None)
    recorder.finish("completed")
    assert load_model(tmp_path / FINAL_MODEL).threshold is None
