"""The fedmed ClientApp: what runs at a site when the coordinator sends a message.

`train` receives the global weights and the federation's config, trains locally and
replies with new weights and aggregate numbers; `evaluate` replies with metrics on the
site's held-out split. Every reply names the site and a status. Any failure is caught
here and replied as a fixed reason code: Flower would otherwise send the exception's text
to the coordinator, and exception text can quote file names or header values.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmed.client.privacy.disclosure import suppress_small_cells
from fedmed.client.site import Site, site_from_node_config
from fedmed.client.training import evaluate, make_loader, make_optimizer, pick_device, round_seed, train_local
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model
from fedmed.common.protocol import ARRAYS_KEY, FEDERATION_KEY, METRICS_KEY, SITE_KEY, WEIGHT_KEY, SiteStatus

log = logging.getLogger("fedmed.site")

SiteResolver = Callable[[Context], Site]

# Ray actors and `--isolation process` keep one Python process across messages: decoded
# data is kept here so later rounds skip even the site's disk cache. A simulation with
# more sites than actors runs several sites in one process, hence a few entries.
_DATA_MEMO: dict[tuple, object] = {}
_DATA_MEMO_SITES = 8


def _site_data(site: Site, config: FederationConfig):
    key = (site.name, str(site.state_dir), config.image, config.classes, config.val_fraction, config.seed)
    if key not in _DATA_MEMO:
        if len(_DATA_MEMO) >= _DATA_MEMO_SITES:
            _DATA_MEMO.pop(next(iter(_DATA_MEMO)))
        _DATA_MEMO[key] = site.load_data(config)
    return _DATA_MEMO[key]


def _site_record(site_name: str, status: SiteStatus, reason: str = "") -> ConfigRecord:
    return ConfigRecord({"name": site_name, "status": status.value, "reason": reason})


def _report_failure(site_name: str, stage: str, exc: BaseException) -> str:
    """Log a failure at the site without its message; return the code sent upstream.

    fedmed's own errors are written so that their text names no site data; anything else
    (pydicom, torch, OS errors) may quote a path or header value, so only its type and
    the code locations are printed.
    """
    from fedmed.client.errors import SafeError

    # A ledger refusal names only the site's own state folder, and the admin must see it.
    # (Only a DP round raises one, and it has loaded the ledger module.)
    ledger = sys.modules.get("fedmed.client.privacy.ledger")
    if isinstance(exc, (SafeError, *((ledger.LedgerError,) if ledger else ()))):
        print(f"[fedmed site {site_name}] {stage} failed: {exc}", file=sys.stderr)
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-4:]))
        print(
            f"[fedmed site {site_name}] {stage} failed: {type(exc).__name__} at {where} "
            "(message withheld: it may quote site data)",
            file=sys.stderr,
        )
    return f"{stage}-error:{type(exc).__name__}"


def _global_model(msg: Message, config: FederationConfig) -> torch.nn.Module:
    model = build_model(config.model, len(config.classes), config.image.size)
    model.load_state_dict(msg.content[ARRAYS_KEY].to_torch_state_dict())
    return model


def _train_reply(site: Site, status: SiteStatus, reason: str, metrics: dict, arrays=None) -> RecordDict:
    # Every train reply carries the same metric keys (FedAvg refuses mixed key sets);
    # undefined values are NaN.
    record = {WEIGHT_KEY: 0, "train_loss": math.nan, "train_seconds": 0.0, "steps": 0,
              "dp": 1 if site.privacy.enabled else 0, "epsilon": math.nan,
              "noise_multiplier": math.nan, "delta": math.nan}
    record.update(metrics)
    content = {METRICS_KEY: MetricRecord(record), SITE_KEY: _site_record(site.name, status, reason)}
    if arrays is not None:
        content[ARRAYS_KEY] = arrays
    return RecordDict(content)


def _train(msg: Message, context: Context, site: Site) -> Message:
    config = FederationConfig.from_json(str(msg.content["config"][FEDERATION_KEY]))
    server_round = int(msg.content["config"]["server-round"])
    data = _site_data(site, config)
    seed = round_seed(config.seed, site.name, server_round)
    torch.manual_seed(seed)
    model = _global_model(msg, config)
    device = pick_device()
    optimizer = make_optimizer(model, config)
    started = time.perf_counter()
    if not site.privacy.enabled:
        loader = make_loader(data.train_x, data.train_y, config.batch_size, seed)
        result = train_local(model, loader, optimizer, config.epochs, device)
        weights, privacy = model.cpu().state_dict(), {}
    else:
        # Opacus and the accountants are loaded by the first DP round only: a site training
        # without DP keeps them (and their memory) out of its executor.
        from fedmed.client.privacy.dp_sgd import make_private_training
        from fedmed.client.privacy.ledger import PrivacyLedger
        from fedmed.client.privacy.run_plan import decide, plan_run

        ledger = PrivacyLedger.open(site.state_dir, data.fingerprint)
        plan = plan_run(ledger, site.privacy, run=str(msg.metadata.run_id), server_round=server_round,
                        total_rounds=config.rounds, n_train=len(data.train_y),
                        batch_size=config.batch_size, epochs=config.epochs, state_dir=site.state_dir)
        decision = decide(ledger, site.privacy, plan)
        if not decision.train:
            print(f"[fedmed site {site.name}] round {server_round}: not training: {decision.reason}",
                  file=sys.stderr)
            return Message(content=_train_reply(
                site, SiteStatus(decision.status), decision.reason,
                {"epsilon": decision.spent_epsilon}), reply_to=msg)
        if server_round == 1 or plan.planned_rounds == config.rounds - server_round + 1:
            print(f"[fedmed site {site.name}] DP-SGD plan: noise multiplier {plan.noise_multiplier:.2f}, "
                  f"q={plan.sample_rate:.4f}, {plan.steps_per_round} steps/round for "
                  f"{plan.planned_rounds} round(s), budget epsilon={site.privacy.epsilon:g} "
                  f"delta={plan.delta:.0e} (already spent {decision.spent_epsilon:.3f})", file=sys.stderr)
        training = make_private_training(
            model, optimizer, data.train_x, data.train_y, config.batch_size,
            plan.noise_multiplier, site.privacy.max_grad_norm, seed, model_name=config.model)
        result = training.train(config.epochs, device)
        # The spend is recorded before the update leaves the site: a crash in between
        # over-counts, never under-counts.
        entry = ledger.append(str(msg.metadata.run_id), server_round, plan.noise_multiplier,
                              plan.sample_rate, plan.steps_per_round, plan.delta, "prv")
        weights = training.state_dict()
        privacy = {"epsilon": entry.epsilon, "noise_multiplier": plan.noise_multiplier,
                   "delta": plan.delta}
    metrics = {WEIGHT_KEY: result.num_examples, "train_loss": result.loss,
               "train_seconds": time.perf_counter() - started, "steps": result.steps, **privacy}
    content = _train_reply(site, SiteStatus.OK, "", metrics, ArrayRecord(weights))
    return Message(content=content, reply_to=msg)


def _evaluate(msg: Message, context: Context, site: Site) -> Message:
    config = FederationConfig.from_json(str(msg.content["config"][FEDERATION_KEY]))
    data = _site_data(site, config)
    model = _global_model(msg, config)
    started = time.perf_counter()
    # A class with few held-out images would be countable from the per-class rates.
    values = suppress_small_cells(evaluate(model, data.val_x, data.val_y, pick_device()),
                                  data.val_y, len(config.classes))
    metrics = MetricRecord({WEIGHT_KEY: int(len(data.val_y)), **values,
                            "eval_seconds": time.perf_counter() - started})
    content = RecordDict({METRICS_KEY: metrics, SITE_KEY: _site_record(site.name, SiteStatus.OK)})
    return Message(content=content, reply_to=msg)


def _guarded(stage: str, handler, resolve_site: SiteResolver):
    def run(msg: Message, context: Context) -> Message:
        name = str(context.node_config.get("site", f"node-{context.node_id}"))
        try:
            site = resolve_site(context)
            name = site.name
            return handler(msg, context, site)
        except Exception as exc:  # noqa: BLE001 — every failure must be replied, sanitised
            code = _report_failure(name, stage, exc)
            content = RecordDict({SITE_KEY: _site_record(name, SiteStatus.FAILED, code)})
            return Message(content=content, reply_to=msg)

    return run


def make_client_app(resolve_site: SiteResolver) -> ClientApp:
    """A ClientApp whose sites are found by `resolve_site(context)`."""
    client_app = ClientApp()
    train = _guarded("train", _train, resolve_site)
    evaluate_ = _guarded("evaluate", _evaluate, resolve_site)

    @client_app.train()
    def _train_handler(msg: Message, context: Context) -> Message:
        return train(msg, context)

    @client_app.evaluate()
    def _evaluate_handler(msg: Message, context: Context) -> Message:
        return evaluate_(msg, context)

    return client_app


# The deployed app: the SuperNode's node config names the site (see `fedmed client`).
app = make_client_app(lambda context: site_from_node_config(dict(context.node_config)))
