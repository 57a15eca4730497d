"""The site's GPU path, checked for real: plain and DP-SGD local training on CUDA.

Run on a machine with an NVIDIA GPU: `python -m benchmarks.gpu_path [--out FILE.json]`.
For each model it trains one epoch on random images on the GPU and on the CPU (same
data, same seed), with and without DP-SGD, checks the results are finite and the GPU
really held the tensors, and reports step times and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from fedmed.client.privacy.dp_sgd import best_mode, make_private_training
from fedmed.client.training import evaluate, make_loader, pick_device, train_local
from fedmed.common.models import build_model

CASES = (("cnn", 64, 64), ("cnn", 28, 256), ("resnet18", 64, 64))
N_IMAGES = 2048


def _data(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N_IMAGES)
    x = rng.normal(size=(N_IMAGES, 1, size, size)).astype(np.float32)
    x[y == 1, :, size // 3 : size // 2, size // 3 : size // 2] += 1.0  # something to learn
    return x, y.astype(np.int64)


def _time_plain(name: str, size: int, batch: int, device: torch.device) -> dict:
    x, y = _data(size)
    torch.manual_seed(0)
    model = build_model(name, 2, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.to(device)
    _sync(device)
    started = time.perf_counter()
    result = train_local(model, make_loader(x, y, batch, 0), optimizer, 1, device)
    _sync(device)
    seconds = time.perf_counter() - started
    metrics = evaluate(model, x[:512], y[:512], device)
    return {"step_ms": 1000 * seconds / max(result.steps, 1), "loss": result.loss,
            "accuracy": metrics["accuracy"], "steps": result.steps,
            "on_device": str(next(model.parameters()).device)}


def _time_dp(name: str, size: int, batch: int, device: torch.device) -> dict:
    x, y = _data(size)
    torch.manual_seed(0)
    model = build_model(name, 2, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    training = make_private_training(model, optimizer, x, y, batch, noise_multiplier=1.0,
                                     max_grad_norm=1.0, seed=0, model_name=name)
    _sync(device)
    started = time.perf_counter()
    result = training.train(1, device)
    _sync(device)
    seconds = time.perf_counter() - started
    weights = training.state_dict()
    finite = all(torch.isfinite(v).all().item() for v in weights.values() if v.is_floating_point())
    return {"step_ms": 1000 * seconds / max(result.steps, 1), "loss": result.loss,
            "steps": result.steps, "mode": training.mode, "finite": finite,
            "on_device": str(next(training.module.parameters()).device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="write the rows as JSON here too")
    args = parser.parse_args()
    device = pick_device()
    if device.type != "cuda":
        raise SystemExit("gpu_path: no CUDA device here; this check needs a GPU")
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "rows": []}
    # CUDA initialisation and kernel selection happen on first use: pay them before timing.
    for name, size, batch in CASES:
        _time_plain(name, size, batch, device)
        _time_dp(name, size, batch, device)
    for name, size, batch in CASES:
        row = {"model": name, "image_size": size, "batch": batch, "dp_mode": best_mode(name)}
        for label, dev in (("gpu", device), ("cpu", torch.device("cpu"))):
            torch.cuda.reset_peak_memory_stats()
            row[f"{label}_plain"] = _time_plain(name, size, batch, dev)
            row[f"{label}_dp"] = _time_dp(name, size, batch, dev)
            if label == "gpu":
                row["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu_speedup_plain"] = row["cpu_plain"]["step_ms"] / row["gpu_plain"]["step_ms"]
        row["gpu_speedup_dp"] = row["cpu_dp"]["step_ms"] / row["gpu_dp"]["step_ms"]
        row["gpu_dp_over_plain"] = row["gpu_dp"]["step_ms"] / row["gpu_plain"]["step_ms"]
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    print(f"| model | size | batch | DP mode | GPU ms/step | GPU DP ms/step | DP/plain (GPU) | CPU ms/step | CPU DP ms/step | GPU speed-up (DP) | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        print(f"| {r['model']} | {r['image_size']} | {r['batch']} | {r['dp_mode']} | "
              f"{r['gpu_plain']['step_ms']:.2f} | {r['gpu_dp']['step_ms']:.2f} | {r['gpu_dp_over_plain']:.2f} | "
              f"{r['cpu_plain']['step_ms']:.1f} | {r['cpu_dp']['step_ms']:.1f} | {r['gpu_speedup_dp']:.1f}x | "
              f"{r['gpu_peak_mib']:.0f} |")
    print(f"GPU: {report['gpu']}, torch {report['torch']}")


if __name__ == "__main__":
    main()
