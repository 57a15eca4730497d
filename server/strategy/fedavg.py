"""FedAvg that knows its sites by name.

Flower's FedAvg averages whatever replies arrive, weighted by example count, and keeps
going when every site failed. This subclass adds what a coordinator needs:

- replies are ordered by site name before averaging, so a seeded run gives the same
  global model whatever order the sites answered in (floating-point sums are not
  associative);
- replies whose status is not "ok" (a failed site, one out of privacy budget) carry no
  weights; they are recorded and left out instead of breaking the aggregation;
- per-site metrics are handed to `on_train` / `on_evaluate` observers, keyed by the
  names the sites give themselves;
- when fewer than `min_sites` sites contributed to a round, the run stops with
  `FederationStopped` naming the reason instead of carrying on with stale weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedmed.common.protocol import METRICS_KEY, SITE_KEY, SiteStatus


class FederationStopped(RuntimeError):
    """The federation cannot continue; the message says why."""


@dataclass
class SiteReply:
    """One site's answer in one round, as the coordinator records it."""

    site: str
    status: str
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


RoundObserver = Callable[[int, list[SiteReply], ArrayRecord | None], None]


def site_reply(msg: Message) -> SiteReply:
    """Read the site's name, status and metrics out of a reply (or a transport error)."""
    if msg.has_error():
        return SiteReply(f"node-{msg.metadata.src_node_id}", SiteStatus.FAILED.value,
                         f"transport-error:{msg.error.code}")
    content = msg.content
    info = content[SITE_KEY] if SITE_KEY in content.config_records else {}
    name = str(info.get("name", f"node-{msg.metadata.src_node_id}"))
    status = str(info.get("status", SiteStatus.OK.value))
    metrics = dict(content[METRICS_KEY]) if METRICS_KEY in content.metric_records else {}
    return SiteReply(name, status, str(info.get("reason", "")), metrics)


class SiteAwareFedAvg(FedAvg):
    """FedAvg over sites identified by name, with observers and a minimum quorum."""

    def __init__(
        self,
        *,
        min_sites: int,
        on_train: RoundObserver | None = None,
        on_evaluate: RoundObserver | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            min_train_nodes=min_sites,
            min_evaluate_nodes=min_sites,
            min_available_nodes=min_sites,
            **kwargs,
        )
        self.min_sites = min_sites
        self.on_train = on_train
        self.on_evaluate = on_evaluate

    def _split(self, replies: Iterable[Message]) -> tuple[list[Message], list[SiteReply]]:
        ordered = sorted(replies, key=lambda m: site_reply(m).site)
        usable = [m for m in ordered if site_reply(m).status == SiteStatus.OK.value]
        return usable, [site_reply(m) for m in ordered]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the sites that trained; stop the run when too few did."""
        usable, recorded = self._split(replies)
        arrays, metrics = super().aggregate_train(server_round, usable) if usable else (None, None)
        if self.on_train is not None:
            self.on_train(server_round, recorded, arrays)
        if arrays is None or len(usable) < self.min_sites:
            reasons = ", ".join(f"{r.site}: {r.status}" + (f" ({r.reason})" if r.reason else "")
                                for r in recorded if r.status != SiteStatus.OK.value)
            raise FederationStopped(
                f"round {server_round}: {len(usable)} site(s) trained, the federation needs "
                f"{self.min_sites}" + (f"; {reasons}" if reasons else "; no site replied in time")
            )
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate as FedAvg does; hand per-site metrics to the observer."""
        usable, recorded = self._split(replies)
        metrics = super().aggregate_evaluate(server_round, usable) if usable else None
        if self.on_evaluate is not None:
            self.on_evaluate(server_round, recorded, None)
        return metrics
