"""Strategies by the name a federation's config gives them."""

from __future__ import annotations

from fedmed.common.federation import FederationConfig
from fedmed.server.strategy.fedadam import SiteAwareFedAdam
from fedmed.server.strategy.fedavg import SiteAwareFedAvg


def build_strategy(config: FederationConfig, **observers) -> SiteAwareFedAvg:
    """`fedavg` (default) or `fedadam`, with the run's quorum and the given observers."""
    if config.strategy == "fedadam":
        return SiteAwareFedAdam(min_sites=config.min_sites, server_lr=config.server_lr, **observers)
    return SiteAwareFedAvg(min_sites=config.min_sites, **observers)
