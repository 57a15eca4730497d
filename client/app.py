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
from typing import TYPE_CHECKING, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmed.client.augmentation import settings_for
from fedmed.client.privacy.disclosure import open_release
from fedmed.client.privacy.noise_check import trainable_parameters
from fedmed.client.site import Site, site_from_node_config
from fedmed.client.training import make_loader, make_optimizer, pick_device, predict_proba, round_seed, train_local
from fedmed.common.federation import FederationConfig
from fedmed.common.freezing import apply_freeze
from fedmed.common.models import build_model
from fedmed.common.packed_arrays import put, take
from fedmed.common.protocol import (ARRAYS_KEY, FEDERATION_KEY, FREEZE_KEY, SITE_KEY, WEIGHT_KEY,
                                    SiteStatus)
from fedmed.common.reply_fields import fold

if TYPE_CHECKING:
    from fedmed.client.privacy.round import PrivacyRound

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
    model.load_state_dict(take(msg.content, ARRAYS_KEY, carrier="config").to_torch_state_dict())
    return model


def _train_reply(site: Site, status: SiteStatus, reason: str, metrics: dict, arrays=None) -> RecordDict:
    # Every train reply carries the same metric keys (FedAvg refuses mixed key sets);
    # undefined values are NaN. No training loss: it is a statistic of the training
    # images that no noise covers (a crafted model turns it into a class count).
    record = {WEIGHT_KEY: 0, "train_seconds": 0.0, "steps": 0,
              "dp": 1 if site.privacy.enabled else 0, "epsilon": math.nan,
              "noise_multiplier": math.nan, "delta": math.nan}
    record.update(metrics)
    content = RecordDict({SITE_KEY: _site_record(site.name, status, reason)})
    fold(content, MetricRecord(record))  # one record fewer on the wire (`reply_fields`)
    if arrays is not None:
        # One array per dtype on the wire instead of one per tensor, the layout in the
        # status record (`packed_arrays`).
        put(content, ARRAYS_KEY, arrays, carrier=SITE_KEY)
    return content


def _privacy_round(msg: Message, site: Site, data, config: FederationConfig) -> PrivacyRound:
    from fedmed.client.privacy.round import PrivacyRound

    return PrivacyRound.open(site.state_dir, data, site.privacy, site=site.name,
                             run=str(msg.metadata.run_id), server_round=int(msg.content["config"]["server-round"]),
                             total_rounds=config.rounds)


def _train(msg: Message, context: Context, site: Site) -> Message:
    config = FederationConfig.from_json(str(msg.content["config"][FEDERATION_KEY]))
    server_round = int(msg.content["config"]["server-round"])
    data = _site_data(site, config)
    seed = round_seed(config.seed, site.name, server_round)
    torch.manual_seed(seed)
    model = _global_model(msg, config)
    # Frozen weights (a run started --init-from with --freeze) get no gradient: the
    # optimizer leaves them as they are and DP-SGD neither clips nor noises them.
    apply_freeze(model, str(msg.content["config"].get(FREEZE_KEY, "none")))
    device = pick_device()
    optimizer = make_optimizer(model, config, dp=site.privacy.enabled, server_round=server_round)
    augmentation = settings_for(config)
    started = time.perf_counter()
    if not site.privacy.enabled:
        loader = make_loader(data.train_x, data.train_y, config.batch_size, seed)
        result = train_local(model, loader, optimizer, config.epochs, device,
                             augmentation=augmentation, seed=seed)
        weights, privacy, count = model.cpu().state_dict(), {}, result.num_examples
    else:
        # Opacus and the accountants are loaded by the first DP round only: a site training
        # without DP keeps them (and their memory) out of its executor.
        from fedmed.client.privacy.dp_sgd import make_private_training

        privacy_round = _privacy_round(msg, site, data, config)
        decision = privacy_round.reserve_training(config.dp_batch_size, config.epochs,
                                                  trainable=trainable_parameters(model))
        if not decision.train:
            return Message(content=_train_reply(site, SiteStatus(decision.status), decision.reason,
                                                {"epsilon": decision.spent_epsilon}), reply_to=msg)
        with privacy_round.training() as plan:
            train_x, train_y = privacy_round.training_records(data.train_x, data.train_y, data.train_patients)
            training = make_private_training(
                model, optimizer, train_x, train_y, config.dp_batch_size,
                plan.noise_multiplier, site.privacy.max_grad_norm, privacy_round.training_seed(),
                model_name=config.model,
                # With DP a single augmented view per record measured worse than none
                # (docs/privacy.md); augmentation then comes with K >= 2 views averaged per record.
                augment=augmentation if config.augment_views > 1 else None,
                views=config.augment_views if augmentation else 1)
            result = training.train(config.epochs, device)
        weights = training.state_dict()
        privacy = {"epsilon": decision.epsilon_after, "noise_multiplier": plan.noise_multiplier,
                   "delta": plan.delta}
        # The count as the schedule already shows it (steps = ⌈N/B⌉ per epoch), not N.
        count = training.schedule.steps_per_epoch * config.dp_batch_size
    metrics = {WEIGHT_KEY: count, "train_seconds": time.perf_counter() - started,
               "steps": result.steps, **privacy}
    content = _train_reply(site, SiteStatus.OK, "", metrics, ArrayRecord(weights))
    return Message(content=content, reply_to=msg)


def _evaluate(msg: Message, context: Context, site: Site) -> Message:
    config = FederationConfig.from_json(str(msg.content["config"][FEDERATION_KEY]))
    data = _site_data(site, config)
    model = _global_model(msg, config)
    started = time.perf_counter()
    probs = predict_proba(model, data.val_x, pick_device())
    status, reason = SiteStatus.OK, ""
    if not site.privacy.enabled:
        values = {**open_release(probs, data.val_y), "dp_metrics": 0}
    else:
        refused, values = _privacy_round(msg, site, data, config).release_evaluation(
            probs, data.val_y, config.dp_batch_size, config.epochs)
        if refused is not None:
            status, reason = SiteStatus(refused.status), refused.reason
    metrics = MetricRecord({**values, "eval_seconds": time.perf_counter() - started})
    content = RecordDict({SITE_KEY: _site_record(site.name, status, reason)})
    fold(content, metrics)
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
