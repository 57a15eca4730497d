"""The example count a reply claims: checked, and a lying one left out like a bad update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmed.server.audit import AuditLog, read_audit
from fedmed.server.outputs import RunRecorder
from fedmed.server.strategy import SiteAwareFedAvg
from fedmed.server.strategy.reply_checks import DeclaredCounts, count_problem
from test_update_checks import GLOBAL, _as_if_in_a_run, _reply, _state  # noqa: F401 — fixture too


@pytest.mark.parametrize("value, problem", [
    (10, None), (10.0, None), (1, None),
    (math.nan, "num-examples-not-finite"), (math.inf, "num-examples-not-finite"),
    (0, "num-examples-not-positive"), (-5, "num-examples-not-positive"),
    (12.5, "num-examples-not-an-integer"), (None, "num-examples-not-a-number"),
    (True, "num-examples-not-a-number"), ("10", "num-examples-not-a-number"),
])
def test_a_count_is_a_positive_whole_finite_number(value, problem):
    assert count_problem(value) == problem


def test_a_count_is_bounded_by_the_others_and_by_its_own_declaration():
    counts = DeclaredCounts(max_example_ratio=100)
    refused = counts.screen({"A": 20, "B": 25, "C": 10 ** 9})
    assert set(refused) == {"C"} and refused["C"].startswith("num-examples-out-of-proportion")
    assert counts.declared == {"A": 20, "B": 25}
    # A big honest site passes; a site whose count grows within the run does not.
    assert counts.screen({"A": 20, "B": 26, "D": 1500}) == {"B": "num-examples-above-declared:26>25"}
    assert counts.declared["D"] == 1500
    restored = DeclaredCounts()
    restored.load(counts.to_dict())
    assert restored.declared == counts.declared


def test_noised_evaluation_counts_are_held_to_proportion_not_to_a_declaration():
    # With DP on, a site's evaluation count is read off noised histograms: it moves from
    # round to round, so only the proportion rule applies to it.
    counts = DeclaredCounts(max_example_ratio=100, holds_to_declaration=False)
    assert counts.screen({"A": 90, "B": 100}) == {}
    assert counts.screen({"A": 97, "B": 104}) == {}
    assert counts.screen({"A": 97, "B": 10**9})["B"].startswith("num-examples-out-of-proportion")
    assert counts.to_dict() == {}
    training = DeclaredCounts(max_example_ratio=100)
    training.screen({"A": 90, "B": 100})
    assert training.screen({"A": 97, "B": 100}) == {"A": "num-examples-above-declared:97>90"}


def test_evaluation_counts_are_measured_against_the_training_declarations():
    # Small DP sites' noised evaluation counts can come out near 0: measured against them,
    # a large honest site's count looked out of proportion (515 > 100 × 2.5).
    training = DeclaredCounts(max_example_ratio=100)
    training.screen({"A": 512, "B": 512, "C": 4096})
    evaluation = DeclaredCounts(max_example_ratio=100, holds_to_declaration=False, scale=training)
    assert evaluation.screen({"A": 1, "B": 4, "C": 515}) == {}
    assert evaluation.screen({"A": 1, "B": 4, "C": 10 ** 6})["C"] == "num-examples-out-of-proportion:1000000>100x512"
    # Before any training declaration (none yet, or none of the others'), the round's counts.
    assert DeclaredCounts(100, holds_to_declaration=False, scale=DeclaredCounts()).screen(
        {"A": 1, "B": 4, "C": 515})["C"].startswith("num-examples-out-of-proportion")


@pytest.mark.parametrize("lie", [1e9, math.nan, 0, -3, 12.5])
def test_a_lying_count_is_left_out_named_and_audited(tmp_path, lie):
    audit = AuditLog(tmp_path)
    recorder = RunRecorder(tmp_path, _config(), {})
    strategy = SiteAwareFedAvg(min_sites=2, on_event=audit.record, on_train=recorder.on_train)
    strategy._global = GLOBAL
    good = {k: (v + 0.1 if v.is_floating_point() else v) for k, v in _state().items()}
    liar = {k: (v + 5.0 if v.is_floating_point() else v) for k, v in _state().items()}
    arrays, _ = strategy.aggregate_train(1, [_reply(1, "A", good, n=20), _reply(2, "B", good, n=30),
                                             _reply(3, "C", liar, n=lie)])
    # The average is that of A and B alone, and finite; the round was saved.
    np.testing.assert_allclose(arrays["w"].numpy(), good["w"].numpy(), rtol=1e-6)
    assert (tmp_path / "checkpoints" / "round-001.pt").exists()
    events = {e["event"]: e for e in read_audit(tmp_path)}
    assert events["update-rejected"]["site"] == "C"
    assert events["update-rejected"]["reason"].startswith("num-examples-")
    assert events["round-completed"]["contributors"] == ["A", "B"]
    # The evaluation path refuses it too, instead of crashing on int(NaN).
    strategy.on_evaluate = recorder.on_evaluate
    strategy.aggregate_evaluate(1, [_reply(1, "A", good, n=10), _reply(3, "C", good, n=lie)])
    rejected = [e for e in read_audit(tmp_path) if e["event"] == "reply-rejected"]
    assert rejected and rejected[0]["site"] == "C" and rejected[0]["stage"] == "evaluate"


def test_a_non_finite_average_is_never_kept(tmp_path, monkeypatch):
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from fedmed.server.strategy import FederationStopped

    strategy = SiteAwareFedAvg(min_sites=1, on_event=AuditLog(tmp_path).record)
    strategy._global = GLOBAL
    broken = {**_state(), "w": torch.full((4, 3), math.inf)}
    monkeypatch.setattr(FedAvg, "aggregate_train", lambda self, rnd, replies: (ArrayRecord(broken), None))
    with pytest.raises(FederationStopped, match="average of A is not finite"):
        strategy.aggregate_train(1, [_reply(1, "A", _state())])


def _config():
    from fedmed.common.federation import FederationConfig

    return FederationConfig(rounds=1, min_sites=2)


def test_a_site_without_an_enrolled_name_is_announced_by_the_name_it_replies_with(tmp_path):
    """--insecure: no enrolment, so a joining node is named once its first reply says who it is."""
    class Grid:
        def get_node_ids(self):
            return [2886689943375252740]

    audit = AuditLog(tmp_path)
    strategy = SiteAwareFedAvg(min_sites=1, on_event=audit.record)
    strategy._global = GLOBAL
    strategy._track_nodes(Grid(), 1)
    assert not list(read_audit(tmp_path))
    strategy._sampled = {2886689943375252740}
    strategy.aggregate_train(1, [_reply(2886689943375252740, "A", _state(), n=20)])
    joined = [e for e in read_audit(tmp_path) if e["event"] == "site-joined"]
    assert [(e["site"], e["round"]) for e in joined] == [("A", 1)]
