"""Update validation at the coordinator: bad updates are left out, named and audited."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedmed.common.protocol import ARRAYS_KEY, METRICS_KEY, SITE_KEY
from fedmed.server.audit import AuditLog, read_audit, verify_chain
from fedmed.server.strategy import FederationStopped, SiteAwareFedAvg
from fedmed.server.strategy.update_checks import UpdateLimits, check_update


@pytest.fixture(autouse=True)
def _as_if_in_a_run():
    """Flower stamps new Messages and its logs with the current task; these tests are none."""
    from flwr.supercore.task_identity import TaskIdentity

    previous = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


def _state(scale: float = 1.0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"w": torch.randn(4, 3) * scale, "b": torch.zeros(3), "steps": torch.tensor(7)}


def _reply(node_id: int, site: str, state: dict[str, torch.Tensor], n: int = 10) -> Message:
    sent = Message(content=RecordDict(), dst_node_id=node_id, message_type="train")
    content = RecordDict({
        ARRAYS_KEY: ArrayRecord(state),
        METRICS_KEY: MetricRecord({"num-examples": n, "train_loss": 0.5}),
        SITE_KEY: ConfigRecord({"name": site, "status": "ok", "reason": ""}),
    })
    return Message(content=content, reply_to=sent)


GLOBAL = ArrayRecord(_state())
LIMITS = UpdateLimits()


def test_an_ordinary_update_passes():
    moved = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in _state().items()}
    assert check_update(ArrayRecord(moved), GLOBAL, LIMITS) is None


@pytest.mark.parametrize("change, reason", [
    (lambda s: {**s, "w": s["w"].clone().fill_(math.nan)}, "non-finite:w"),
    (lambda s: {**s, "b": torch.full((3,), math.inf)}, "non-finite:b"),
    (lambda s: {**s, "w": torch.zeros(3, 4)}, "wrong-shape:w"),
    (lambda s: {**s, "w": s["w"].double()}, "wrong-dtype:w"),
    (lambda s: {k: v for k, v in s.items() if k != "b"}, "wrong-keys:missing=1,extra=0"),
    (lambda s: {**s, "w": s["w"] * 1000}, "too-large:"),
])
def test_bad_updates_are_named(change, reason):
    problem = check_update(ArrayRecord(change(_state())), GLOBAL, LIMITS)
    assert problem is not None and problem.startswith(reason)


def test_the_size_limit_is_configurable():
    bigger = {**_state(), "w": _state()["w"] * 3}
    assert check_update(ArrayRecord(bigger), GLOBAL, UpdateLimits(max_update_ratio=10)) is None
    assert check_update(ArrayRecord(bigger), GLOBAL, UpdateLimits(max_update_ratio=1)).startswith("too-large")
    with pytest.raises(ValueError, match="--max-update-ratio"):
        UpdateLimits(max_update_ratio=0)


def test_strategy_leaves_a_nan_update_out_and_audits_it(tmp_path, capsys):
    audit = AuditLog(tmp_path)
    seen = {}
    strategy = SiteAwareFedAvg(min_sites=2, on_event=audit.record,
                               on_train=lambda r, replies, arrays: seen.update(replies=replies, arrays=arrays))
    strategy._global = GLOBAL
    good = {k: (v + 0.1 if v.is_floating_point() else v) for k, v in _state().items()}
    bad = {**_state(), "w": torch.full((4, 3), math.nan)}
    arrays, _ = strategy.aggregate_train(1, [_reply(1, "A", good), _reply(2, "B", good), _reply(3, "C", bad)])

    # The average is exactly that of A and B: C's weights did not enter it.
    np.testing.assert_allclose(arrays["w"].numpy(), good["w"].numpy(), rtol=1e-6)
    statuses = {r.site: (r.status, r.reason) for r in seen["replies"]}
    assert statuses["C"] == ("rejected", "update-rejected:non-finite:w")
    assert "update from site C rejected (non-finite:w)" in capsys.readouterr().err
    events = list(read_audit(tmp_path))
    assert [e["event"] for e in events] == ["update-rejected", "round-completed"]
    assert events[0]["site"] == "C" and events[0]["reason"] == "non-finite:w"
    assert events[1]["contributors"] == ["A", "B"] and "C" in events[1]["left_out"]
    assert verify_chain(tmp_path) is None


def test_too_few_good_updates_stop_the_run(tmp_path):
    strategy = SiteAwareFedAvg(min_sites=2, on_event=AuditLog(tmp_path).record)
    strategy._global = GLOBAL
    bad = {**_state(), "w": torch.full((4, 3), math.nan)}
    with pytest.raises(FederationStopped, match="B: rejected"):
        strategy.aggregate_train(1, [_reply(1, "A", _state()), _reply(2, "B", bad)])


def test_an_enrolled_site_cannot_claim_another_name(tmp_path):
    seen = {}
    strategy = SiteAwareFedAvg(min_sites=1, node_names={1: "A", 2: "B"},
                               on_event=AuditLog(tmp_path).record,
                               on_train=lambda r, replies, arrays: seen.update(replies=replies))
    strategy._global = GLOBAL
    strategy.aggregate_train(1, [_reply(1, "A", _state()), _reply(2, "A", _state())])
    assert sorted(r.site for r in seen["replies"]) == ["A", "B"]
    assert any(e["event"] == "site-name-mismatch" and e["claimed"] == "A" for e in read_audit(tmp_path))


def test_the_audit_chain_shows_an_edit(tmp_path):
    audit = AuditLog(tmp_path)
    for i in range(3):
        audit.record("round-completed", round=i)
    assert verify_chain(tmp_path) is None
    path = tmp_path / "audit.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1].replace('"round": 1', '"round": 9'), lines[2]]) + "\n")
    assert verify_chain(tmp_path) == 3


def test_an_error_the_superlink_made_for_a_vanished_site_is_named(tmp_path):
    """The SuperLink answers for a site that stopped heartbeating, from its own node ID."""
    from flwr.app import Error

    seen = {}
    strategy = SiteAwareFedAvg(min_sites=2, node_names={3: "C"}, on_event=AuditLog(tmp_path).record,
                               on_train=lambda r, replies, arrays: seen.update(replies=replies))
    strategy._global = GLOBAL
    sent = [Message(content=RecordDict(), dst_node_id=n, message_type="train") for n in (1, 2, 3)]
    for m in sent:
        m.metadata.__dict__["_message_id"] = m.object_id
    strategy._remember(sent)
    strategy._sampled = {1, 2, 3}
    vanished = Message(Error(code=5, reason="node unavailable"), reply_to=sent[2])
    vanished.metadata.__dict__["_src_node_id"] = 1  # what the SuperLink puts there
    good = {k: (v + 0.1 if v.is_floating_point() else v) for k, v in _state().items()}
    replies = [_reply(1, "A", good), _reply(2, "B", good), vanished]
    for reply, original in zip(replies[:2], sent[:2]):
        reply.metadata.__dict__["_reply_to_message_id"] = original.metadata.message_id
    strategy.aggregate_train(1, replies)
    assert {r.site: r.reason for r in seen["replies"]} == {"A": "", "B": "", "C": "transport-error:5"}


class _Arrivals:
    """A grid where one more site connects each time the coordinator looks."""

    def __init__(self, order):
        self.order, self.looks = list(order), 0

    def get_node_ids(self):
        self.looks += 1
        return self.order[:self.looks]


def test_the_first_round_waits_for_every_enrolled_site(monkeypatch, capsys):
    monkeypatch.setattr("time.sleep", lambda s: None)
    strategy = SiteAwareFedAvg(min_sites=1, node_names={1: "A", 2: "B", 3: "C"}, join_timeout=60)
    grid = _Arrivals([1, 2, 3])
    strategy._wait_for_enrolled(grid, 1)
    assert set(grid.get_node_ids()) >= {1, 2, 3}
    assert "waiting up to 60 s for enrolled site(s) B, C" in capsys.readouterr().err
    looks = grid.looks
    strategy._wait_for_enrolled(grid, 2)  # only before the first round
    assert grid.looks == looks


def test_the_join_wait_gives_up_after_its_timeout(monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    monkeypatch.setattr("time.sleep", lambda s: None)
    strategy = SiteAwareFedAvg(min_sites=1, node_names={1: "A", 2: "B"}, join_timeout=30)
    grid = _Arrivals([1])  # B never comes
    strategy._wait_for_enrolled(grid, 1)
    assert grid.looks < 10


def test_the_operator_sees_who_was_left_out_and_why():
    from fedmed.server import progress

    line = progress.notice({"event": "update-rejected", "round": 2, "site": "D", "reason": "non-finite:w"})
    assert line == "  ! round 2: update from site D rejected (non-finite:w); left out of this round"
    assert "site B declined (budget-exhausted)" in progress.notice(
        {"event": "site-declined", "round": 1, "site": "B", "reason": "budget-exhausted"})
    assert progress.notice({"event": "round-completed", "round": 1}) is None
