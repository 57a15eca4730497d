"""Record-level DP-SGD at a site: the model, optimizer and data of a round, made private.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") bounds what one
patient record can change: every step draws a Poisson sample of the site's records (each
joins with probability q), clips each record's gradient to L2 norm C, sums them, adds
Gaussian noise of standard deviation σ·C and averages. Opacus does the per-record work;
this module fixes how fedmed asks it to, so that what is trained is exactly what the
accountant is told (`dp_schedule`).

How the per-record gradient norms are obtained is Opacus' *grad-sample mode*, a pure
speed/memory choice with the same result (checked by `benchmarks/dp_cost.py`):

* ``hooks`` -- per-layer per-sample gradients from module hooks, the outer-product trick of
  Goodfellow 2015 ("Efficient Per-Example Gradient Computations"), materialised for every
  parameter and then clipped by the optimizer;
* ``functorch`` -- the same gradients from ``torch.func.vmap(grad(...))`` per layer;
* ``ew`` -- PyTorch's expanded weights, per-sample gradients inside autograd itself;
* ``ghost`` -- ghost clipping (Li et al. 2022, "Large Language Models Can Be Strong
  Differentially Private Learners"; Bu et al. 2022, "Scalable and Efficient Training of
  Large Convolutional Neural Networks with Differential Privacy"): per-record norms of
  linear layers from ‖a‖·‖g‖ without forming the gradient, then a second backward pass of
  the loss reweighted by each record's clipping factor, which yields the clipped sum.

`best_mode` is the measured fastest mode per model (`MEASURED_BEST_MODE`).

The accounting of a site's whole history is not done here: the ledger composes every round
of every run (`fedmed.client.privacy.accounting`). The Opacus engine created below keeps an
accountant only because its API requires one; nothing reads it across rounds.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmed.client.augmentation import AugmentSettings, augment, average_views, repeat_views
from fedmed.client.optimizers import LocalOptimizer
from fedmed.common.models import DPCNN, ScatterNet, SmallCNN

MODES = ("hooks", "functorch", "ew", "ghost")
"""Opacus grad-sample modes fedmed may train with."""

MEASURED_BEST_MODE: dict[tuple[str, str], str] = {
    # (model, device type) -> fastest mode, from `python -m benchmarks.dp_cost`: batch 64,
    # one channel, DP and plain steps interleaved, DP/plain step-time ratio.
    # CPU: 2-core AMD EPYC shared with other jobs, one torch thread; wall-clock ratio
    # (ratio of CPU time):
    #   cnn 64×64:      ghost 2.0× (2.0×), ew 3.2× (3.3×), hooks 3.9× (3.8×), functorch 4.6×
    #   cnn 28×28:      ghost 2.0× (2.0×), ew 3.8× (4.3×), hooks 5.0× (4.8×), functorch 5.5×
    #   resnet18 28×28: hooks 4.1× (3.3×), ghost 4.5× (4.1×), ew 4.7× (2.9×), functorch 5.4×
    #   resnet18 64×64: ew 4.7× (4.4×), hooks 5.1× (5.0×), ghost 6.8× (6.6×), functorch 51×
    # Ghost clipping wins for the CNN because it never materialises the per-record gradient
    # of its first fully connected layer (64 × 2.1 M floats at 64×64). ResNet-18 is almost
    # all convolutions, whose per-record gradients ghost must form too, and then it pays a
    # second backward pass. There hooks and ew tie within the noise of 4 timed steps; hooks
    # is Opacus' reference path, while ew rests on a private PyTorch module.
    # CUDA: one H200, 10 timed steps: cnn 64×64 ew 2.4×, hooks 2.6×, ghost 3.2×, functorch
    #   3.9×; resnet18 28×28 ew 3.7× (10 GB peak), hooks 4.0× (4.2 GB), ghost 5.2×, functorch
    #   8.2×. There the GPU is idle between small kernels and ghost's second backward pass
    #   costs more than it saves; hooks is within 10 % of ew at under half its memory.
    ("cnn", "cpu"): "ghost",
    # dpcnn: its weight-standardised convolutions have no Opacus grad sampler, so every mode
    # but ghost computes their per-record gradients with functorch; hooks handles the rest.
    ("dpcnn", "cpu"): "hooks",
    ("dpcnn", "cuda"): "hooks",
    # scatternet: only the GroupNorm and linear head after the fixed scattering are
    # trained (8 k weights); per-record gradients of so few weights cost little either way.
    ("scatternet", "cpu"): "hooks",
    ("scatternet", "cuda"): "hooks",
    ("resnet18", "cpu"): "hooks",
    ("cnn", "cuda"): "hooks",
    ("resnet18", "cuda"): "hooks",
}

_MODEL_CLASSES: tuple[tuple[type, str], ...] = ((SmallCNN, "cnn"), (DPCNN, "dpcnn"), (ScatterNet, "scatternet"))


def _model_name(model: nn.Module) -> str | None:
    """fedmed's name for `model`'s architecture, if it is one of fedmed's models."""
    name = next((name for cls, name in _MODEL_CLASSES if isinstance(model, cls)), None)
    # A ResNet can only have been built if torchvision is loaded; importing it just to ask
    # would load the compiler (torchvision's import loads `torch._dynamo`).
    resnet = sys.modules.get("torchvision.models.resnet")
    if name is None and resnet is not None and isinstance(model, resnet.ResNet):
        name = "resnet18"
    return name

