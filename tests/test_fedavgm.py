"""FedAvgM (`fedmed.server.strategy.fedavgm`): chosen by name, and its momentum buffer
survives a checkpoint, so a resumed run keeps its server-side momentum."""

from __future__ import annotations

import numpy as np

from fedmed.common.federation import FederationConfig
from fedmed.server.strategy.fedavgm import SiteAwareFedAvgM
from fedmed.server.strategy.registry import build_strategy


def test_the_registry_builds_fedavgm_with_the_configured_momentum():
    strategy = build_strategy(FederationConfig(strategy="fedavgm", server_momentum=0.8, min_sites=2))
    assert isinstance(strategy, SiteAwareFedAvgM)
    assert strategy.server_momentum == 0.8 and strategy.server_learning_rate == 1.0
    assert strategy.min_sites == 2


def test_the_momentum_buffer_round_trips_through_the_strategy_state():
    strategy = SiteAwareFedAvgM(min_sites=1)
    assert "momentum" not in strategy.state()
    strategy.momentum_vector = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, dtype=np.float32)]
    resumed = SiteAwareFedAvgM(min_sites=1)
    resumed.load_state(strategy.state())
    assert len(resumed.momentum_vector) == 2
    for a, b in zip(strategy.momentum_vector, resumed.momentum_vector):
        np.testing.assert_array_equal(a, b)
        assert b.dtype == np.float32
