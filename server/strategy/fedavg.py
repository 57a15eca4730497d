"""FedAvg that knows its sites by name.

Flower's FedAvg averages whatever replies arrive, weighted by example count, and keeps
going when every site failed. This subclass adds what a coordinator needs:

- replies are ordered by site name before averaging, so a seeded run gives the same
  global model whatever order the sites answered in (floating-point sums are not
  associative);
- replies whose status is not "ok" (a failed site, one out of privacy budget, one that
  declined the run's app) carry no weights; they are recorded and left out instead of
  breaking the aggregation;
- every update is checked before it is averaged (`update_checks`): a non-finite,
  misshapen or implausibly large one is left out of that round and its site named; so
  is a reply whose example count is not a plausible whole number (`reply_checks`), in
  training and in evaluation; the average itself is checked finite before it is kept;
- per-site metrics are handed to `on_train` / `on_evaluate` observers, keyed by the
  names the sites give themselves, and audit events (sites joining and leaving, who
  contributed to each round, rejected updates) to `on_event`;
- when fewer than `min_sites` sites contributed to a round, the run stops with
  `FederationStopped` naming the reason instead of carrying on with stale weights;
- with enrolled sites, the first round of a run waits up to `join_timeout` seconds for
  every enrolled site to connect: the quorum alone would start it as soon as
  `min_sites` are there and leave a site that started a few seconds late out of it;
- `first_round` lets a resumed run carry on numbering where the interrupted one stopped,
  so sites see the same round numbers (and derive the same seeds) as without the break.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedmed.common.metrics import aggregate_sites, evaluation_round
from fedmed.common.packed_arrays import PackingError, has_weights, put, unpack_in_place
from fedmed.common.protocol import ARRAYS_KEY, METRICS_KEY, SITE_KEY, WEIGHT_KEY, SiteStatus
from fedmed.common.reply_fields import ReplyFieldsError, unfold
from fedmed.server.strategy.reply_checks import DeclaredCounts, count_problem
from fedmed.server.strategy.update_checks import UpdateLimits, check_update, non_finite

# The ConfigRecord Flower's FedAvg sends with the weights (`configure_train`/`_evaluate`).
CONFIG_KEY = "config"
REJECTED = "rejected"  # status the coordinator gives an update it refused to average
# How often the first round looks for sites still to connect: the round starts within
# this of the last one joining (Flower's own wait for the quorum looks once a second).
JOIN_CHECK_S = 0.2


def _packed(messages: list[Message]) -> list[Message]:
    """The messages with their weights packed (`packed_arrays`: inline in their `config`
    record when the model fits in one object). Flower's FedAvg gives every message the
    same RecordDict, so the model is packed once."""
    done: set[int] = set()
    for msg in messages:
        content = msg.content
        if id(content) in done or ARRAYS_KEY not in content.array_records:
            continue
        done.add(id(content))
        if CONFIG_KEY not in content.config_records:
            content[CONFIG_KEY] = ConfigRecord()
        put(content, ARRAYS_KEY, content[ARRAYS_KEY], carrier=CONFIG_KEY)
    return messages


class FederationStopped(RuntimeError):
    """The federation cannot continue; the message says why."""


@dataclass
class SiteReply:
    """One site's answer in one round, as the coordinator records it."""

    site: str
    status: str
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


# Training: (round, replies, the new global weights or None); evaluation: (round, replies,
# the pooled metrics of `fedmed.common.metrics.evaluation_round` or None).
RoundObserver = Callable[[int, list[SiteReply], Any], None]
EventObserver = Callable[..., Any]


def site_reply(msg: Message, node_names: dict[int, str] | None = None,
               node_id: int | None = None) -> SiteReply:
    """Read the site's name, status and metrics out of a reply (or a transport error).

    A reply without a name (a transport error, a site that died) is attributed through
    `node_names`, the coordinator's own map of node IDs to enrolled site names; `node_id`
    overrides the reply's sender, which for an error the SuperLink generated is the
    SuperLink itself."""
    node_id = msg.metadata.src_node_id if node_id is None else node_id
    fallback = (node_names or {}).get(node_id, f"node-{node_id}")
    if msg.has_error():
        return SiteReply(fallback, SiteStatus.FAILED.value, f"transport-error:{msg.error.code}")
    content = msg.content
    info = content[SITE_KEY] if SITE_KEY in content.config_records else {}
    name = str(info.get("name", fallback))
    try:
        unfold(content)  # the metrics travel as fields of the status record (`reply_fields`)
    except ReplyFieldsError as exc:
        return SiteReply(name, SiteStatus.FAILED.value, str(exc))
    status = str(info.get("status", SiteStatus.OK.value))
    metrics = dict(content[METRICS_KEY]) if METRICS_KEY in content.metric_records else {}
    return SiteReply(name, status, str(info.get("reason", "")), metrics)