from .accounting import ACCOUNTANT  # noqa: E402 -- handed to Opacus' engine; see module docstring


@dataclass(frozen=True)
class DPSchedule:
    """What one epoch of DP-SGD at a site is, as the accountant must be told."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float  # q: each record joins a step's batch with this probability
    steps_per_epoch: int

    def history(self, epochs: int) -> tuple[float, float, int]:
        """The accountant's history entry ``(σ, q, steps)`` for `epochs` local epochs."""
        return (self.noise_multiplier, self.sample_rate, self.steps_per_epoch * epochs)


def dp_schedule(
    num_examples: int, batch_size: int, noise_multiplier: float, max_grad_norm: float
) -> DPSchedule:
    """q = 1 / ⌈N/B⌉ and ⌈N/B⌉ Poisson-sampled steps per epoch.

    This is Opacus' rate (one over the batches of a plain loader of batch size B), with the
    step count `make_private_training` enforces: Opacus' own sampler takes ``int(1/q)``
    steps, which floating point rounds down for some counts (93 batches give 92 steps).
    """
    if num_examples < 1:
        raise ValueError(f"DP-SGD: expected at least one training record, got {num_examples}")
    if batch_size < 1:
        raise ValueError(f"DP-SGD: expected a batch size of at least 1, got {batch_size}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"DP-SGD: noise multiplier must be ≥ 0, got {noise_multiplier}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"DP-SGD: clipping norm must be > 0, got {max_grad_norm}")
    steps = math.ceil(num_examples / batch_size)
    return DPSchedule(
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        sample_rate=1 / steps,
        steps_per_epoch=steps,
    )


def best_mode(model_name: str, device_type: str = "cpu") -> str:
    """The grad-sample mode fedmed trains `model_name` with on a `device_type` ("cpu" or
    "cuda") device, as measured (`MEASURED_BEST_MODE`)."""
    try:
        return MEASURED_BEST_MODE[(model_name, device_type)]
    except KeyError:
        known = ", ".join(f"{m} on {d}" for m, d in MEASURED_BEST_MODE)
        raise ValueError(
            f"DP-SGD: no measured grad-sample mode for model {model_name!r} on {device_type!r}; "
            f"known: {known}"
        ) from None


@dataclass
class DPTrainResult:
    """Site-level aggregates of DP local training (the same fields as `TrainResult`)."""

    num_examples: int
    loss: float  # mean training loss over the records of the last epoch
    steps: int   # noisy optimizer steps taken, empty Poisson batches included


