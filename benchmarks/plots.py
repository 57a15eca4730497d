"""The figures of docs/benchmarks.md, drawn with matplotlib's file-only (Agg) backend."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def utility_auc(section: dict[str, Any], reference: tuple[str, float] | None, path: Path) -> str | None:
    """Test AUC per setting; `reference`: (label, AUC) of a published result, drawn as a line."""
    rows = [r for r in section.get("rows", []) if r["test"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    labels, means, errs = [], [], []
    for r in rows:
        aucs = _finite([t["auc"] for t in r["test"]])
        labels.append(r["label"])
        means.append(statistics.fmean(aucs) if aucs else float("nan"))
        errs.append(statistics.stdev(aucs) if len(aucs) > 1 else 0.0)
    y = range(len(rows))
    ax.barh(list(y), means, xerr=errs, color="#4c78a8", capsize=3)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    if reference is not None:
        ax.axvline(reference[1], color="#e45756", linestyle="--", label=f"{reference[0]}: {reference[1]:.3f}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8)
    low = min(_finite(means) + [reference[1] if reference else 1.0])
    ax.set_xlim(max(0.0, low - 0.1), 1.0)
    ax.set_xlabel("test AUC (mean ± std over seeds where repeated)")
    return _save(fig, path)


def utility_rounds(section: dict[str, Any], path: Path) -> str | None:
    rows = [r for r in section.get("rows", []) if r.get("curves")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        curve = r["curves"][0]
        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=r["label"])
    ax.set_xlabel("round")
    ax.set_ylabel("AUC on the sites' validation splits\n(example-weighted mean over sites)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def dp_cost(section: dict[str, Any], path: Path) -> str | None:
    rows = [r for r in section.get("rows", []) if r["mode"] != "plain" and _finite([r["ratio"]])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    labels = [f"{r['model']} {r['image_size']}² {r['mode']}" for r in rows]
    ax.barh(range(len(rows)), [r["ratio"] for r in rows], color="#f58518")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("DP-SGD step time / plain step time")
    return _save(fig, path)


def round_overhead(section: dict[str, Any], path: Path) -> str | None:
    rows = [r for r in section.get("rows", []) if r.get("wall_s")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.4))
    labels = [f"{r['setting']}: {r['data']}" for r in rows]
    train = [r["train_s"] for r in rows]
    ev = [r["eval_s"] for r in rows]
    over = [max(r["overhead_s"], 0.0) for r in rows]
    y = list(range(len(rows)))
    ax.barh(y, train, color="#4c78a8", label="training (critical path)")
    ax.barh(y, ev, left=train, color="#72b7b2", label="evaluation (critical path)")
    ax.barh(y, over, left=[a + b for a, b in zip(train, ev)], color="#e45756", label="overhead")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per round (rounds 2..R, mean)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def scale(section: dict[str, Any], path: Path) -> str | None:
    rows = [r for r in section.get("rows", []) if r["status"] == "completed"]
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    sites = [r["sites"] for r in rows]
    left.plot(sites, [r["per_round_s"] for r in rows], marker="o")
    left.set_xlabel("sites")
    left.set_ylabel("wall time per round (s)")
    right.plot(sites, [r["peak_rss_mib"] / 1024 for r in rows], marker="o", label="RSS, summed")
    right.plot(sites, [r["peak_pss_mib"] / 1024 for r in rows], marker="o", label="PSS (real share)")
    right.set_xlabel("sites")
    right.set_ylabel("peak memory of the process tree (GiB)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def data_throughput(section: dict[str, Any], path: Path) -> str | None:
    rows = section.get("rows", [])
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    y = list(range(len(rows)))
    height = 0.4
    ax.barh([i - height / 2 for i in y], [r["cold_images_per_s"] for r in rows], height, label="cold (decode)")
    ax.barh([i + height / 2 for i in y], [r["cached_images_per_s"] for r in rows], height, label="cached")
    ax.set_yticks(y, [f"{r['source']} ({r['transfer_syntax']})" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images per second, whole site load")
    ax.legend(fontsize=8)
    return _save(fig, path)