def _describe(reply: SiteReply) -> str:
    return reply.status + (f" ({reply.reason})" if reply.reason else "")


class SiteAwareFedAvg(FedAvg):
    """FedAvg over sites identified by name, with update checks, observers and a quorum."""

    def __init__(
        self,
        *,
        min_sites: int,
        on_train: RoundObserver | None = None,
        on_evaluate: RoundObserver | None = None,
        on_event: EventObserver | None = None,
        limits: UpdateLimits | None = None,
        first_round: int = 1,
        node_names: dict[int, str] | None = None,
        names_source: Callable[[], dict[int, str]] | None = None,
        join_timeout: float = 0.0,
        threshold_pool_from: int = 1,
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
        self.on_event = on_event
        self.limits = limits or UpdateLimits()
        self.round_offset = first_round - 1
        # Names the coordinator enrolled (authoritative) and names sites gave themselves.
        self.enrolled: dict[int, str] = dict(node_names or {})
        self.node_names: dict[int, str] = dict(self.enrolled)
        # Re-read before each round, so a site enrolled mid-run is named from its first round.
        self.names_source = names_source
        self.join_timeout = join_timeout
        self._joined = False
        self._present: set[int] = set()
        self._unnamed: dict[int, int] = {}  # node ID -> round it joined, until a reply names it
        self._global: ArrayRecord | None = None
        self._sampled: set[int] = set()
        self._sent: list[Message] = []
        # Example counts each site declared this run, for training and for evaluation.
        # The pooled evaluation histograms of the rounds from `threshold_pool_from` on,
        # which the operating threshold is chosen on (`threshold_pool_start`).
        self.threshold_pool_from = threshold_pool_from
        self.threshold_pool: list[np.ndarray] = []
        train = DeclaredCounts(self.limits.max_example_ratio)
        self.counts = {"train": train,
                       "evaluate": DeclaredCounts(self.limits.max_example_ratio, holds_to_declaration=False,
                                                  scale=train)}

    # --- state a resumed run needs ------------------------------------------------
    # Server-side optimiser moments of adaptive subclasses (Flower's FedOpt family).
    _MOMENTS = ("m_t", "v_t")

    def state(self) -> dict[str, Any]:
        """What the strategy knows beyond the weights; stored in every checkpoint.

        Arrays are stored as tensors (`fedmed.common.torch_file`), so checkpoints still
        load with torch's `weights_only=True`."""
        moments = {name: {k: np.array(v) for k, v in getattr(self, name).items()}
                   for name in self._MOMENTS if getattr(self, name, None)}
        return {"node_names": {str(k): v for k, v in self.node_names.items()},
                "limits": self.limits.to_dict(), "moments": moments,
                "declared_examples": {stage: c.to_dict() for stage, c in self.counts.items()},
                "threshold_pool": [h.tolist() for h in self.threshold_pool]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.threshold_pool = [np.asarray(h, dtype=np.float64) for h in state.get("threshold_pool") or ()]
        for stage, declared in (state.get("declared_examples") or {}).items():
            if stage in self.counts:
                self.counts[stage].load(declared)
        for node_id, name in (state.get("node_names") or {}).items():
            self.node_names.setdefault(int(node_id), str(name))
        for name, values in (state.get("moments") or {}).items():
            if name in self._MOMENTS:
                setattr(self, name, {k: np.asarray(v) for k, v in values.items()})

    # --- helpers ---------------------------------------------------------------------
    def _event(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, **fields)

    def _name(self, node_id: int) -> str:
        return self.node_names.get(node_id, f"node-{node_id}")

    def _track_nodes(self, grid: Grid, server_round: int) -> None:
        """Record sites joining and leaving between rounds (as the SuperLink sees them)."""
        now = set(grid.get_node_ids())
        for node_id in sorted(now - self._present):
            if node_id in self.node_names:
                self._event("site-joined", site=self._name(node_id), node_id=node_id, round=server_round)
            else:  # not enrolled by name (--insecure): announced once its first reply names it
                self._unnamed[node_id] = server_round
        for node_id in sorted(self._present - now):
            self._unnamed.pop(node_id, None)
            self._event("site-left", site=self.node_names.get(node_id, "(unnamed)"), node_id=node_id,
                        round=server_round)
        self._present = now

    def _wait_for_enrolled(self, grid: Grid, server_round: int) -> None:
        """Before the run's first round, give every enrolled site up to `join_timeout`
        seconds to connect; after that the round starts with those present (the quorum
        still applies)."""
        if self._joined:
            return
        self._joined = True
        if self.join_timeout <= 0 or not self.enrolled:
            while len(list(grid.get_node_ids())) < self.min_sites:
                time.sleep(JOIN_CHECK_S)
            return
        expected = set(self.enrolled)
        deadline = time.monotonic() + self.join_timeout
        told = False
        while time.monotonic() < deadline:
            missing = expected - set(grid.get_node_ids())
            if not missing:
                return
            if not told:
                names = ", ".join(sorted(self._name(n) for n in missing))
                print(f"[fedmed coordinator] round {server_round}: waiting up to {self.join_timeout:.0f} s "
                      f"for enrolled site(s) {names}", file=sys.stderr, flush=True)
                told = True
            time.sleep(JOIN_CHECK_S)

    def _remember(self, messages: list[Message]) -> list[Message]:
        """Note where each message went; the grid sets their IDs as it sends them."""
        self._sent = messages
        return messages

    def _origin(self, reply: Message) -> int:
        """The site a reply answers for: the destination of the message it replies to
        (a SuperLink-made error for a vanished site comes from the SuperLink's ID)."""
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        return sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def _read(self, replies: Iterable[Message]) -> list[tuple[Message, SiteReply]]:
        """Each reply with the site it came from, ordered by site name.

        An enrolled site's name is the one it was enrolled under, whatever its reply
        claims, so one site cannot pass its update off as another's."""
        read = []
        for msg in replies:
            node_id = self._origin(msg)
            reply = site_reply(msg, self.node_names, node_id)
            enrolled = self.enrolled.get(node_id)
            if enrolled is not None and reply.site != enrolled:
                self._event("site-name-mismatch", node_id=node_id, site=enrolled, claimed=reply.site)
                reply.site = enrolled
            elif not msg.has_error() and not reply.site.startswith("node-"):
                self.node_names.setdefault(node_id, reply.site)
                if node_id in self._unnamed:
                    self._event("site-joined", site=self.node_names[node_id], node_id=node_id,
                                round=self._unnamed.pop(node_id))
            read.append((msg, reply))
        read.sort(key=lambda pair: pair[1].site)
        return read

    def _screen_counts(self, server_round: int, stage: str, read: list[tuple[Message | None, SiteReply]]) -> None:
        """Mark rejected the "ok" replies whose example count fails `reply_checks`; the
        untrusted count is dropped so that nothing downstream uses it."""
        ok = [reply for _, reply in read if reply.status == SiteStatus.OK.value
              and not (stage == "evaluate" and _reports_nothing(reply.metrics))]
        for _, reply in read:
            if reply.status != SiteStatus.OK.value and count_problem(reply.metrics.get(WEIGHT_KEY)):
                reply.metrics.pop(WEIGHT_KEY, None)  # a declined or failed site's count means nothing
        refused = self.counts[stage].screen({r.site: r.metrics.get(WEIGHT_KEY) for r in ok})
        for reply in ok:
            if (problem := refused.get(reply.site)) is None:
                continue
            reply.metrics.pop(WEIGHT_KEY, None)
            if stage == "train":
                self._reject(server_round, reply, problem)
            else:
                reply.status, reply.reason = REJECTED, f"reply-rejected:{problem}"
                print(f"[fedmed coordinator] round {server_round}: evaluation from site {reply.site} "
                      f"rejected ({problem}); left out of this round", file=sys.stderr, flush=True)
                self._event("reply-rejected", round=server_round, site=reply.site, stage=stage, reason=problem)

    def _reject(self, server_round: int, reply: SiteReply, problem: str) -> None:
        reply.status, reply.reason = REJECTED, f"update-rejected:{problem}"
        print(f"[fedmed coordinator] round {server_round}: update from site {reply.site} "
              f"rejected ({problem}); left out of this round", file=sys.stderr, flush=True)
        self._event("update-rejected", round=server_round, site=reply.site, reason=problem)

    def _screen(self, server_round: int, read: list[tuple[Message | None, SiteReply]]) -> list[Message]:
        """The replies whose updates pass the checks; the others are marked rejected."""
        self._screen_counts(server_round, "train", read)
        accepted = []
        for msg, reply in read:
            if reply.status != SiteStatus.OK.value:
                continue
            if not has_weights(msg.content, ARRAYS_KEY, carrier=SITE_KEY):
                problem = "no-weights"
            else:
                try:
                    unpack_in_place(msg.content, ARRAYS_KEY, carrier=SITE_KEY)
                    problem = None
                except PackingError as exc:
                    problem = str(exc)
                if problem is None and self._global is not None:
                    problem = check_update(msg.content[ARRAYS_KEY], self._global, self.limits)
            if problem is None:
                accepted.append(msg)
                continue
            self._reject(server_round, reply, problem)
        return accepted

    # --- Flower hooks -----------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        actual = server_round + self.round_offset
        if self.names_source is not None:
            self.enrolled.update(self.names_source())
            self.node_names.update(self.enrolled)
        self._wait_for_enrolled(grid, actual)
        self._global = arrays
        # Flower waits inside configure_train until enough sites are connected, so the
        # sites present are known only after it.
        messages = _packed(self._remember(list(super().configure_train(actual, arrays, config, grid))))
        self._sampled = {m.metadata.dst_node_id for m in messages}
        self._track_nodes(grid, actual)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return _packed(self._remember(list(super().configure_evaluate(server_round + self.round_offset,
                                                                      arrays, config, grid))))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the sites whose updates passed the checks; stop when too few did."""
        server_round += self.round_offset
        replies = list(replies)
        read = self._read(replies)
        # A site that never answered (died, cut off, too slow) is recorded too, by name.
        answered = {self._origin(m) for m in replies}
        read += [(None, SiteReply(self._name(node_id), SiteStatus.FAILED.value, "no-reply-in-time"))
                 for node_id in sorted(self._sampled - answered)]
        usable = self._screen(server_round, read)
        recorded = [reply for _, reply in read]
        arrays, metrics = super().aggregate_train(server_round, usable) if usable else (None, None)
        if arrays is not None and (bad := non_finite(arrays)) is not None:
            # Every input passed the checks, so this should not happen; a non-finite
            # model must still never be saved or sent to the sites.
            contributors = ", ".join(r.site for r in recorded if r.status == SiteStatus.OK.value)
            self._event("round-failed", round=server_round, reason=f"aggregate-non-finite:{bad}",
                        contributors=contributors.split(", "))
            raise FederationStopped(f"round {server_round}: the average of {contributors} is not finite "
                                    f"({bad}); the model was not saved")
        left_out = {r.site: _describe(r) for r in recorded if r.status != SiteStatus.OK.value}
        for reply in recorded:
            if reply.status == SiteStatus.DECLINED.value:
                self._event("site-declined", round=server_round, site=reply.site, reason=reply.reason)
        self._event("round-completed" if arrays is not None and len(usable) >= self.min_sites
                    else "round-failed", round=server_round,
                    contributors=[r.site for r in recorded if r.status == SiteStatus.OK.value],
                    left_out=left_out)
        if self.on_train is not None:
            self.on_train(server_round, recorded, arrays)
        if arrays is None or len(usable) < self.min_sites:
            reasons = ", ".join(f"{site}: {why}" for site, why in left_out.items())
            raise FederationStopped(
                f"round {server_round}: {len(usable)} site(s) trained, the federation needs "
                f"{self.min_sites}" + (f"; {reasons}" if reasons else "; no site replied in time")
            )
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Derive every site's metrics from its score histograms at the operating
        threshold chosen on the pooled histograms of this round and, in the run's second
        half, of the earlier rounds there (`fedmed.common.metrics.evaluation_round`,
        `threshold_pool_start`); hand them and the pooled metrics to the observer; return
        the pooled metrics (or, without histograms, the example-weighted means)."""
        server_round += self.round_offset
        read = self._read(replies)
        self._screen_counts(server_round, "evaluate", read)
        usable = [m for m, r in read if r.status == SiteStatus.OK.value]
        recorded = [reply for _, reply in read]
        ok = {r.site: r.metrics for r in recorded if r.status == SiteStatus.OK.value}
        pooling = server_round >= self.threshold_pool_from
        per_site, pooled = evaluation_round(ok, self.threshold_pool if pooling else ())
        if pooled is not None and pooling:
            self.threshold_pool.append(pooled["threshold_histograms"])
        for reply in recorded:
            if reply.site in per_site:
                reply.metrics.update(per_site[reply.site])
        if self.on_evaluate is not None:
            self.on_evaluate(server_round, recorded, pooled)
        if pooled is not None:
            return MetricRecord({k: float(v) for k, v in pooled.items() if isinstance(v, (int, float))})
        scalars = {site: {"num_examples": m.get("num-examples", 0),
                          **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
                   for site, m in ok.items()}
        return MetricRecord(aggregate_sites(scalars)) if scalars else None


def _reports_nothing(metrics: dict[str, Any]) -> bool:
    """An evaluation a site withheld (a DP task with more than two classes, an empty
    held-out split): count 0 and no finite value, so nothing in it can weigh anything."""
    return metrics.get(WEIGHT_KEY) == 0 and not any(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for k, v in metrics.items() if k not in (WEIGHT_KEY, "dp_metrics", "eval_seconds"))
