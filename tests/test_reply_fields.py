"""A site's metrics travel as fields of its status record and come back as a MetricRecord."""

from __future__ import annotations

import math

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedmed.common.protocol import METRICS_KEY, SITE_KEY
from fedmed.common.reply_fields import METRIC_PREFIX, ReplyFieldsError, fold, reply_metrics, unfold


def _reply(**metrics) -> RecordDict:
    content = RecordDict({SITE_KEY: ConfigRecord({"name": "A", "status": "ok", "reason": ""})})
    fold(content, MetricRecord(metrics))
    return content


def test_metrics_fold_into_the_status_record_and_unfold_exactly():
    content = _reply(**{"num-examples": 12, "auc": 0.75, "loss": math.nan, "hist-0": [1.5, 2.0]})
    assert list(content.config_records) == [SITE_KEY] and not content.metric_records  # one record on the wire
    assert reply_metrics(content)["num-examples"] == 12
    unfold(content)
    assert dict(content[SITE_KEY]) == {"name": "A", "status": "ok", "reason": ""}
    metrics = dict(content[METRICS_KEY])
    assert metrics["num-examples"] == 12 and metrics["hist-0"] == [1.5, 2.0] and math.isnan(metrics["loss"])


def test_a_reply_without_folded_metrics_is_left_as_it_is():
    content = RecordDict({SITE_KEY: ConfigRecord({"name": "A", "status": "failed", "reason": "x"})})
    unfold(content)
    assert not content.metric_records


@pytest.mark.parametrize("value", ["text", True, [True, False], b"bytes", ["a", "b"]])
def test_a_folded_value_a_metric_record_cannot_hold_is_refused(value):
    content = _reply(**{"num-examples": 3})
    content[SITE_KEY][METRIC_PREFIX + "bad"] = value
    with pytest.raises(ReplyFieldsError, match="reply-metrics-malformed"):
        unfold(content)


def test_metrics_both_folded_and_as_a_record_are_refused():
    content = _reply(**{"num-examples": 3})
    content[METRICS_KEY] = MetricRecord({"num-examples": 5})
    with pytest.raises(ReplyFieldsError, match="reply-metrics-twice"):
        unfold(content)


def test_the_coordinator_records_a_malformed_reply_as_a_failure_of_that_site(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from fedmed.server.strategy.fedavg import site_reply

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)

    content = _reply(**{"num-examples": 3})
    content[SITE_KEY][METRIC_PREFIX + "auc"] = "0.99"
    reply = site_reply(Message(content=content, dst_node_id=1, message_type="evaluate"), node_id=7)
    assert (reply.site, reply.status, reply.reason) == ("A", "failed", "reply-metrics-malformed")
