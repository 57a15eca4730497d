"""FedAvgM: federated averaging with server-side momentum (Hsu, Qi & Brown 2019,
"Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", §3).

The sites' weighted average minus the global model is a pseudo-gradient; the coordinator
keeps a momentum buffer of them, v ← β·v + Δ, and moves the model by η·v. With DP-SGD each
round's Δ carries fresh, independent noise while the useful direction changes slowly, so
the buffer averages the noise of about 1/(1 − β) rounds away and keeps the direction: it is
post-processing of what the sites sent, so it costs no privacy. All of SiteAwareFedAvg's
behaviour comes first in the method resolution order; its call to
`super().aggregate_train` lands in Flower's FedAvgM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAvgM

from fedmed.server.strategy.fedavg import SiteAwareFedAvg


class SiteAwareFedAvgM(SiteAwareFedAvg, FedAvgM):
    """FedAvgM over sites identified by name; momentum β and server step η as configured."""

    def __init__(self, *, min_sites: int, server_momentum: float = 0.9, server_lr: float = 1.0,
                 **kwargs) -> None:
        super().__init__(min_sites=min_sites, server_learning_rate=server_lr,
                         server_momentum=server_momentum, **kwargs)

    def state(self) -> dict[str, Any]:
        """SiteAwareFedAvg's state plus the momentum buffer, so a resumed run keeps it."""
        state = super().state()
        if self.momentum_vector is not None:
            state["momentum"] = [np.array(v) for v in self.momentum_vector]
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if state.get("momentum") is not None:
            self.momentum_vector = [np.asarray(v) for v in state["momentum"]]
