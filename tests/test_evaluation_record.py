"""The coordinator's record of an evaluation round: metrics derived from the sites' score
histograms, the pooled operating threshold, and the threshold in the checkpoints."""

from __future__ import annotations

import json

import pytest
from flwr.app import ArrayRecord

from fedmed.common.checkpoint import load_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.metrics import evaluation_round, histogram_key
from fedmed.common.models import build_model
from fedmed.common.settings import ImageSettings
from fedmed.server.outputs import FINAL_MODEL, METRICS_FILE, RunRecorder
from fedmed.server.strategy.fedavg import SiteReply
from test_update_checks import _as_if_in_a_run  # noqa: F401 — a fixture


def _histograms(shift: int) -> dict:
    neg, pos = [0.0] * 20, [0.0] * 20
    neg[3 + shift], neg[6] = 30.0, 10.0
    pos[12], pos[16 - shift] = 8.0, 22.0
    return {histogram_key(0): neg, histogram_key(1): pos}


def test_round_record_has_the_contract_fields_and_checkpoints_carry_the_threshold(tmp_path):
    config = FederationConfig(rounds=1, image=ImageSettings(size=28))
    recorder = RunRecorder(tmp_path, config)
    arrays = ArrayRecord(build_model(config.model, 2, 28).state_dict())
    recorder.on_train(1, [SiteReply("A", "ok", "", {"num-examples": 64, "epsilon": 1.2, "dp": 1})], arrays)
    replies = [SiteReply(name, "ok", "", {"num-examples": 70, "accuracy": 0.1, "eval_seconds": 0.2,
                                          "dp_metrics": 1, "epsilon": 1.3, **_histograms(shift)})
               for name, shift in (("A", 0), ("B", 1))]
    per_site, pooled = evaluation_round({r.site: r.metrics for r in replies})
    for reply in replies:  # what SiteAwareFedAvg.aggregate_evaluate hands the observer
        reply.metrics.update(per_site[reply.site])
    recorder.on_evaluate(1, replies, pooled)
    recorder.finish("completed")

    (row,) = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    site = row["sites"]["A"]
    assert site["accuracy"] != 0.1  # derived by the coordinator, not the site's own number
    assert site["epsilon"] == pytest.approx(1.3) and site["dp_metrics"] is True
    for key in ("balanced_accuracy", "confusion", "roc", "auc", "sensitivity", "specificity"):
        assert key in site, key
    assert site["roc"]["fpr"][0] == 0 and site["roc"]["fpr"][-1] == 1
    aggregate = row["aggregate"]
    assert aggregate["threshold"] == pytest.approx(pooled["threshold"])
    assert aggregate["balanced_accuracy"] == pytest.approx(1.0)
    assert aggregate["confusion"] == [[80.0, 0.0], [0.0, 60.0]]
    assert load_checkpoint(tmp_path / "checkpoints" / "round-001.pt")["threshold"] == pytest.approx(
        pooled["threshold"])
    assert load_checkpoint(tmp_path / FINAL_MODEL)["threshold"] == pytest.approx(pooled["threshold"])


def test_a_site_with_exact_metrics_keeps_its_own_auc_and_loss():
    # Exact numbers (no DP on the metrics) are finer than their histogram; the threshold's
    # metrics are still the pooled threshold's.
    exact = {"num-examples": 70, "auc": 0.987, "loss": 0.21, "accuracy": 0.1, "dp_metrics": 0, **_histograms(0)}
    noised = {"num-examples": 70, "auc": 0.5, "loss": 9.0, "dp_metrics": 1, **_histograms(1)}
    per_site, pooled = evaluation_round({"A": exact, "B": noised})
    assert per_site["A"]["auc"] == 0.987 and per_site["A"]["loss"] == 0.21
    assert per_site["A"]["accuracy"] != 0.1 and per_site["A"]["threshold"] == pooled["threshold"]
    assert per_site["B"]["auc"] != 0.5 and per_site["B"]["loss"] != 9.0


