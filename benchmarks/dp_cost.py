"""What record-level DP-SGD costs at a site, per model, image size and Opacus grad-sample mode.

    python -m benchmarks.dp_cost            # the full table (minutes on a 2-core CPU)
    python -m benchmarks.dp_cost --smoke    # two steps of the small CNN in-process, for CI

For each configuration a fresh interpreter trains the same model twice from the same
weights: plain (``torch.optim.Adam``) and DP-SGD (`fedmed.client.privacy.dp_sgd`, Adam
wrapped by Opacus), on the same fixed batches, alternating which goes first, so that load
from other processes on a shared machine hits both alike; the DP/plain *ratio* of mean step
times is the number to compare, the milliseconds are only as good as the machine was quiet.
The first `--warmup` steps are not timed (allocator and oneDNN warm-up).

Peak memory is the process's ``ru_maxrss`` (``resource.getrusage``) read right after the
timed steps: the largest resident set the interpreter ever had, i.e. DP's peak (the plain
model is smaller) plus the interpreter and torch themselves; the ``plain`` row of each
configuration is a process that ran only plain steps, its baseline.

Correctness: with noise 0, one DP step's gradient times the batch size must be the sum of
the records' clipped gradients (Abadi et al. 2016), computed here the slow way -- one
backward pass per record, in float64 -- with the clipping norm set to the median record
norm so that half the records are clipped; and it must agree with Opacus' ``hooks`` mode.
The column shows both relative errors; "yes" means both are under 1e-3 (float32 rounding
alone gives ~1e-4 for ResNet-18). Dropout is off for that check (it would make the two
computations draw different masks).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedmed.client.privacy.dp_sgd import MODES, dp_step, make_private_training
from fedmed.common.models import build_model

CONFIGS: tuple[tuple[str, int], ...] = (("cnn", 64), ("cnn", 28), ("resnet18", 28), ("resnet18", 64))
SMOKE_CONFIGS: tuple[tuple[str, int], ...] = (("cnn", 28),)
PLAIN = "plain"
CLASSES = 2
CORRECTNESS_RECORDS = 8
CORRECTNESS_RTOL = 1e-3
LR = 1e-3


@dataclass
class Row:
    model: str
    image_size: int
    mode: str
    plain_ms: float
    dp_ms: float
    ratio: float
    cpu_ratio: float  # the same ratio of process CPU time, steadier on a busy machine
    peak_mb: float
    correct: str  # "yes"/"no" with the errors, "n/a" for the plain baseline, or the failure
    batch: int
    steps: int
    threads: int


def _batches(size: int, batch: int, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(count * batch, 1, size, size)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, size=count * batch))
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(count)]


def _plain_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                xb: torch.Tensor, yb: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(xb), yb).backward()
    optimizer.step()


def _timed(fn) -> tuple[float, float]:
    """Wall-clock and process CPU milliseconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) * 1000.0, (time.process_time() - cpu) * 1000.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def time_steps(model_name: str, size: int, mode: str, batch: int, steps: int, warmup: int,
               seed: int = 0) -> tuple[float, float, float, float, float]:
    """Mean plain and DP step times and CPU times (ms) over `steps` timed steps, and the
    peak RSS (MB). `mode` ``"plain"`` times plain steps only (its DP times are NaN).

    CPU time counts every thread of the process; with one thread it is the step's work
    whatever else the machine runs, with more it also counts threads spinning idle.
    """
    torch.manual_seed(seed)
    base = build_model(model_name, CLASSES, size)
    plain = copy.deepcopy(base).train()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=LR)
    batches = _batches(size, batch, warmup + steps, seed)
    training = None
    if mode != PLAIN:
        net = copy.deepcopy(base)
        x, y = batches[0]
        training = make_private_training(
            net, torch.optim.Adam(net.parameters(), lr=LR), x.numpy(), y.numpy(),
            batch_size=batch, noise_multiplier=1.0, max_grad_norm=1.0, seed=seed, mode=mode,
        )
        training.model.train()
    plain_ms, dp_ms, plain_cpu, dp_cpu = [], [], [], []
    for i, (xb, yb) in enumerate(batches):
        run_plain = lambda: _plain_step(plain, plain_opt, xb, yb)  # noqa: E731
        run_dp = (lambda: dp_step(training, xb, yb)) if training else None  # noqa: E731
        # Alternate the order so neither side always runs on a cache warmed by the other.
        order = (run_plain, run_dp) if i % 2 == 0 else (run_dp, run_plain)
        times = {fn: _timed(fn) for fn in order if fn is not None}
        if i >= warmup:
            plain_ms.append(times[run_plain][0])
            plain_cpu.append(times[run_plain][1])
            if run_dp is not None:
                dp_ms.append(times[run_dp][0])
                dp_cpu.append(times[run_dp][1])
    mean = lambda v: statistics.fmean(v) if v else float("nan")  # noqa: E731
    return mean(plain_ms), mean(dp_ms), mean(plain_cpu), mean(dp_cpu), _peak_mb()


