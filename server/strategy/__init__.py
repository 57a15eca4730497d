"""Aggregation strategies: one per module, each a small override of Flower's."""

from importlib import import_module

# Loaded on first use (PEP 562), so that `update_checks`, whose limits `fedmed server start`
# reads, does not pull Flower's ServerApp into the coordinator's launcher through this package.
_HOMES = {"FederationStopped": "fedavg", "SiteAwareFedAvg": "fedavg"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
