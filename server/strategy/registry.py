"""Strategies by the name a federation's config gives them."""

from __future__ import annotations

from fedmed.common.federation import FederationConfig
from fedmed.common.metrics import threshold_pool_start
from fedmed.server.strategy.fedadam import SiteAwareFedAdam
from fedmed.server.strategy.fedavg import SiteAwareFedAvg
from fedmed.server.strategy.fedavgm import SiteAwareFedAvgM

FEDAVGM_SERVER_LR = 1.0
"""FedAvgM's server step η (Hsu et al. 2019 use 1 with β = 0.9)."""


def build_strategy(config: FederationConfig, **observers) -> SiteAwareFedAvg:
    """`fedavg` (default), `fedavgm` or `fedadam`, with the run's quorum, the rounds whose
    evaluations the operating threshold pools, and the given observers; each reads the
    server settings `STRATEGY_SETTINGS` names for it."""
    observers.setdefault("threshold_pool_from", threshold_pool_start(config.rounds))
    if config.strategy == "fedavgm":
        return SiteAwareFedAvgM(min_sites=config.min_sites, server_momentum=config.server_momentum,
                                server_lr=FEDAVGM_SERVER_LR, **observers)
    if config.strategy == "fedadam":
        return SiteAwareFedAdam(min_sites=config.min_sites, server_lr=config.server_lr, **observers)
    return SiteAwareFedAvg(min_sites=config.min_sites, **observers)