def _without_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _per_record_grads(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> list[torch.Tensor]:
    """Each record's flattened gradient, one backward pass per record (the definition)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for i in range(len(xb)):
        loss = nn.functional.cross_entropy(model(xb[i:i + 1]), yb[i:i + 1])
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return grads


def _noise_free_dp_sum(base: nn.Module, xb: torch.Tensor, yb: torch.Tensor, clip: float,
                       mode: str) -> torch.Tensor:
    """One noise-free DP step's summed clipped gradient in `mode`, flattened, as float64."""
    net = copy.deepcopy(base)
    training = make_private_training(
        net, torch.optim.SGD(net.parameters(), lr=0.0), xb.numpy(), yb.numpy(),
        batch_size=len(xb), noise_multiplier=0.0, max_grad_norm=clip, seed=0, mode=mode,
    )
    dp_step(training, xb, yb)
    # With loss reduction "mean", Opacus divides the clipped sum by the expected batch size.
    got = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double()
    return got * training.optimizer.expected_batch_size


def clipping_errors(model_name: str, size: int, mode: str, seed: int = 0) -> tuple[float, float]:
    """Relative L2 errors of `mode`'s noise-free clipped sum against the per-record
    definition computed in float64, and against ``hooks`` (Opacus' reference mode).

    float64 because the float32 definition itself is off by ~1e-4 for ResNet-18 (batch-1
    and batch-8 convolutions round differently), which would hide nothing and flag all.
    """
    torch.manual_seed(seed)
    base = _without_dropout(build_model(model_name, CLASSES, size)).train()
    xb, yb = _batches(size, CORRECTNESS_RECORDS, 1, seed + 1)[0]
    per_record = _per_record_grads(copy.deepcopy(base).double(), xb.double(), yb)
    norms = torch.stack([g.norm() for g in per_record])
    clip = float(norms.median())  # half the records are clipped, half are not
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)  # Opacus' clipping factor, same epsilon
    expected = sum(f * g for f, g in zip(factors, per_record))
    got = _noise_free_dp_sum(base, xb, yb, clip, mode)
    hooks = got if mode == "hooks" else _noise_free_dp_sum(base, xb, yb, clip, "hooks")
    relative = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    return relative(got, expected), relative(got, hooks)


def measure(model_name: str, size: int, mode: str, batch: int, steps: int, warmup: int,
            threads: int) -> Row:
    """One table row, measured in this process."""
    if threads:
        torch.set_num_threads(threads)
    plain_ms, dp_ms, plain_cpu, dp_cpu, peak = time_steps(model_name, size, mode, batch, steps, warmup)
    if mode == PLAIN:
        correct = "n/a"
    else:
        to_definition, to_hooks = clipping_errors(model_name, size, mode)
        verdict = "yes" if max(to_definition, to_hooks) < CORRECTNESS_RTOL else "no"
        correct = f"{verdict} ({to_definition:.0e}; {to_hooks:.0e} vs hooks)"
    return Row(model_name, size, mode, round(plain_ms, 1), round(dp_ms, 1),
               round(dp_ms / plain_ms, 2), round(dp_cpu / plain_cpu, 2), round(peak, 0), correct,
               batch, steps,
               torch.get_num_threads())


def _measure_in_fresh_process(model_name: str, size: int, mode: str, args: argparse.Namespace) -> Row:
    # A fresh interpreter per configuration: ru_maxrss never decreases, so a shared one
    # would report the largest configuration's peak for every later row.
    cmd = [sys.executable, "-m", "benchmarks.dp_cost", "--one", model_name, str(size), mode,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["exit " + str(proc.returncode)])[-1]
        nan = float("nan")
        return Row(model_name, size, mode, nan, nan, nan, nan, nan, f"fails: {reason[:120]}",
                   args.batch, args.steps, args.threads)
    return Row(**json.loads(proc.stdout.strip().splitlines()[-1]))


def markdown(rows: list[Row]) -> str:
    lines = ["| model | image | mode | plain step ms | DP step ms | DP / plain | DP / plain CPU time "
             "| peak MB | correct |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        dp = "–" if r.mode == PLAIN else f"{r.dp_ms:.1f}"
        ratio = "–" if r.mode == PLAIN else f"{r.ratio:.2f}×"
        cpu_ratio = "–" if r.mode == PLAIN else f"{r.cpu_ratio:.2f}×"
        lines.append(f"| {r.model} | {r.image_size}×{r.image_size} | {r.mode} | {r.plain_ms:.1f} | "
                     f"{dp} | {ratio} | {cpu_ratio} | {r.peak_mb:.0f} | {r.correct} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dp_cost",
                                description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a few steps of the small CNN at 28×28")
    p.add_argument("--models", nargs="*", help="restrict to these model:size pairs, e.g. cnn:64")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "SIZE", "MODE"), help=argparse.SUPPRESS)
    return p


def _configs(args: argparse.Namespace) -> tuple[tuple[str, int], ...]:
    if args.models:
        return tuple((m, int(s)) for m, s in (spec.split(":") for spec in args.models))
    return SMOKE_CONFIGS if args.smoke else CONFIGS


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure every configuration, print the markdown table, return the rows as dicts."""
    args = _parser().parse_args(argv)
    if args.one:
        model_name, size, mode = args.one
        row = measure(model_name, int(size), mode, args.batch, args.steps, args.warmup, args.threads)
        print(json.dumps(asdict(row)))
        return [asdict(row)]
    if args.smoke:
        # In this process (no interpreter start per row): peak MB is then cumulative.
        args.batch, args.steps = min(args.batch, 16), min(args.steps, 2)
        args.warmup = min(args.warmup, 1)
        rows = [measure(m, s, mode, args.batch, args.steps, args.warmup, args.threads)
                for m, s in _configs(args) for mode in (PLAIN, *args.modes)]
    else:
        rows = []
        for model_name, size in _configs(args):
            for mode in (PLAIN, *args.modes):
                rows.append(_measure_in_fresh_process(model_name, size, mode, args))
                print(f"  measured {model_name} {size}×{size} {mode}", file=sys.stderr, flush=True)
    print(markdown(rows))
    if args.json:
        print(json.dumps([asdict(r) for r in rows]))
    return [asdict(r) for r in rows]


if __name__ == "__main__":
    main()
