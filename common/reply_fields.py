"""A site's reply as one record on the wire: its metrics folded into its status record.

Flower's strategies read a reply's metrics from a MetricRecord, but a deployed message
costs one Fleet API request per record each way (the SuperLink handles each in Python),
and every reply already carries the site's status record (`protocol.SITE_KEY`, a
ConfigRecord). So a site sends each metric as a field `METRIC_PREFIX + name` of that
record (`fold`) and the coordinator, before anything reads the reply, moves them back
into a MetricRecord under `protocol.METRICS_KEY` (`unfold`): one object fewer per reply.
`unfold` is the only reader of what a site sends here and refuses anything a
MetricRecord could not hold (`ReplyFieldsError`, a fixed code).
"""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict

from fedmed.common.protocol import METRICS_KEY, SITE_KEY

METRIC_PREFIX = "metric:"


class ReplyFieldsError(ValueError):
    """A reply whose folded metrics a MetricRecord cannot hold; the text is a fixed code."""


def fold(content: RecordDict, metrics: MetricRecord) -> None:
    """Store `metrics` (already checked by MetricRecord) as fields of `content[SITE_KEY]`."""
    fields = content[SITE_KEY]
    for name, value in metrics.items():
        fields[METRIC_PREFIX + name] = value


def folded(content: RecordDict) -> dict:
    """The metrics folded into `content`'s status record, by name (empty when none are)."""
    if SITE_KEY not in content.config_records:
        return {}
    return {name[len(METRIC_PREFIX):]: value for name, value in content[SITE_KEY].items()
            if name.startswith(METRIC_PREFIX)}


def unfold(content: RecordDict) -> None:
    """Move the folded metrics into a MetricRecord under `METRICS_KEY` (a reply that
    has none is left as it is)."""
    metrics = folded(content)
    if not metrics:
        return
    if METRICS_KEY in content.metric_records:
        raise ReplyFieldsError("reply-metrics-twice")  # which would the coordinator mean?
    try:
        record = MetricRecord(metrics)
    except (TypeError, ValueError):
        raise ReplyFieldsError("reply-metrics-malformed") from None
    fields = content[SITE_KEY]
    for name in metrics:
        del fields[METRIC_PREFIX + name]
    content[METRICS_KEY] = record


def reply_metrics(content: RecordDict) -> dict:
    """A reply's metrics, folded or in a MetricRecord (for readers on the site's side)."""
    if METRICS_KEY in content.metric_records:
        return dict(content[METRICS_KEY])
    return folded(content)