def _evaluation(node_id: int, site: str, hist: dict):
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from fedmed.common.protocol import METRICS_KEY, SITE_KEY

    sent = Message(content=RecordDict(), dst_node_id=node_id, message_type="evaluate")
    return Message(content=RecordDict({
        METRICS_KEY: MetricRecord({"num-examples": 70, "dp_metrics": 1, **hist}),
        SITE_KEY: ConfigRecord({"name": site, "status": "ok", "reason": ""}),
    }), reply_to=sent)


def test_the_threshold_pools_the_second_half_of_the_runs_evaluations(_as_if_in_a_run):
    import numpy as np

    from fedmed.common.metrics import choose_threshold, read_histograms, threshold_pool_start
    from fedmed.server.strategy import SiteAwareFedAvg

    assert [threshold_pool_start(r) for r in (1, 2, 3, 15)] == [1, 2, 2, 8]
    seen = {}
    strategy = SiteAwareFedAvg(min_sites=1, threshold_pool_from=2,
                               on_evaluate=lambda rnd, replies, pooled: seen.__setitem__(rnd, pooled))
    def overlapping(centre: int) -> dict:
        # Classes overlapping around bin `centre`: the equal-error edge sits there.
        neg = [float(max(0, 12 - 2 * abs(i - (centre - 2)))) for i in range(20)]
        pos = [float(max(0, 12 - 2 * abs(i - (centre + 2)))) for i in range(20)]
        return {histogram_key(0): neg, histogram_key(1): pos}

    centres = {1: 10, 2: 7, 3: 13}   # a noisy round moves its own equal-error edge
    for rnd, centre in centres.items():
        strategy.aggregate_evaluate(rnd, [_evaluation(1, "A", overlapping(centre))])
    own = {rnd: read_histograms(overlapping(centre)) for rnd, centre in centres.items()}
    assert seen[1]["threshold"] == choose_threshold(own[1])           # before the pool: its own
    assert seen[3]["threshold"] == choose_threshold(own[2] + own[3])  # rounds 2 and 3 together
    assert seen[3]["threshold"] != choose_threshold(own[3])
    assert len(strategy.threshold_pool) == 2
    # A resumed run's strategy pools on from where the checkpoint's state left it.
    resumed = SiteAwareFedAvg(min_sites=1, threshold_pool_from=2)
    resumed.load_state(strategy.state())
    np.testing.assert_array_equal(resumed.threshold_pool[1], strategy.threshold_pool[1])


def test_the_threshold_is_chosen_on_the_sites_whose_histograms_hold_more_signal_than_noise():
    import numpy as np

    from fedmed.common.metrics import choose_threshold, read_histograms
    from fedmed.common.protocol import RELEASE_NOISE_KEY

    big = {"num-examples": 140, "dp_metrics": 1, RELEASE_NOISE_KEY: 2.0, **_histograms(0)}
    # A small DP site: a few images under noise of σ = 18 per bin (about 114 images' worth).
    rng = np.random.default_rng(0)
    noise = {histogram_key(k): list(np.array([0.0] * 20) + rng.normal(0, 18, 20)) for k in (0, 1)}
    small = {"num-examples": 5, "dp_metrics": 1, RELEASE_NOISE_KEY: 18.0, **noise}
    _, pooled = evaluation_round({"A": big, "B": small})
    assert pooled["threshold"] == choose_threshold(read_histograms(big))
    np.testing.assert_array_equal(pooled["threshold_histograms"], read_histograms(big))
    assert pooled["num_examples"] > read_histograms(big).sum()  # reporting still pools both
    # Without σ (exact histograms, or an older site) every site counts.
    exact = {k: v for k, v in small.items() if k != RELEASE_NOISE_KEY}
    _, both = evaluation_round({"A": big, "B": exact})
    np.testing.assert_array_equal(both["threshold_histograms"], read_histograms(big) + read_histograms(exact))
