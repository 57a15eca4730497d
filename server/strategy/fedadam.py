"""FedAdam with fedmed's site handling (Reddi et al., 2021, "Adaptive Federated
Optimization", Algorithm 2).

The sites' weighted average is treated as a pseudo-gradient and applied with server-side
Adam, which copes better than plain averaging when sites' data differ (non-IID). All of
SiteAwareFedAvg's behaviour — ordering by site, leaving out failed or out-of-budget
sites, observers, the quorum — comes first in the method resolution order, and its call
to `super().aggregate_train` lands in Flower's FedAdam.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam

from fedmed.server.strategy.fedavg import SiteAwareFedAvg


class SiteAwareFedAdam(SiteAwareFedAvg, FedAdam):
    """FedAdam over sites identified by name.

    server_lr is Adam's η on the server; τ = 1e-3 is the paper's adaptivity constant.
    """

    def __init__(self, *, min_sites: int, server_lr: float = 1e-2, **kwargs) -> None:
        super().__init__(min_sites=min_sites, eta=server_lr, eta_l=server_lr, tau=1e-3, **kwargs)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """As SiteAwareFedAvg, with the global model kept in float32.

        Flower's FedAdam multiplies by a NumPy float64 step size, which silently turns the
        float32 weights into float64; sites train in float32, and the update checks
        (rightly) refuse a site update whose dtype differs from the global model's.
        """
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        state = {k: v.numpy() for k, v in arrays.items()}
        return ArrayRecord({k: Array(v.astype(np.float32) if v.dtype == np.float64 else v)
                            for k, v in state.items()}), metrics
