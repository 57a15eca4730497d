from fedmed.common.lazy_names import lazy_names

# Loaded on first use (PEP 562), so that `update_checks`, whose limits `fedmed server start`
# reads, does not pull Flower's ServerApp into the coordinator's launcher through this package.
_HOMES = {"FederationStopped": "fedavg", "SiteAwareFedAvg": "fedavg"}

__all__ = sorted(_HOMES)

__getattr__ = lazy_names(__name__, _HOMES, globals())