@dataclass
class PrivateTraining:
    """A model, optimizer and Poisson loader that Opacus has made DP-SGD.

    ``model`` is Opacus' wrapper of ``module`` (the plain network, whose parameters it
    trains); ``criterion`` must compute the loss, because in ghost mode it is what runs the
    second, clipped backward pass.
    """

    module: nn.Module
    model: nn.Module
    optimizer: DPOptimizer
    loader: DataLoader
    criterion: nn.Module
    mode: str
    schedule: DPSchedule
    seed: int
    engine: PrivacyEngine
    augment: AugmentSettings | None = None
    views: int = 1
    images_per_record: int = 1
    _keys: tuple[str, ...] = field(repr=False, default=())

    def train(self, epochs: int, device: torch.device | str = "cpu") -> DPTrainResult:
        """`epochs` passes of ``schedule.steps_per_epoch`` noisy steps each."""
        return train_private(self, epochs, torch.device(device))

    def state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """The trained weights under the global model's keys (no ``_module.`` prefix), on CPU."""
        weights = self.module.state_dict()
        return OrderedDict((k, weights[k].detach().cpu().clone()) for k in self._keys)


def make_private_training(
    model: nn.Module,
    optimizer: LocalOptimizer | torch.optim.Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
    mode: str | None = None,
    model_name: str | None = None,
    augment: AugmentSettings | None = None,
    views: int = 1,
) -> PrivateTraining:
    """Wrap (model, optimizer, records) for DP-SGD with Opacus.

    `mode` defaults to `best_mode` for `model_name` (else the model's class: `SmallCNN` is
    "cnn", a torchvision ResNet "resnet18") on the device the model's weights are on; for
    any other model it is ``"hooks"``, Opacus' default, which works with every layer it
    supports. `seed` fixes the Poisson sampling, the noise and dropout, so on the CPU a seed
    reproduces the run's weights. `optimizer` must be over `model`'s parameters; the
    returned one wraps it. A noise multiplier of 0 trains without privacy (for checks).

    `augment` perturbs every batch (`fedmed.client.augmentation`); with ``views`` = K > 1,
    each sampled record is seen as K augmented views whose per-sample gradients are
    averaged into the record's gradient before it is clipped (augmentation multiplicity).
    The sampling rate, noise and step count -- everything the accountant is told -- do not
    depend on K. Ghost clipping never forms per-view gradients, so K > 1 uses hooks.

    A record may be several images (a patient's, `fedmed.client.privacy.round`): `x` is then
    N×M×… and `y` N×M, and the record's gradient is the mean over its M images (each seen
    as its K views) before it is clipped -- the same averaging as for views.
    """
    if views < 1:
        raise ValueError(f"DP-SGD: augmentation views must be at least 1, got {views}")
    if views > 1 and augment is None:
        raise ValueError("DP-SGD: augmentation views > 1 need augmentation settings")
    images_per_record = int(y.shape[1]) if np.ndim(y) == 2 else 1
    mode = mode or _default_mode(model, model_name)
    if views * images_per_record > 1 and mode == "ghost":
        mode = "hooks"
    if mode not in MODES:
        raise ValueError(f"DP-SGD: grad-sample mode must be one of {', '.join(MODES)}, got {mode!r}")
    schedule = dp_schedule(len(x), batch_size, noise_multiplier, max_grad_norm)
    keys = tuple(model.state_dict().keys())
    module, optimizer = _opacus_compatible(model, optimizer)
    sample_seed, noise_seed = np.random.SeedSequence(seed).generate_state(2)
    criterion = nn.CrossEntropyLoss()
    engine = _engine()
    wrapped = engine.make_private(
        module=module,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=_plain_loader(x, y, batch_size, int(sample_seed)),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(int(noise_seed)),
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        dp_model, dp_optimizer, criterion, loader = wrapped
    else:
        dp_model, dp_optimizer, loader = wrapped
    _fix_step_count(loader, schedule)
    return PrivateTraining(
        module=module, model=dp_model, optimizer=dp_optimizer, loader=loader,
        criterion=criterion, mode=mode, schedule=schedule, seed=seed, engine=engine,
        augment=augment, views=views, images_per_record=images_per_record, _keys=keys,
    )


def _default_mode(model: nn.Module, model_name: str | None) -> str:
    if model_name is None:
        model_name = _model_name(model)
    device_type = next(model.parameters()).device.type
    if model_name is None or (model_name, device_type) not in MEASURED_BEST_MODE:
        return "hooks"
    return best_mode(model_name, device_type)


def _engine() -> PrivacyEngine:
    # secure_mode needs torchcsprng and forbids seeded noise, which reproducible runs need.
    # Without it the noise comes from torch's PRNG, without Opacus' defence against
    # floating-point attacks on Gaussian sampling (Jin et al. 2022, "Are We There Yet?
    # Timing and Floating-Point Attacks on Differential Privacy Systems"): a known trade-off,
    # so Opacus' warning about it would only repeat itself in every round's log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        return PrivacyEngine(accountant=ACCOUNTANT, secure_mode=False)


def _opacus_compatible(
    model: nn.Module, optimizer: LocalOptimizer | torch.optim.Optimizer
) -> tuple[nn.Module, LocalOptimizer | torch.optim.Optimizer]:
    """The model itself when Opacus accepts it, else `ModuleValidator.fix`'s copy.

    A fixed copy must keep the global model's state_dict keys and shapes, because the
    coordinator averages by key; and it has new parameters, so the optimizer is rebuilt
    over them with the same hyper-parameters.
    """
    if not ModuleValidator.validate(model, strict=False):
        return model, optimizer
    fixed = ModuleValidator.fix(model)
    ModuleValidator.validate(fixed, strict=True)
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    after = {k: tuple(v.shape) for k, v in fixed.state_dict().items()}
    if before != after:
        raise ValueError(
            "DP-SGD: making the model Opacus-compatible changed its weights' names or shapes "
            f"({sorted(set(before) ^ set(after)) or 'shapes'}); the coordinator could not "
            "average it with the other sites"
        )
    fixed.load_state_dict(model.state_dict())
    return fixed, type(optimizer)(fixed.parameters(), **optimizer.defaults)


def _plain_loader(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> DataLoader:
    # Opacus derives q from this loader's length and reuses its generator for the Poisson
    # sampler (secure_mode is off), so seeding it seeds the sampling.
    dataset = TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )
    return DataLoader(dataset, batch_size=batch_size, generator=torch.Generator().manual_seed(seed))


def _fix_step_count(loader: DataLoader, schedule: DPSchedule) -> None:
    sampler = loader.batch_sampler
    if not math.isclose(sampler.sample_rate, schedule.sample_rate, rel_tol=0, abs_tol=1e-15):
        raise RuntimeError(
            f"DP-SGD: Opacus samples at q={sampler.sample_rate}, the schedule says "
            f"{schedule.sample_rate}"
        )
    # Opacus' int(1/q) can round ⌈N/B⌉ down by one; the accountant is told ⌈N/B⌉.
    sampler.steps = schedule.steps_per_epoch


def train_private(training: PrivateTraining, epochs: int, device: torch.device) -> DPTrainResult:
    """DP local epochs; the DP counterpart of `fedmed.client.training.train_local`.

    It differs from `train_local` where DP needs it to: the loss comes from the DP criterion
    (ghost clipping's second backward pass lives there), and an empty Poisson batch is still
    a step -- the accountant counts it, and releasing pure noise rather than skipping is
    what makes that count true. Dropout draws from the run's seed inside a forked RNG, so
    the run is reproducible without disturbing the process-wide generator.
    """
    training.model.to(device).train()
    _move_noise_generator(training, device)
    steps, last_epoch_loss = 0, math.nan
    generator = None
    if training.augment is not None:
        augment_seed = int(np.random.SeedSequence(training.seed).generate_state(4)[3])
        generator = torch.Generator().manual_seed(augment_seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(training.seed)
        for _ in range(epochs):
            total, count = 0.0, 0
            for xb, yb in training.loader:
                loss = dp_step(training, xb.to(device), yb.to(device), generator)
                steps += 1
                total += loss * len(xb)
                count += len(xb)
            last_epoch_loss = total / count if count else math.nan
    return DPTrainResult(num_examples=len(training.loader.dataset), loss=last_epoch_loss, steps=steps)


def dp_step(training: PrivateTraining, xb: torch.Tensor, yb: torch.Tensor,
            generator: torch.Generator | None = None) -> float:
    """One noisy step on one (Poisson-sampled) batch; returns its mean loss (0 if empty).

    With augmentation, `generator` draws the transforms; with K views per record, the
    batch of B records is run as B·K views and each record's K per-view gradients are
    averaged before the optimizer clips them, so Opacus still sees B records. Records of
    M images are run the same way, as B·M·K inputs averaged per record. Per-input
    gradients take B·M·K times the model's size in memory, so a large batch of such
    records runs in chunks whose clipped sums Opacus accumulates (its skipped steps)
    before it adds the step's noise once: the same step, in bounded memory.
    """
    optimizer = training.optimizer
    optimizer.zero_grad(set_to_none=True)
    if len(xb) == 0:
        _zero_record_gradients(training)
        optimizer.step()
        return 0.0
    per_record = training.views * training.images_per_record
    if per_record == 1:
        loss = _backward(training, xb, yb, generator)
        optimizer.step()
        return loss
    chunk = max(1, MAX_PER_SAMPLE_VALUES // (per_record * _trained_values(training)))
    total = 0.0
    for start in range(0, len(xb), chunk):
        last = start + chunk >= len(xb)
        if start:
            optimizer.zero_grad(set_to_none=True)  # keeps the clipped sum of the skipped steps
        xs, ys = xb[start:start + chunk], yb[start:start + chunk]
        total += _backward(training, xs, ys, generator) * len(xs)
        for p in optimizer.params:
            if getattr(p, "grad_sample", None) is not None:
                p.grad_sample = average_views(p.grad_sample, per_record)
        if not last:
            optimizer.signal_skip_step(do_skip=True)
        optimizer.step()
    return total / len(xb)


MAX_PER_SAMPLE_VALUES = 150_000_000
"""Per-input gradient values (float32: 600 MB) one chunk of a multi-input step may hold."""


def _trained_values(training: PrivateTraining) -> int:
    return sum(p.numel() for p in training.optimizer.params)


def _backward(training: PrivateTraining, xb: torch.Tensor, yb: torch.Tensor,
              generator: torch.Generator | None) -> float:
    """Forward and backward of B records (their images and views laid out record-major)."""
    if yb.dim() == 2:  # records of several images (N×M), laid out record-major
        xb, yb = xb.flatten(0, 1), yb.flatten()
    if training.augment is not None:
        if generator is None:
            raise ValueError("DP-SGD: augmentation needs a generator")
        xb = augment(repeat_views(xb, training.views), training.augment, generator)
        yb = repeat_views(yb, training.views)
    with warnings.catch_warnings():
        # The first layer's input never requires a gradient; PyTorch then notes that
        # Opacus' full backward hooks see only output gradients, which is all they use.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss = training.criterion(training.model(xb), yb)
        loss.backward()
    return float(loss.detach())


def _zero_record_gradients(training: PrivateTraining) -> None:
    # A forward pass over zero records breaks the functorch and expanded-weights modes
    # (empty convolutions), and has nothing to compute anyway: the optimizer is handed
    # what a batch of no records contributes -- nothing -- and adds its noise to that.
    for p in training.optimizer.params:
        if training.mode == "ghost":
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def _move_noise_generator(training: PrivateTraining, device: torch.device) -> None:
    # torch.normal needs a generator on the tensor's device; the first move to an
    # accelerator reseeds there from the run's seed (CPU runs keep the original stream).
    generator = training.optimizer.generator
    if generator is not None and generator.device.type != device.type:
        noise_seed = int(np.random.SeedSequence(training.seed).generate_state(3)[2])
        training.optimizer.generator = torch.Generator(device=device).manual_seed(noise_seed)
