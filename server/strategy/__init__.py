"""Aggregation strategies: one per module, each a small override of Flower's."""

from fedmed.server.strategy.fedavg import FederationStopped, SiteAwareFedAvg

__all__ = ["FederationStopped", "SiteAwareFedAvg"]
