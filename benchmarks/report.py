"""docs/benchmarks.md and docs/benchmarks-headline.md, written from the results of a run.

Everything here reads `results.json` (what `python -m benchmarks` measured); nothing is
measured here, so a report can be rewritten from saved results
(``python -m benchmarks report --out DIR``).
"""

from __future__ import annotations

import json

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks import dp_cost, plots

# MedMNIST v2 (Yang et al., Scientific Data 10, 41, 2023), PneumoniaMNIST, test split.
# Only Google AutoML Vision's accuracy has been checked against the paper; the other
# figures are as listed in ../shared/data/README.md and still to be verified.
REFERENCE = (
    ("ResNet-18 (28)", 0.854, 0.944, "as listed in the data README, unverified"),
    ("Google AutoML Vision", 0.946, 0.991, "ACC confirmed against the paper; AUC unverified"),
)
TARGETS = {"fedavg_gap": 0.01, "dp8_gap": 0.05, "sim_overhead": 0.10}
# The utility targets: (row key, what is required, check on the row's per-seed test figures).
UTILITY_TARGETS = (
    ("fedavg-noniid", "AUC ≥ 0.925 (mean) and within 0.01 of centralised",
     lambda row, central: bool(row["test"]) and _mean(_row_metric(row, "auc")) >= 0.925
     and (central is None or _mean(_row_metric(central, "auc")) - _mean(_row_metric(row, "auc")) <= 0.01)),
    ("dp-eps8", "AUC ≥ 0.91 at every seed, balanced accuracy ≥ 0.80",
     lambda row, central: bool(row["test"]) and min(_row_metric(row, "auc")) >= 0.91
     and min(_row_metric(row, "balanced_accuracy_at_threshold")) >= 0.80),
    ("dp-eps3", "AUC ≥ 0.88 at every seed (none inverted)",
     lambda row, central: bool(row["test"]) and min(_row_metric(row, "auc")) >= 0.88),
    ("dp-eps1", "AUC ≥ 0.82",
     lambda row, central: bool(row["test"]) and _mean(_row_metric(row, "auc")) >= 0.82),
)
PLOTS = "benchmarks"  # folder of the figures, relative to the markdown file


# --- numbers -----------------------------------------------------------------------------
def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def _mean(values) -> float:
    v = _finite(values)
    return statistics.fmean(v) if v else float("nan")


def _pm(values, digits: int = 3) -> str:
    """'0.912 ± 0.010' over several values, '0.912' for one, '–' for none."""
    v = _finite(values)
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.fmean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def _num(value, digits: int = 1, unit: str = "") -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}{unit}"


def _int(value) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}"


def _row_metric(row: dict[str, Any], name: str) -> list[float]:
    return [t.get(name, math.nan) for t in row.get("test", [])]


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the README quotes, each with its target and whether it is met."""
    sections = results.get("sections", {})
    util = {r["key"]: r for r in sections.get("utility", {}).get("rows", [])}
    out: dict[str, Any] = {}
    central, fed = util.get("centralised"), util.get("fedavg-noniid")
    if central and fed and central["test"] and fed["test"]:
        c, f = _mean(_row_metric(central, "auc")), _mean(_row_metric(fed, "auc"))
        out["fedavg"] = {"central_auc": _pm(_row_metric(central, "auc")), "fed_auc": _pm(_row_metric(fed, "auc")),
                         "gap": c - f, "met": c - f <= TARGETS["fedavg_gap"], "seeds": len(fed["test"])}
    for eps in ("3", "8"):
        row = util.get(f"dp-eps{eps}")
        if row and row["test"]:
            out[f"dp{eps}"] = {"auc": _pm(_row_metric(row, "auc")), "mean": _mean(_row_metric(row, "auc"))}
    if "dp8" in out and fed and fed["test"]:
        gap = _mean(_row_metric(fed, "auc")) - out["dp8"]["mean"]
        out["dp8"].update(gap=gap, met=gap <= TARGETS["dp8_gap"])
    dp = sections.get("dp", {})
    mode = dp.get("fedmed_mode", {}).get("cnn")
    for r in dp.get("rows", []):
        if r["model"] == "cnn" and r["image_size"] == 28 and r["mode"] == mode:
            out["dp_ratio"] = {"ratio": r["ratio"], "mode": mode}
    over = sections.get("overhead", {}).get("rows", [])
    real = [r for r in over if r["setting"] == "simulation" and r["data"].startswith("PneumoniaMNIST") and r.get("wall_s")]
    sim = real or [r for r in over if r["setting"] == "simulation" and r.get("wall_s")]
    if sim:
        frac = _mean(r["overhead_fraction"] for r in sim)
        loads = [max(r["load_s"].values()) for r in sim if r.get("load_s")]
        out["sim_overhead"] = {"seconds": _mean(r["overhead_s"] for r in sim), "fraction": frac,
                               "wall": _mean(r["wall_s"] for r in sim), "compute": _mean(r["compute_s"] for r in sim),
                               "load": max(loads) if loads else None,
                               "data": sim[0]["data"].split(" (")[0] if real else sim[0]["data"],
                               "runs": len(sim), "met": frac < TARGETS["sim_overhead"]}
    dep = [r for r in over if r["setting"] == "deployment" and r.get("wall_s")]
    if dep:
        out["deployment_overhead"] = {"seconds": dep[0]["overhead_s"], "fraction": dep[0]["overhead_fraction"],
                                      "wall": dep[0]["wall_s"],
                                      "paced": bool(sections.get("overhead", {}).get("paced"))}
    speed = sections.get("speed", {})
    if speed.get("figures"):
        out["speed"] = {"figures": speed["figures"], "met": speed["met"], "load": speed.get("load", {}),
                        "cpu": speed.get("cpu_per_round_s") or {}, "repeats": speed.get("repeats") or []}
    return out


# --- sections ----------------------------------------------------------------------------
def _machine(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [
        "## Machine and software", "",
        "| | |", "|---|---|",
        f"| date (UTC) | {m['date_utc']} (the latest run; each section's own below) |",
        f"| CPU | {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), torch uses {m['torch_threads']} threads |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| GPU | {m['gpu']} |",
        f"| OS, Python | {m['os']}, Python {m['python']} |",
        f"| libraries | {packages} |",
        "",
        "The machine may be shared. Each section's 1-minute load average is listed below: on "
        f"{m['cores']} cores a load above {m['cores']} means processes waited for a CPU, which "
        "inflates seconds but not ratios measured side by side (DP/plain).",
        "",
        "| section | run on (UTC) | duration | load average at start → end |", "|---|---|---:|---|",
    ]
    for name, t in results.get("timing", {}).items():
        lines.append(f"| {name} | {t.get('finished_utc', '–')} | {t['seconds']:.0f} s | "
                     f"{t['load_start']:.1f} → {t['load_end']:.1f} |")
    return lines + [""]


def _figure(figures: dict[str, str | None], key: str, caption: str) -> list[str]:
    """The markdown of a plot, or nothing when it could not be drawn."""
    return [f"![{caption}]({PLOTS}/{figures[key]})", ""] if figures.get(key) else []


# Rows that start from a pretrained model: a table of their own, apart from the targets'
# rows (which have no public pretraining).
PRETRAINED = "pretrained-"
_UTILITY_HEADER = [
    "| setting | ACC | AUC | AUC per seed | bal. ACC | sensitivity | specificity | at the val threshold: sens. / spec. / bal. ACC | worst-site ACC (val) | rounds | wall s | s/round | start-up s |",
    "|---|---|---|---|---|---|---|---|---|---:|---:|---:|---:|",
]


def _utility_row(r: dict[str, Any]) -> str:
    per_seed = ", ".join(_num(v, 3) for v in _row_metric(r, "auc")) if len(r["test"]) > 1 else "–"
    at = (f"{_pm(_row_metric(r, 'sensitivity_at_threshold'))} / {_pm(_row_metric(r, 'specificity_at_threshold'))} / "
          f"{_pm(_row_metric(r, 'balanced_accuracy_at_threshold'))}")
    return (f"| {r['label']} | {_pm(_row_metric(r, 'accuracy'))} | {_pm(_row_metric(r, 'auc'))} | {per_seed} | "
            f"{_pm(_row_metric(r, 'balanced_accuracy'))} | "
            f"{_pm(_row_metric(r, 'sensitivity'))} | {_pm(_row_metric(r, 'specificity'))} | {at} | "
            f"{_pm(r['worst_site_val_acc'])} | {r['rounds'] if r['seeds'] and r['wall_s'] else '–'} | "
            f"{_pm(r['wall_s'], 0)} | {_pm(r['per_round_s'], 2)} | {_pm(r['startup_s'], 0)} |")


def _pretrained_rows(pre: dict[str, Any], rows: list[dict[str, Any]], plan: dict[str, Any],
                     by_key: dict[str, dict[str, Any]]) -> list[str]:
    seeds = sorted({s for r in rows for s in r["seeds"]})
    # Each pretrained DP row against the row above with the same ε, seed by seed.
    changes = []
    for r in rows:
        plain = by_key.get(r["key"][len(PRETRAINED):])
        if plain is None:
            continue
        before = dict(zip(plain["seeds"], _row_metric(plain, "auc")))
        pairs = [f"seed {sd}: {_num(before[sd], 3)} → {_num(t['auc'], 3)}"
                 for sd, t in zip(r["seeds"], r["test"]) if sd in before]
        if pairs:
            changes.append(f"{r['label'].split(' + ', 1)[1]}: " + ", ".join(pairs))
    start = next((r for r in rows if r["key"] == PRETRAINED + "start" and r["test"]), None)
    return [
        "**A separate set of rows with a pretrained start** (`--init-from`; not part of the targets above, "
        "which have no pretraining). The starting model: `dpcnn` trained by `fedmed pretrain`'s function "
        f"(Adam, lr {plan['lr']:g}, batch {plan['batch']}, {pre.get('epochs', '?')} epochs, no DP) on "
        f"{pre.get('data', '?')}: {pre.get('train_images', '?')} images to train, "
        f"{pre.get('check_images', '?')} to check it (AUC {_num(pre.get('check_auc'), 3)}) and set its threshold. "
        "Those images overlap nothing a run uses: the test split is untouched, the sites' training parts are "
        "the train split's (the same partitions as the rows above), and the sites hold only the other "
        f"{pre.get('sites_val_images', '?')} val images, on which the *at the val threshold* columns of these rows "
        "choose their threshold. The DP rows then train every weight of that start with "
        f"{pre.get('dp_recipe', 'the DP recipe')}; "
        f"seeds {seeds}. With half the val split kept back a small site's val part can be a handful of "
        "images, so the coordinator's example-count check (`--max-example-ratio`) may leave a site's "
        "evaluation out of a round and the worst-site column is rough; the test figures are unaffected.",
        "",
        *_UTILITY_HEADER,
        *[_utility_row(r) for r in rows],
        "",
        *([("Test AUC of the rows above (no start; their model and recipe) → with the pretrained start, "
            "same ε and seed: " + "; ".join(changes) + "."
            + (_against_start(start, rows) if start else ""))] if changes else []),
        "",
    ]


def _against_start(start: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The pretrained start alone against the federations that began from it."""
    alone = start["test"][0]["auc"]
    runs = [t["auc"] for r in rows if r is not start for t in r["test"]]
    below = sum(1 for a in runs if a < alone)
    return (f" The start alone (the same for every seed) scores {_num(alone, 3)}; "
            f"{below} of the {len(runs)} DP federations that began from it end below that: "
            "there the DP-SGD rounds on the sites cost the model more than they taught it.")


# The README's researcher example is the ε = 8 row at this seed (its first `simulate`).
README_SEED = 0
README_TARGET = 0.85


def _readme_example(row: dict | None) -> str | None:
    """The targets-table line for the README's researcher example: DP on by default,
    PneumoniaMNIST over the non-IID sites; the final model's exact AUC on the sites'
    held-out images (their val parts)."""
    if row is None or README_SEED not in row["seeds"]:
        return None
    label = (f"README researcher example (`fedmed simulate --npz …`, DP on by default: the row above at "
             f"ε = 8, seed {README_SEED})")
    required = f"AUC ≥ {README_TARGET} on the sites' held-out images"
    t = row["test"][row["seeds"].index(README_SEED)]
    if "heldout_auc" not in t:
        return f"| {label} | {required} | not measured in this run |"
    sites = ", ".join(f"{_num(site['auc'], 3)} ({site['negative']} normal, {site['positive']} pneumonia)"
                      for site in t["heldout_sites"])
    return (f"| {label} | {required} | AUC {_num(t['heldout_auc'], 3)} on the {sum(site['negative'] + site['positive'] for site in t['heldout_sites'])} "
            f"held-out images of the sites together; per site {sites} — "
            f"{_verdict(t['heldout_auc'] >= README_TARGET)} |")


def _utility(section: dict[str, Any], figures: dict[str, str | None]) -> list[str]:
    lines: list[str] = []
    plan, data = section["plan"], section["data"]
    splits = data["splits"]
    split_text = ", ".join(f"{k} {v['images']} ({v['images'] - v['positive']} normal)" for k, v in splits.items())
    parts = data["partitions_seed0"]
    lines += [
        f"Data: `{data['file']}` (MedMNIST v2, Yang et al. 2023, from Kermany et al. 2018; CC BY 4.0), "
        f"28×28 greyscale chest X-rays, normal (0) vs pneumonia (1). Images used: {split_text}."
        + (f" **Smoke size: a stratified subset ({data['subset']}).**" if data.get("subset") else ""),
        "This copy's train split lacks 826 of the official 1,214 normal images (see the data README), "
        "so training is more imbalanced than in the MedMNIST paper; the val and test splits are the "
        "official ones, so test figures compare with the paper's.",
        "",
        f"Setup: model `{section.get('model', 'cnn')}` (no-DP rows), `{section.get('dp_model', section.get('model', 'cnn'))}` "
        f"(DP rows) on 28×28; {plan['rounds']} rounds × 1 local epoch (federated) or "
        f"{plan['rounds']} epochs (centralised, local-only), so every row sees each training image "
        f"{plan['rounds']} times; no-DP rows: Adam, lr {plan['lr']:g}, batch {plan['batch']}, fedmed's default "
        f"augmentation unless the row says otherwise; DP rows: fedmed's DP recipe — SGD with momentum "
        f"{plan.get('dp_momentum', 0.9):g}, "
        f"lr {plan['dp_lr']:g} decayed by a cosine over the rounds, "
        f"Poisson batches of expected size {plan['dp_batch']}, clipping norm 1.0, no augmentation unless the row says so, "
        f"strategy `{plan.get('dp_strategy', 'fedavg')}` — δ = fedmed's default "
        "(1/(10 N), at most 1e-5), the budget ε spent over the whole run (PRV accountant); "
        f"seeds {list(plan['seeds'])} for the rows marked ± (seed = partition, initial weights and batch order).",
        "Sites of the partitions at seed 0 (train images, of which normal): "
        + "; ".join(f"`{k}`: " + ", ".join(f"{p['images']} ({p['normal']})" for p in v) for k, v in parts.items()) + ".",
        "",
        "ACC, AUC, sensitivity, specificity: the final global model (`model-final.pt`) on the official "
        "**test** split, scored by `fedmed.client.training.evaluate` (threshold: the arg-max class); "
        "bal. ACC: balanced accuracy, the mean of sensitivity and specificity. *At the val threshold*: "
        "sensitivity / specificity / balanced accuracy on the test split at the operating threshold "
        "fedmed's own rule chooses on the sites' pooled validation splits (`choose_threshold`: the "
        "bin edge of the score histograms where sensitivity and specificity are closest), here "
        "from exact histograms; a federated run's own threshold, which the coordinator chose on the "
        "sites' histograms (noised under DP) and the model ships with, is scored in the notes. "
        "Worst-site ACC: the last round's `aggregate.worst_site_accuracy` in `metrics.jsonl`, i.e. "
        "on the sites' own **validation** splits. Wall: the whole run, Ray's start-up included; "
        "s/round: mean of rounds 2..R without it; start-up: wall − R × s/round (Ray, its actors, "
        "the sites' first data load). Local-only cells: the mean over the sites (the worst site below).",
        "",
        *_UTILITY_HEADER,
    ]
    pretrained = [r for r in section["rows"] if r["key"].startswith(PRETRAINED)]
    lines += [_utility_row(r) for r in section["rows"] if not r["key"].startswith(PRETRAINED)]
    for name, acc, auc, note in REFERENCE:
        lines.append(f"| *MedMNIST v2 paper: {name}* ({note}) | {acc:.3f} | {auc:.3f} | – | – | – | – | – | – | – | – | – | – |")
    lines.append("")
    by_key = {r["key"]: r for r in section["rows"]}
    verdicts = []
    for key, required, check in UTILITY_TARGETS:
        row = by_key.get(key)
        if row is None or not row["test"]:
            verdicts.append(f"| {key} | {required} | not measured in this run |")
            continue
        aucs = ", ".join(_num(v, 3) for v in _row_metric(row, "auc"))
        bal = ", ".join(_num(v, 3) for v in _row_metric(row, "balanced_accuracy_at_threshold"))
        met = check(row, by_key.get('centralised'))
        reason = "" if met else (_threshold_miss(row, section) or _drift_miss(section).strip())
        verdicts.append(f"| {row['label']} | {required} | AUC {aucs}; bal. ACC at the val threshold {bal} — "
                        f"{_threshold_verdict(row, met)}{'. ' + reason if reason else ''}"
                        f"{(('' if reason else '.') + ' ' + shipped) if (shipped := _shipped_threshold(row)) else ''} |")
    if (readme := _readme_example(by_key.get("dp-eps8"))) is not None:
        verdicts.append(readme)
    lines += ["Targets (per seed):", "", "| row | target | measured |", "|---|---|---|"] + verdicts + [""]
    lines += [
        "What the rows show. *Centralised* and *Local only* bound the federation from above and below. "
        "*FedAvg … non-IID* is the federation without DP. "
        "The *DP-SGD* rows are fedmed's DP recipe (docs/privacy.md, \"The DP recipe\"): "
        + (f"the `{section.get('dp_model')}` model (a fixed scattering transform, Tramèr & Boneh 2021, and a "
           "linear head: 8 k trained weights against `dpcnn`'s 33 k and the `cnn` model's 421 k), "
           if section.get("dp_model") == "scatternet" else
           "the `dpcnn` model (33 k weights instead of the `cnn` model's 421 k, so the noise per step is 3.6 "
           "times smaller), ")
        + f"SGD (momentum {plan.get('dp_momentum', 0.9):g}) at a cosine-decayed learning rate on Poisson batches "
        f"of {plan['dp_batch']}, plain FedAvg; each "
        "site's noise multiplier is planned for its own size and budget (notes below). Rows that change one "
        "part of the recipe (server momentum, augmentation views), where the run has them, show what that part "
        "is worth; the effect of each other choice, measured one by one, is in docs/privacy.md."
        + (" The rows ending in *seed 2* (no DP) try, at the seed where FedAvg falls furthest short of "
           "centralised training, whether the `scatternet` model or server momentum closes the gap "
           "(targets table above)." if any(r["key"].startswith("drift-") for r in section["rows"]) else ""),
        "",
    ]
    if pretrained:
        lines += _pretrained_rows(section.get("pretraining") or {}, pretrained, section["plan"], by_key)
    local = next((r for r in section["rows"] if r["key"] == "local"), None)
    if local and local["local_sites"]:
        lines += ["Local-only, per site (test split):", "",
                  "| site | train images (normal) | ACC | AUC | sensitivity | specificity |", "|---|---:|---|---|---|---|"]
        for s in local["local_sites"]:
            lines.append(f"| {s['site']} | {s['train_images']} ({s['train_normal']}) | {s['accuracy']:.3f} | "
                         f"{_num(s['auc'], 3)} | {_num(s['sensitivity'], 3)} | {_num(s['specificity'], 3)} |")
        worst = min(local["local_sites"], key=lambda s: s["auc"] if math.isfinite(s["auc"]) else -1)
        lines += ["", f"Worst site alone: ACC {worst['accuracy']:.3f}, AUC {_num(worst['auc'], 3)} ({worst['site']}).", ""]
    notes = [f"- {r['label']}: {n}" for r in section["rows"] for n in r["notes"]]
    if notes:
        lines += ["Notes:", ""] + notes + [""]
    return lines + _figure(figures, "utility_auc", "Test AUC per setting") \
        + _figure(figures, "utility_rounds", "Validation AUC per round")


def _dp(section: dict[str, Any], figures: dict[str, str | None]) -> list[str]:
    lines: list[str] = []
    rows = [dp_cost.Row(**r) for r in section["rows"]]
    modes = ", ".join(f"{k}: {v}" for k, v in section["fedmed_mode"].items())
    lines += [
        f"From `{section['source'].strip()}` (`benchmarks/dp_cost.py`): the same model trained plain "
        "and with DP-SGD (Opacus) on the same batches, interleaved, in a fresh interpreter per row. "
        "DP / plain is the ratio of mean step times from that one run; peak MB is the process's "
        "peak resident set (the `plain` row: a process that ran plain steps only). "
        f"fedmed trains with the grad-sample mode {modes} (`fedmed.client.privacy.dp_sgd.MEASURED_BEST_MODE`). "
        "\"correct\": a noise-free DP step equals the sum of per-record clipped gradients.",
        "",
        dp_cost.markdown(rows),
        "",
    ]
    return lines + _figure(figures, "dp_cost", "DP / plain step time")


def _overhead(section: dict[str, Any], figures: dict[str, str | None]) -> list[str]:
    lines: list[str] = []
    cfg = section["config"]
    lines += [
        "**Overhead** is the part of a round's wall time that is neither training nor evaluation. "
        "A round has a training and an evaluation phase, each ending when the last site replies. "
        "With per-site compute times t₁..tₙ and k sites computing at once, a phase takes at least "
        "C = max(maxᵢ tᵢ, Σᵢ tᵢ / k); overhead = round wall time − C(train) − C(eval). It holds "
        "messaging, serialisation, scheduling, process/actor start, data loading, polling waits and "
        "aggregation; since C is a lower bound, the overhead is an upper bound. k is the number of "
        "Ray actors in a simulation (one per core at one CPU per site) and the number of sites in a "
        "deployment (every SuperNode runs its own ClientApp processes). Training times are the sites' "
        "`train_seconds` from `metrics.jsonl`; it keeps no evaluation times, so each site's evaluation "
        "(a forward pass over its validation split) is re-timed outside the run with the same data, "
        "model and thread count. Round 1 (start-up) is excluded; figures are means over rounds 2..R.",
        "",
        f"Synthetic rows: the same 3 synthetic DICOM sites ({cfg['images_per_site']} images each, "
        f"`cnn` on {cfg['image']}×{cfg['image']}, batch {cfg['batch']}, {cfg['rounds']} rounds, no DP) in "
        "Flower's simulation engine and as a real deployment on loopback (`fedmed server start "
        "--insecure` + 3 × `fedmed client --insecure --no-dp`"
        + ("; the SuperNodes and the coordinator ask for messages at fedmed's adaptive pace, see section 6). "
           if section.get("paced") else
           "; measured with Flower 1.42's fixed 3 s polls at the SuperNodes and the coordinator, before "
           "fedmed paced them: section 6 measures the paced deployment). ")
        + "PneumoniaMNIST rows: the FedAvg non-IID runs of "
        "section 1. *Data load*: the slowest site's time to load its data (timed outside the run); a "
        "simulation's actor keeps one site's data in memory (`_DATA_MEMO` in `client/app.py`), so "
        "with more sites than actors it reloads a site's data whenever it switches site, and that "
        "time is part of the overhead.",
        "",
        "| setting | data | sites at once | wall s/round | compute s (train + eval) | overhead s | overhead % | data load s | start-up s | total s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        if not r.get("wall_s"):
            lines.append(f"| {r['setting']} | {r['data']} | {r['concurrent']} | {r['status']} | | | | | | |")
            continue
        load = max((r.get("load_s") or {}).values(), default=None)
        lines.append(
            f"| {r['setting']} | {r['data']} | {r['concurrent']} | {r['wall_s']:.2f} | "
            f"{r['compute_s']:.2f} ({r['train_s']:.2f} + {r['eval_s']:.2f}) | {r['overhead_s']:.2f} | "
            f"{100 * r['overhead_fraction']:.0f} % | {_num(load, 2)} | {_num(r['startup_s'], 0)} | {r['total_s']:.0f} |")
    b = section["bytes"]
    m, dep, sim = b["model"], b["deployment_measured"], b["simulation_computed"]
    lines += [
        "",
        "Start-up: simulation, wall − R × s/round (Ray, actors, first data load); deployment, time from "
        "starting the processes to the end of round 1.",
        "",
        f"**Bytes per site per round.** The model has {m['parameters']:,} parameters: "
        f"{m['float32_bytes']:,} bytes as float32 (the floor), {m['arrayrecord_proto_bytes']:,} bytes "
        "as Flower's serialised ArrayRecord. A site receives the global model twice per round "
        "(training and evaluation messages) and sends it back once.",
        "",
        "| | site → coordinator | coordinator → site | up / floor | down / (2 × floor) |",
        "|---|---:|---:|---:|---:|",
        f"| deployment, measured on the wire (a byte-counting TCP relay per site; HTTP headers, polls and "
        f"heartbeats included; rounds 2..R) | {_int(dep['up_per_site_round'])} | {_int(dep['down_per_site_round'])} | "
        f"{_num(dep['up_per_site_round'] / m['float32_bytes'], 3)} | "
        f"{_num(dep['down_per_site_round'] / (2 * m['float32_bytes']), 3)} |",
        f"| simulation, computed (messages stay in memory) | {sim['up_per_site_round']:,} | "
        f"{sim['down_per_site_round']:,} | {sim['up_per_site_round'] / m['float32_bytes']:.3f} | "
        f"{sim['down_per_site_round'] / (2 * m['float32_bytes']):.3f} |",
        "",
    ]
    d = section["deployment"]
    if not d.get("completed"):
        lines += [f"The deployment did not complete (exit code {d.get('exit_code')}).", ""]
    sim_mem = section.get("simulation_memory") or {}
    if d.get("memory") and sim_mem:
        lines += [f"Peak memory of everything on this machine (PSS; RSS summed in brackets): the simulation "
                  f"{sim_mem['peak_pss_mib']:.0f} MiB ({sim_mem['peak_rss_mib']:.0f} MiB), the deployment — "
                  f"coordinator and the three sites' processes — {d['memory']['peak_pss_mib']:.0f} MiB "
                  f"({d['memory']['peak_rss_mib']:.0f} MiB).", ""]
    return lines + _figure(figures, "round_overhead", "Round time split")


def _scale(section: dict[str, Any], figures: dict[str, str | None]) -> list[str]:
    lines: list[str] = []
    size = section["size"]
    lines += [
        f"Each site holds {size['train_per_site']} training and {size['val_per_site']} validation images "
        f"of PneumoniaMNIST (IID), `cnn` on 28×28, batch 32, {size['rounds']} rounds, no DP, one CPU "
        "per site (so one Ray actor per core, taking the sites in turn). Peak memory of the whole "
        "process tree (this process, which runs the coordinator, plus Ray's daemons and actors), "
        "sampled from /proc every 0.5 s: RSS summed over processes counts the libraries they share "
        "once per process; PSS splits shared pages between them and is the tree's real footprint.",
        "",
        "| sites | actors | wall s/round | start-up s | peak RSS (sum) | peak PSS | largest actor RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        actor = max([v for k, v in r["memory"]["per_kind_peak_rss_mib"].items()
                     if k.startswith("ray::ClientAppActor")] or [float("nan")])
        if r["status"] != "completed":
            lines.append(f"| {r['sites']} | {r['concurrent']} | {r['status']}: {r['reason']} | | | | |")
            continue
        lines.append(f"| {r['sites']} | {r['concurrent']} | {r['per_round_s']:.2f} | {r['startup_s']:.0f} | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['peak_pss_mib']:.0f} MiB | {_num(actor, 0)} MiB |")
    e = section["extrapolation"]
    lines.append("")
    text = [f"**Where {e['limit_gib']} GiB runs out** (extrapolated, not reached):"]
    if "pss_mib_per_site" in e:
        fit = e.get("sites_fitting_default_actors")
        text.append(f"at one actor per core, the peak PSS grows by {e['pss_mib_per_site']:.1f} MiB per site "
                    f"(straight line through the measured points, {e['pss_mib_intercept']:.0f} MiB at zero sites)"
                    + (f", which reaches {e['limit_gib']} GiB near {fit:,} sites." if fit else
                       "; it does not grow with the sites, so the sites do not set the limit."))
    if "actor_pss_mib" in e:
        text.append(f"One actor takes {e['actor_rss_mib']:.0f} MiB RSS ({e['actor_pss_mib']:.0f} MiB PSS, "
                    "torch's libraries shared with the other actor split off); with one actor per site "
                    "(every site training at once, as on a machine with a core per site, or with "
                    f"`cpus_per_site` lowered) about {e.get('sites_fitting_one_actor_per_site', '–')} sites "
                    f"fit, after {e['non_actor_pss_mib']:.0f} MiB for the coordinator and Ray's daemons. "
                    "More actors share the libraries more ways, so this is a cautious figure.")
    lines += [" ".join(text), ""]
    return lines + _figure(figures, "scale", "Scale")


def _data(section: dict[str, Any], figures: dict[str, str | None]) -> list[str]:
    lines: list[str] = []
    s = section["settings"]
    lines += [
        f"A site load (`load_dicom_site`, {s['size']}×{s['size']} output): header scan, cache lookup, "
        "decode + preprocess (modality LUT, VOI/window, MONOCHROME1 inversion, resize, normalise) of "
        "whatever the cache lacks, patient split. *Cold*: an empty state folder, so everything is "
        "decoded and then cached (the files are in the OS page cache: fedmed's cache is cold, the "
        "disk is not). *Cached*: the same load again. Single-process, one image at a time.",
        "",
        "| folder | transfer syntax | matrix | bits | images | cold images/s | cached images/s | speed-up |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(f"| {r['source']} | {r['transfer_syntax']} | {r['matrix']} | {r['bits_stored']} | "
                     f"{r['images']} | {r['cold_images_per_s']:.0f} | {r['cached_images_per_s']:.0f} | "
                     f"{r['cached_images_per_s'] / r['cold_images_per_s']:.1f}× |")
    lines += [
        "",
        "\"re-encoded\": the synthetic files re-encoded as JPEG 2000 Lossless with pydicom's encoder "
        "(pylibjpeg-openjpeg). No JPEG-LS encoder is installed here, so JPEG-LS is measured on the "
        "test files that ship with pydicom, one file at a time through `load_image` "
        f"(decode + preprocess, no cache; mean of {section['size']['repeats']} loads):",
        "",
        "| pydicom test file | transfer syntax | matrix | bits | ms/image | images/s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for f in section["test_files"]:
        lines.append(f"| `{f['file']}` | {f['transfer_syntax']} | {f['matrix']} | {f['bits_stored']} | "
                     f"{f['ms_per_image']:.1f} | {f['images_per_s']:.0f} |")
    lines.append("")
    return lines + _figure(figures, "data_throughput", "Site load throughput")


# The section-6 figures that sit near their targets, in the words the repeats use.
_REPEATED = (("round_gap_s", "the round gap", "s", 2), ("round1_s", "launch to the end of round 1", "s", 1),
             ("pss_mib", "peak PSS", "MiB", 0))


def _repeat_summary(section: dict[str, Any]) -> str:
    """How often each near-the-line figure met its target over the run above and its
    repeats in the same sitting (`repeats`: further runs of the same code), and its range."""
    runs = [{"figures": section["figures"], "met": section["met"]}] + list(section.get("repeats") or [])
    if len(runs) < 2:
        return ""
    words = []
    for key, name, unit, digits in _REPEATED:
        values = [r["figures"][key] for r in runs]
        met = sum(bool(r["met"][key]) for r in runs)
        words.append(f"{name} met its target in {met} of {len(runs)} ({_num(min(values), digits)}–"
                     f"{_num(max(values), digits)} {unit})")
    return (f"Run {len(runs)} times in this sitting on the same code, " + ", ".join(words)
            + ": these figures sit on their targets, and one run's verdict turns on the machine's noise.")


def _cpu_floor(cpu: dict, cores) -> str:
    """Words for the least wall time per round that each side's CPU needs on this many
    cores, and the gap between them that no waiting explains."""
    if not isinstance(cores, int) or cores < 1 or cpu.get("simulation") is None:
        return ""
    dep, sim = cpu["deployment"] / cores, cpu["simulation"] / cores
    return (f", which alone takes at least {_num(dep, 2)} s of wall time per round against {_num(sim, 2)} s: "
            f"{_num(dep - sim, 2)} s of the gap before any waiting or any core left idle")


def _speed(section: dict[str, Any], figures: dict[str, str | None]) -> list[str]:
    cfg, f, t, met = section["config"], section["figures"], section["targets"], section["met"]
    sim, dep = section["rows"][0], section["rows"][1]
    idle = section.get("idle", {})
    load = section.get("load", {})
    lines = [
        f"The same task in one sitting: 3 sites × {cfg['per_site']} PneumoniaMNIST images as DICOM "
        f"(one patient each; the 80/20 patient split leaves about {int(cfg['per_site'] * 0.8)} training "
        f"images per site), `{cfg['model']}` on {cfg['image']}×{cfg['image']}, {cfg['epochs']} epoch, batch "
        f"{cfg['batch']}, {cfg['optimizer'].upper()}, no DP, {cfg['rounds']} rounds; first Flower's "
        "simulation engine, then a real deployment on loopback (`fedmed server start --insecure` + 3 × "
        "`fedmed client --insecure --no-dp`, each site through a relay counting its bytes and Fleet API "
        "requests, and with one compute thread, `OMP_NUM_THREADS=1`, as the simulation gives each site one "
        "CPU). Both start with empty site state, so both decode their images in round 1. "
        f"Measured {section.get('measured_utc', '?')} UTC on {section.get('cores', '?')} CPU cores, shared "
        "with other work during the sitting: load average "
        f"{_num(load.get('start'), 1)} at the start, {_num(load.get('end'), 1)} at the end.",
        "",
        "| figure | measured | target | |",
        "|---|---:|---:|---|",
        f"| deployed round − simulated round (median of rounds 2..R) | {_num(f['round_gap_s'], 2)} s "
        f"({_num(dep['median_round_s'], 2)} − {_num(sim['median_round_s'], 2)}) | ≤ {t['round_gap_s']:g} s | "
        f"{_verdict(met['round_gap_s'])} |",
        f"| launch → end of round 1, deployment | {_num(f['round1_s'], 1)} s | ≤ {t['round1_s']:g} s | "
        f"{_verdict(met['round1_s'])} |",
        *([f"| launch → end of round 1, deployment again with the sites' image caches warm | "
           f"{_num(f['round1_warm_s'], 1)} s | ≤ {t['round1_s']:g} s | {_verdict(met['round1_warm_s'])} |"]
          if "round1_warm_s" in f else []),
        f"| peak PSS, coordinator + 3 sites | {_num(f['pss_mib'], 0)} MiB ({_num(f['pss_mib'] * 2**20 / 1e9, 2)} GB) "
        f"| ≤ 2.0 GB | {_verdict(met['pss_mib'])} |",
        f"| `fedmed --help` wall time (median of 3) | {_num(f['help_s'], 2)} s"
        + (f" ({_num(section['help_cpu_s'], 2)} s of CPU)" if section.get("help_cpu_s") is not None else "")
        + f" | ≤ {t['help_s']:g} s | "
        f"{_verdict(met['help_s'])} |",
        f"| idle site → coordinator requests | {_num(f['idle_rate'], 2)} /s ({_int(idle.get('requests'))} in "
        f"{_num(idle.get('seconds'), 0)} s) | ≤ {t['idle_rate']:g} /s | {_verdict(met['idle_rate'])} |",
        "",
        *([_repeat_summary(section), ""] if section.get("repeats") else []),
        "| run | status | median round s (2..R) | round 1 s | whole run s | median training s per site | "
        "peak PSS MiB | processes |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (sim, dep):
        lines.append(f"| {r['setting']} | {r['status']} | {_num(r['median_round_s'], 2)} | {_num(r['round1_s'], 1)} | "
                     f"{_num(r['total_s'], 0)} | {_num(r['train_median_s'], 2)} | "
                     f"{_num(r['memory']['peak_pss_mib'], 0)} | {r['memory']['peak_processes']} |")
    cpu = section.get("cpu_per_round_s") or {}
    if cpu.get("simulation") is not None and cpu.get("deployment") is not None:
        lines += ["", f"CPU time per round (median of rounds 2..R, every process of the run, user + system): "
                  f"simulation {_num(cpu['simulation'], 2)} s, deployment {_num(cpu['deployment'], 2)} s. CPU time "
                  "follows the machine's load less than wall time does, though contention for caches and shared "
                  "cores still inflates it: compare the figures of one sitting."]
    by_kind = section.get("cpu_per_round_by_kind_s") or {}
    if by_kind:
        lines += ["", "The deployment's CPU per round by process (median of rounds 2..R; the three sites' "
                  "processes of a kind summed):", "",
                  "| process | CPU s per round | what it does in a round |", "|---|---:|---|"]
        for name, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            if seconds < 0.005:  # `flwr run`, gone after submitting; a process caught mid-exec
                continue
            lines.append(f"| {name} | {_num(seconds, 2)} | {_PROCESS_ROLE.get(name, '')} |")
    kinds = dep["memory"].get("per_kind_peak_pss_mib", {})
    calls = section.get("calls_per_site_round") or {}
    by_call = ", ".join(f"{name} {_num(n, 0)}" for name, n in sorted(calls.items(), key=lambda kv: -kv[1])
                        if n >= 0.5)
    startup = section.get("startup") or {}
    lines += [
        "",
        "Deployment rounds, s: " + ", ".join(_num(v, 2) for v in dep["round_s"]) + "; simulation rounds, s: "
        + ", ".join(_num(v, 2) for v in sim["round_s"]) + ".",
        "",
        "Largest single process of each kind in the deployment (PSS MiB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])) + ".",
        "",
        *_memory_by_process(dep["memory"]),
        f"Requests per site: {_num(section.get('busy_requests_per_site_round'), 0)} Fleet API requests per "
        f"round while a run is active ({_num(section.get('busy_requests_per_site_s'), 1)} per second of "
        "round" + (f"; by call: {by_call}" if by_call else "") + "), "
        f"{_num(f['idle_rate'], 2)} per second when idle. A message's model travels packed, one flat array "
        "per dtype, its bytes and layout fields of a record the message carries anyway (`common/packed_arrays.py`; "
        "a model too large for one of Flower's array chunks travels as an array record instead), and a site's "
        "metrics travel as fields of its status record (`common/reply_fields.py`), so a message or a reply is "
        "three objects (message, record dict, config or status record), each pulled or pushed with its own "
        "request. While a round is in flight a "
        "site first asks for its next message after 70 % of the shorter of its last two waits, and the "
        "ServerApp first asks its SuperLink for a phase's replies after 70 % of the shorter of the last two "
        "phases of that kind (`client/fleet_polling.py`, `server/fast_grid.py`); then every 20–250 ms.",
        "",
    ]
    if startup.get("round1_s") is not None:
        cpu_line = ""
        if startup.get("cpu_s") is not None:
            top = sorted((startup.get("cpu_by_kind_s") or {}).items(), key=lambda kv: -kv[1])[:4]
            cpu_line = (f" By then the deployment's processes had used {_num(startup['cpu_s'], 1)} s of CPU — on "
                        f"{section.get('cores', '?')} cores at least {_num(startup['cpu_s'] / (section.get('cores') or 1), 1)} s "
                        "of wall time, before any other work on the machine — most of it in "
                        + ", ".join(f"{k} {_num(v, 1)} s" for k, v in top) + " (the three sites' processes of a "
                        "kind summed).")
        lines += [f"Start-up, s from launch: every site joined by {_num(startup.get('joined_s'), 1)}, every site "
                  f"had round 1's first message by {_num(startup.get('first_message_s'), 1)}, round 1 ended at "
                  f"{_num(startup['round1_s'], 1)}.{cpu_line}", ""]
    before, after = section.get("before"), section.get("after_same_sitting")
    if before and after:
        def at_peak(run: dict[str, Any], kind: str) -> str:
            values = run["at_peak_pss_mib"].get(kind) or []
            return "–".join(f"{v:.0f}" for v in (sorted({min(values), max(values)}) if values else [])) or "none"

        compared = sorted(set(before["at_peak_pss_mib"]) | set(after["at_peak_pss_mib"]),
                          key=lambda k: -sum(before["at_peak_pss_mib"].get(k) or [0]))
        lines += [
            f"Against {before['what']}, the same benchmark run in one sitting: the earlier code at "
            f"{before['measured_utc']} UTC (load average {_num(before['load'].get('start'), 1)}–"
            f"{_num(before['load'].get('end'), 1)}), this code at {after['measured_utc']} UTC (load average "
            f"{_num(after['load'].get('start'), 1)}–{_num(after['load'].get('end'), 1)}). Peak PSS "
            f"{_num(before['pss_mib'], 0)} → {_num(after['pss_mib'], 0)} MiB; at the peak, each process of a kind "
            "(MiB, the range over the sites' processes): "
            + "; ".join(f"{k} {at_peak(before, k)} → {at_peak(after, k)}" for k in compared)
            + (". The figures above are from the run of this code"
               if after["measured_utc"] == section.get("measured_utc") else
               f". The figures above are from a later run ({section.get('measured_utc', '?')} UTC), of code that "
               "changed since (fewer objects per message, the executor's images read from a cache that a "
               "short-lived child fills)")
            + (f"; other runs of this code's deployment the same day peaked at "
               + ", ".join(f"{v:.0f}" for v in section["other_runs_pss_mib"]) + " MiB: the peak moves by tens of "
               "MiB from run to run (which processes are mid-round when it is sampled, how pages are shared)"
               if section.get("other_runs_pss_mib") else "") + ".", ""]
    reasons = []
    if sim["status"] != "completed":
        reasons.append(f"the simulation did not complete in this sitting ({sim.get('reason') or sim['status']}), "
                       "so the round gap is measured only over the rounds it finished, if any")
    if not met["round_gap_s"] and len(_finite([dep["train_median_s"], sim["train_median_s"]])) == 2:
        link = by_kind.get("flower-superlink")
        cpu_words = (
            f"the deployment's processes used {_num(cpu['deployment'], 2)} s of CPU per round against "
            f"{_num(cpu['simulation'], 2)} s for the whole simulation, on {section.get('cores', '?')} cores that "
            "training shares" + _cpu_floor(cpu, section.get("cores")) + ". The waiting is gone; what is left is "
            "CPU in the message path"
            + (f", most of it in Flower's SuperLink ({_num(link, 2)} s per round): every Fleet API request "
               "(the sites') and ServerAppIo request (the ServerApp's) is handled there in Python, and a profile "
               "(py-spy) put about half of that in its HTTP stack's per-request work (uvicorn, Starlette "
               "middleware, FastAPI routing, protobuf translation) and about a fifth in SQLite queries on its "
               "state database (fedmed keeps it on disk for `--resume`), so its cost follows the number of "
               "requests, not their size" if link is not None else "")
            if cpu.get("deployment") is not None else "")
        if dep["train_median_s"] > sim["train_median_s"]:
            reasons.append(
                f"round gap: a deployed site's training took {_num(dep['train_median_s'], 2)} s (median) against "
                f"{_num(sim['train_median_s'], 2)} s in the simulation — three sites train at once on "
                f"{section.get('cores', '?')} shared cores in the deployment, the simulation runs two one-thread "
                "actors — which explains only that difference" + (f"; the rest is CPU: {cpu_words}" if cpu_words else ""))
        else:
            reasons.append(
                f"round gap: not training (a deployed site trained in {_num(dep['train_median_s'], 2)} s, a "
                f"simulated one in {_num(sim['train_median_s'], 2)} s) but moving the messages"
                + (f": {cpu_words}" if cpu_words else ""))
    if not met["round1_s"]:
        reasons.append(f"start-up: round 1 of the deployment took {_num(dep['round1_s'], 1)} s from launch "
                       "(timeline above): the coordinator's chain is sequential — the SuperLink starts and "
                       "listens, `flwr run` submits the run, the coordinator's executor starts the ServerApp — and each "
                       "of these is a Python process importing Flower, while the three sites' executors import "
                       "torch and their SuperNodes import Flower on the same cores; then every site decodes its "
                       "images (in a short-lived child of its executor, unless its image cache is warm). The ServerApp no longer imports torch or builds the model: a child process that "
                       "`fedmed server start` starts next to the SuperLink writes round 1's weights. What is left "
                       "is CPU-bound on this machine (the CPU used by the end of round 1 is above), and on a "
                       "machine of its own a real site does its part in parallel with the coordinator. Flower's "
                       f"simulation needed {_num(sim['round1_s'], 1)} s for its round 1 after Ray started")
    if not met["pss_mib"]:
        def kind(name: str) -> str:
            return _num(kinds.get(name), 0)
        reasons.append(
            f"memory: {_num(f['pss_mib'], 0)} MiB at the peak, {_num(f['pss_mib'] - t['pss_mib'], 0)} MiB over "
            "2.0 GB" + (f" (other runs of this code: {min(section['other_runs_pss_mib']):.0f}–"
                        f"{max(section['other_runs_pss_mib']):.0f} MiB)" if section.get("other_runs_pss_mib") else "")
            + "; what each process holds is above. Three sites' "
            "executors are most of it, and in each `import torch` alone leaves about 270 MiB of private memory "
            "on this machine's CUDA build of torch, 81 MiB of it cuBLASLt's static tables, loaded with torch even "
            "where no GPU is used (a site without a GPU could install torch's CPU build); Flower's code is most "
            f"of the rest: the SuperLink ({kind('flower-superlink')} MiB), a SuperNode per site "
            f"({kind('fedmed.client.fleet_polling')} MiB each) and the ServerApp's runtime in the coordinator's "
            f"executor ({kind('fedmed.server.app_executor')} MiB), each importing Flower's HTTP stack and "
            "SQLAlchemy. Lever left, as measured: torch's CPU build at a site without a GPU (cuBLASLt alone is "
            "81 MiB per executor); the sites' DICOM scan and decode already run in a short-lived child that "
            "fills the image cache, so no executor holds pydicom")
    if reasons:
        lines += ["Missed targets, as measured: " + "; ".join(reasons) + ".", ""]
    return lines


# What each process of a deployment holds in memory and why it exists, for the memory
# paragraph: (kind, count per deployment, words).
_PROCESS_MEMORY = (
    ("fedmed.client.app_executor", "one per site",
     "the site's executor: it takes the SuperNode's tasks and runs fedmed's installed ClientApp on them "
     "(only for approved app bundles), so it holds torch, Flower's task client and the site's decoded "
     "images between rounds. It reads those images from the site's image cache; when the site's folder "
     "changed, a short-lived child (`client/sitedata/fill.py`) scans and decodes it into the cache first, "
     "so pydicom is never loaded here, and it scores its validation split 32 images at a time, which keeps "
     "an evaluation's peak below the training round's. It trains with fedmed's own SGD and Adam "
     "(`client/optimizers.py`), so torch's "
     "compiler (`torch._dynamo` and SymPy, which `torch.optim` loads on first use: about 80 MiB) is never "
     "loaded; Opacus is loaded only at a site with DP on; freed buffers of 4 MiB and more go back to the "
     "system at once. It is kept out of the SuperNode so that what the coordinator sends is checked (the "
     "bundle's hash) before any code runs and a training failure cannot take the site's connection down, "
     "and it serves every task of the run so that torch is imported once per site, not once per message"),
    ("fedmed.client.fleet_polling", "one per site",
     "the site's SuperNode (Flower's, started through fedmed's polling wrapper): the site's only "
     "connection to the coordinator (TLS, the site's key); it holds Flower with its HTTP stack, FastAPI "
     "and SQLAlchemy, which Flower's SuperNode imports, and no torch"),
    ("flower-superlink", "one",
     "the coordinator's SuperLink (Flower): the Fleet API for the sites and the ServerAppIo API for the "
     "ServerApp, its state in SQLite for `--resume`"),
    ("fedmed.server.app_executor", "one",
     "the coordinator's executor: it takes the run's ServerApp task from the SuperLink and runs fedmed's "
     "ServerApp in its own process with Flower's ServerApp runner (`server/app_executor.py`) — aggregates "
     "numpy arrays, checks the updates, writes checkpoints; Flower's runtime, no torch. It replaces Flower's "
     "SuperExec and the `flwr-serverapp` process that one starts for each run (about 90 and 130 MiB)"),
    ("fedmed", "one per site and one for the coordinator",
     "the launchers (`fedmed client`, `fedmed server start`): they start, supervise and stop the "
     "processes above and follow the run folder, holding typer, cryptography and fedmed's light modules; "
     "their checks run in short-lived children — the site's data check (pydicom) and the app bundle's hash "
     "(Flower) — and the coordinator's draws the run's report (matplotlib) once the run has ended"),
)
_SHORT_LIVED = ("fedmed.server.starting_point (torch: builds round 1's model, then exits), flwr (`flwr run` "
                "submits the run), fedmed.common.app_bundle (hashes the app bundle), fedmed.client.supernode "
                "(the site's data check before it joins), fedmed.client.sitedata.fill (reads a site's changed "
                "DICOM folder into its image cache for the executor)")


def _memory_by_process(memory: dict[str, Any]) -> list[str]:
    """What each process holds and why it exists, with its PSS at the deployment's peak."""
    at_peak = memory.get("at_peak_pss_mib")
    if not at_peak:
        return []
    lines = [f"Memory at the deployment's peak ({memory['peak_pss_mib']:.0f} MiB PSS), by process. Every process "
             "the launchers start runs with one glibc malloc arena (`MALLOC_ARENA_MAX=1`, `common/processes.py`): "
             "by default each thread that allocates gets an arena of its own, whose freed memory stays resident.",
             ""]
    for name, count, words in _PROCESS_MEMORY:
        values = at_peak.get(name) or []
        size = ("not running at the peak" if not values else
                f"{values[0]:.0f} MiB" if len(values) == 1 else
                "–".join(f"{v:.0f}" for v in sorted({round(min(values)), round(max(values))}))
                + f" MiB each, {sum(values):.0f} MiB together")
        lines.append(f"- {name} ({count}; {size}): {words}.")
    known = {name for name, _, _ in _PROCESS_MEMORY}
    others = [f"{k} {sum(v):.0f} MiB" for k, v in at_peak.items() if k not in known]
    lines.append("- short-lived, and not at the peak" + (f" (except {', '.join(others)})" if others else "")
                 + ": " + _SHORT_LIVED + ".")
    return lines + [""]


# What each kind of process does during a deployed round, for the CPU table.
_PROCESS_ROLE = {
    "flower-superlink": "answers every Fleet (sites) and ServerAppIo (ServerApp) request",
    "fedmed.client.app_executor": "trains and evaluates (the three sites)",
    "fedmed.client.fleet_polling": "the sites' SuperNodes: poll, pull and push the messages' objects",
    "flwr-serverapp": "aggregates, checks updates, writes checkpoints and metrics",
    "flower-superexec": "asks the SuperLink for ServerApp tasks",
    "fedmed.server.app_executor": "the ServerApp: aggregates, checks updates, writes checkpoints and metrics",
    "fedmed": "the launchers: follow the run folder, supervise",
    "fedmed.server.starting_point": "builds round 1's model once, at launch (short-lived)",
    "fedmed.common.app_bundle": "hashes the app bundle for the audit log, at launch (short-lived)",
    "fedmed.client.supernode": "the site's data check before it joins (short-lived)",
    "fedmed.client.sitedata.fill": "reads a site's changed DICOM folder into its image cache (short-lived)",
}


def _threshold_miss(row: dict[str, Any], section: dict[str, Any], floor: float = 0.80) -> str:
    """Why a DP row whose ranking is good misses its balanced-accuracy floor, in words: the
    operating threshold comes from the validation split, and the test split's images of a
    class score elsewhere. Empty when that is not what happened (a low AUC is its own
    reason)."""
    if not row["key"].startswith("dp-") or min(_row_metric(row, "auc")) < 0.9:
        return ""
    low = [(seed, t) for seed, t in zip(row["seeds"], row["test"])
           if t.get("balanced_accuracy_at_threshold", 1.0) < floor]
    if not low:
        return ""
    at = "; ".join(f"seed {seed}: sensitivity {t['sensitivity_at_threshold']:.3f}, specificity "
                   f"{t['specificity_at_threshold']:.3f}" for seed, t in low)
    seed, t = low[0]
    if "val_negative_median_logit" not in t:
        return (f"The ranking is good at every seed; the balanced accuracy misses at the threshold "
                f"chosen on the validation split ({at}).")
    return (f"The ranking is good at every seed; the balanced accuracy misses at the threshold chosen "
            f"on the validation split ({at}): the test split's normal images score higher than the "
            f"validation split's (seed {seed}: median logit {t['test_negative_median_logit']:.1f} against "
            f"{t['val_negative_median_logit']:.1f}; pneumonia images {t['test_positive_median_logit']:.1f} "
            f"against {t['val_positive_median_logit']:.1f}), so a threshold set on validation data calls "
            "more of them pneumonia. The test images were collected apart from the training and "
            "validation images: a shift in the images, not in the class mix, to which balanced "
            "accuracy does not respond.")


def _threshold_verdict(row: dict[str, Any], met: bool, floor: float = 0.80) -> str:
    """The verdict of a row whose target includes a balanced accuracy: met at the threshold
    chosen on exact validation histograms is not met for the model as shipped when the
    threshold it ships with (a DP run's, chosen on noised histograms) falls short."""
    if not met or row["key"] != "dp-eps8":
        return _verdict(met)
    shipped = [t.get("balanced_accuracy_at_run_threshold") for t in row["test"]]
    if shipped and all(v is not None for v in shipped) and min(shipped) < floor:
        return "met at the threshold chosen without noise, **missed** at the threshold the model ships with"
    return _verdict(met)


def _shipped_threshold(row: dict[str, Any], floor: float = 0.80) -> str:
    """The balanced accuracy at the threshold each run's model ships with (the coordinator's,
    chosen on the sites' noised histograms), when the row's runs recorded it."""
    shipped = [t.get("balanced_accuracy_at_run_threshold") for t in row["test"]]
    if not row["key"].startswith("dp-") or any(v is None for v in shipped) or not shipped:
        return ""
    thresholds = ", ".join(f"{t['run_threshold']:.4f}" for t in row["test"])
    return (f"At the threshold the model ships with (chosen on the sites' noised histograms of the "
            f"run's second half, pooled: {thresholds}) the balanced accuracy is {', '.join(_num(v, 3) for v in shipped)}"
            + (f", **below {floor:.2f}**: the noise of the private evaluation releases, not the data, "
               "decides that threshold (docs/privacy.md, \"The operating threshold\")." if min(shipped) < floor
               else "."))


def _drift_miss(section: dict[str, Any]) -> str:
    """What the one-seed rows at the no-DP federation's hard seed (`drift-*`) measured, in
    words; empty when the run has none."""
    by_key = {r["key"]: r for r in section.get("rows", []) if r.get("test")}
    base, central = by_key.get("fedavg-noniid"), by_key.get("drift-centralised-scatternet")
    tried = [r for k, r in by_key.items() if k.startswith("drift-fedavg")]
    if not (base and central and tried):
        return ""
    seed = central["seeds"][0]
    sizes = section.get("data", {}).get("partitions_drift_seed") or []
    where = (" (training images " + ", ".join(f"{p['images']} ({p['normal']} normal)" for p in sizes) + ")"
             if sizes else "")
    at_seed = dict(zip(base["seeds"], _row_metric(base, "auc")))
    central_dp = by_key.get("centralised")
    central_at = dict(zip(central_dp["seeds"], _row_metric(central_dp, "auc"))) if central_dp else {}
    versus = (f" (`{section.get('model', 'dpcnn')}`: {_num(at_seed[seed], 3)} federated against "
              f"{_num(central_at[seed], 3)} centralised)" if seed in at_seed and seed in central_at else "")
    # The labels read "<strategy> non-IID, scatternet, …, lr <lr>".
    each = ", ".join(f"{_num(r['test'][0]['auc'], 3)} ({r['label'].split(' ', 1)[0]}, lr "
                     f"{r['label'].rsplit('lr ', 1)[-1]})" for r in tried)
    return (f" At seed {seed}{where}, where the gap lies{versus}, `scatternet` (a linear head on fixed "
            f"features: a convex problem) without augmentation reaches {_num(central['test'][0]['auc'], 3)} "
            f"trained centrally and {each} federated: it drifts no less, so no measured change closes the "
            f"gap, and the no-DP rows keep `{section.get('model', 'dpcnn')}` with augmentation.")


DRIFT_LABELS = {
    "fedavg": "FedAvg (the federation as section 1 runs it)",
    "centralised": "one site holding every image (centralised training)",
    "iid": "the same images split at random (IID)",
    "uniform": "sites averaged with equal weights",
    "fednova": "FedNova: updates normalised by local steps (Wang et al. 2020)",
    "class-weighted": "class-weighted loss at each site",
    "logit-adjusted": "logit-adjusted loss at each site (Menon et al. 2021; FedLC, Zhang et al. 2022)",
    "fedprox": "FedProx, μ {fedprox_mu:g} (Li et al. 2020)",
    "scaffold": "SCAFFOLD, local SGD lr {scaffold_lr:g} (Karimireddy et al. 2020)",
    "server-lr": "local lr {server_lr_local:g}, server step {server_lr:g} (Reddi et al. 2021)",
}


def _drift_label(key: str, settings: dict[str, Any]) -> str:
    return DRIFT_LABELS.get(key, key).format(**settings) if settings else DRIFT_LABELS.get(key, key)


def _drift_aucs(section: dict[str, Any]) -> tuple[dict[str, float], str | None]:
    """The drift rows' test AUC by variant, and the best remedy's key (None without one):
    the remedies are the variants other than the loop's references."""
    by_key = {r["key"]: r["auc"] for r in section.get("rows", [])}
    remedies = [k for k in by_key if k not in ("fedavg", "centralised", "iid")]
    return by_key, max(remedies, key=by_key.get) if remedies else None


def _drift_headline(section: dict[str, Any]) -> str:
    """One sentence on the plain-loop remedies (section 1b) for the headline; empty without them."""
    by_key, best = _drift_aucs(section)
    if best is None or "centralised" not in by_key:
        return ""
    remedies = len(by_key) - len({"fedavg", "centralised", "iid"} & set(by_key))
    return (f" Replayed in a plain loop (section 1b), {remedies} remedies for client drift (reweighting, "
            "FedNova, class-weighted and logit-adjusted losses, FedProx, SCAFFOLD, a server learning rate) "
            f"reach at best {_num(by_key[best], 3)} ({_drift_label(best, section.get('settings', {}))}) "
            f"against {_num(by_key['centralised'], 3)} for the loop with every image at one site.")


def _drift(section: dict[str, Any], figures: dict[str, str | None]) -> list[str]:
    rows = section.get("rows", [])
    if not rows:
        return []
    sites = rows[0].get("sites") or []
    where = ", ".join(f"{p['images']} ({p['normal']} normal)" for p in sites)
    lines = [
        f"Why the no-DP federation falls short of centralised training at seed {section['seed']} (training "
        f"images per site: {where}): the same federation replayed in a plain in-process loop "
        f"(`benchmarks/client_drift.py`: no Flower, no DP; `{section['model']}`, Adam at "
        f"{section['settings']['lr']:g}, batches of {section['settings']['batch']}, fedmed's augmentation, "
        f"{section['rounds']} rounds of one local epoch, weights averaged by example count), one change "
        "at a time. Test AUC on the official test split after the last round, and its range over the last "
        "five rounds (a single round's figure moves by a few hundredths).",
        "",
        "| variant | test AUC | last five rounds | s |",
        "|---|---:|---|---:|",
    ]
    settings = section.get("settings", {})
    for r in rows:
        tail = r["curve"][-5:]
        lines.append(f"| {_drift_label(r['key'], settings)} | {_num(r['auc'], 3)} | "
                     f"{_num(min(tail), 3)}–{_num(max(tail), 3)} | {_num(r['seconds'], 0)} |")
    lines += ["", _drift_reading(section), ""]
    return lines


def _drift_reading(section: dict[str, Any]) -> str:
    """What the drift rows say, in words."""
    by_key, best = _drift_aucs(section)
    if not {"fedavg", "centralised"} <= set(by_key):
        return ""
    text = (f"The loop reproduces the gap: {_num(by_key['fedavg'], 3)} federated against "
            f"{_num(by_key['centralised'], 3)} with every image at one site")
    if "iid" in by_key:
        text += f", and {_num(by_key['iid'], 3)} when the same images are split at random"
    text += ": the label skew of the partition, more than federating as such, costs the AUC."
    if best is not None:
        closes = by_key[best] >= by_key["centralised"] - 0.01
        text += (f" Of the remedies, the best is {_drift_label(best, section.get('settings', {}))} at "
                 f"{_num(by_key[best], 3)}: " + ("it closes the gap." if closes else
                 "none closes the gap. One site holds most pneumonia images and almost no normal ones; "
                 "its local epoch can only learn that everything it sees is pneumonia, and what the "
                 "other sites learn about normal images is averaged against it. Reweighting, "
                 "proximal terms and control variates change how much of that update is kept, not "
                 "what it contains."))
    return text


# --- the headline ------------------------------------------------------------------------
GPU_RESULTS = "gpu-path.json"


def _gpu(doc_dir: Path) -> list[str]:
    """The site's GPU path, from the JSON `python -m benchmarks.gpu_path --out` wrote on a
    machine with a GPU (this suite's own machine has none)."""
    path = doc_dir / PLOTS / GPU_RESULTS
    if not path.exists():
        return []
    gpu = json.loads(path.read_text())
    lines = ["## 7. The GPU path", "",
             f"`python -m benchmarks.gpu_path --out {PLOTS}/{GPU_RESULTS}`, run on a machine with one "
             f"{gpu['gpu']} (torch {gpu['torch']}): one epoch of 2048 random images per row, on the GPU "
             "and on that machine's CPU, plain and DP-SGD, after a warm-up pass. Every row trained on "
             "`cuda:0` and returned finite weights.", "",
             "| model | size | batch | DP mode | GPU ms/step | GPU DP ms/step | DP/plain on GPU | "
             "CPU ms/step | CPU DP ms/step | GPU speed-up, DP | peak GPU MiB |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in gpu["rows"]:
        lines.append(
            f"| {r['model']} | {r['image_size']} | {r['batch']} | {r['gpu_dp']['mode']} | "
            f"{r['gpu_plain']['step_ms']:.2f} | {r['gpu_dp']['step_ms']:.2f} | {r['gpu_dp_over_plain']:.2f}× | "
            f"{r['cpu_plain']['step_ms']:.1f} | {r['cpu_dp']['step_ms']:.1f} | {r['gpu_speedup_dp']:.1f}× | "
            f"{r['gpu_peak_mib']:.0f} |")
    return lines + [""]


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def headline_markdown(results: dict[str, Any], link: bool = True) -> str:
    """The paragraph the README quotes, with every target's verdict and, if missed, why.

    link: end with a link to docs/benchmarks.md (the README's view of it).
    """
    h = headline(results)
    sections = results.get("sections", {})
    smoke = results.get("smoke")
    parts = []
    if smoke:
        parts.append("**Smoke-size figures (tiny data, 2 rounds): they prove the benchmark runs, not "
                     "how well fedmed does; run `python -m benchmarks all` for the real ones.**")
    util_rows = {r["key"]: r for r in sections.get("utility", {}).get("rows", [])}
    if "fedavg" in h:
        f = h["fedavg"]
        seeds = f"mean ± std over {f['seeds']} seeds" if f["seeds"] > 1 else "one seed"
        text = (f"On PneumoniaMNIST's official test split, FedAvg over 3 non-IID sites (Dirichlet 0.5) "
                f"reaches AUC {f['fed_auc']} against {f['central_auc']} for centralised training of the "
                f"same model for the same number of epochs ({seeds}): a gap of {f['gap']:.3f}, target "
                f"≤ {TARGETS['fedavg_gap']} — {_verdict(f['met'])}.")
        if not f["met"]:
            local = util_rows.get("local", {}).get("local_sites") or []
            sizes = ", ".join(f"{s['train_images']} ({s['train_normal']} normal)" for s in local)
            text += (" The likely cause is the label skew: the sites differ widely (training images "
                     f"at seed 0: {sizes}), and a local epoch on such different label "
                     "mixes pulls the sites' models apart before they are averaged (client drift).")
            text += _drift_miss(sections.get("utility", {}))
            text += _drift_headline(sections.get("drift", {}))
        parts.append(text)
    central = util_rows.get("centralised")
    for key, required, check in UTILITY_TARGETS:
        row = util_rows.get(key)
        if not key.startswith("dp-") or row is None or not row.get("test"):
            continue
        eps = key.removeprefix("dp-eps")
        aucs = _row_metric(row, "auc")
        per_seed = ", ".join(_num(v, 3) for v in aucs)
        seeds = f"mean ± std over {len(aucs)} seeds: {per_seed}" if len(aucs) > 1 else f"one seed"
        text = (f"With record-level DP-SGD at ε = {eps} per site (over the whole run; fedmed's DP recipe, "
                f"docs/privacy.md) the AUC is {_pm(aucs)} ({seeds}); balanced accuracy at a threshold chosen "
                f"on the validation splits {_pm(_row_metric(row, 'balanced_accuracy_at_threshold'))}; target "
                f"{required} — {_threshold_verdict(row, check(row, central))}.")
        if not check(row, central) and (reason := _threshold_miss(row, sections.get("utility", {}))):
            text += " " + reason
        if shipped := _shipped_threshold(row):
            text += " " + shipped
        parts.append(text)
    if "dp_ratio" in h:
        d = h["dp_ratio"]
        parts.append(f"A DP-SGD step of the small CNN on 28×28 costs {d['ratio']:.2f}× a plain step "
                     f"(Opacus, `{d['mode']}` mode).")
    if "sim_overhead" in h:
        o = h["sim_overhead"]
        text = (f"Flower's simulation adds {o['seconds']:.2f} s of overhead to a {o['wall']:.2f} s round "
                f"({100 * o['fraction']:.0f} %; {o['data']}, mean of {o['runs']} run(s)); target < "
                f"{100 * TARGETS['sim_overhead']:.0f} % — {_verdict(o['met'])}.")
        if not o["met"]:
            params = sections.get("overhead", {}).get("bytes", {}).get("model", {}).get("parameters")
            model = f"a {params / 1000:.0f} k-parameter CNN" if params else "a small CNN"
            text += (f" The sites' compute per round is only {o['compute']:.2f} s ({model} on 28×28 "
                     "images), so the per-round cost of passing messages through Ray weighs heavily")
            # Reloading data is worth naming only where it is a real part of the overhead.
            if o.get("load") and o["load"] >= 0.1 * o["seconds"]:
                text += (f", and with 3 sites on 2 actors an actor reloads a site's data (up to "
                         f"{o['load']:.2f} s) whenever it switches site")
            text += "; larger models or more local epochs shrink the share."
        parts.append(text)
    if "deployment_overhead" in h:
        o = h["deployment_overhead"]
        parts.append(f"A real deployment on loopback spends {o['seconds']:.1f} s of a {o['wall']:.1f} s round "
                     f"({100 * o['fraction']:.0f} %) outside training and evaluation"
                     + ("." if o["paced"] else
                        " (measured with Flower 1.42's fixed 3 s polls, before fedmed paced them)."))
    if "speed" in h:
        sp, met = h["speed"]["figures"], h["speed"]["met"]
        parts.append(
            f"Deployment against simulation, same task and sitting (load average "
            f"{_num(h['speed']['load'].get('start'), 1)}–{_num(h['speed']['load'].get('end'), 1)} on this shared "
            f"machine): a deployed round takes {_num(sp['round_gap_s'], 2)} s longer than a simulated one (target "
            f"≤ 1 s, {_verdict(met['round_gap_s'])})"
            + (f" and {_num(h['speed']['cpu']['deployment'], 2)} s of CPU against the simulation's "
               f"{_num(h['speed']['cpu']['simulation'], 2)} s (CPU time, which the load inflates less than wall time)"
               if h["speed"].get("cpu", {}).get("deployment") is not None
               and h["speed"]["cpu"].get("simulation") is not None else "")
            + f", launch to the end of round 1 {_num(sp['round1_s'], 1)} s "
            f"(≤ 15 s, {_verdict(met['round1_s'])}), peak PSS of coordinator and 3 sites "
            f"{_num(sp['pss_mib'] * 2**20 / 1e9, 2)} GB (≤ 2.0 GB, {_verdict(met['pss_mib'])}), `fedmed --help` "
            f"{_num(sp['help_s'], 2)} s (≤ 1 s, {_verdict(met['help_s'])}), an idle site "
            f"{_num(sp['idle_rate'], 2)} requests/s (≤ 0.5, {_verdict(met['idle_rate'])})."
            + (" " + _repeat_summary(h["speed"]) if h["speed"].get("repeats") else ""))
    if link:
        parts.append("Details, setup and machine: [docs/benchmarks.md](docs/benchmarks.md).")
    return " ".join(parts) + "\n"


# --- writing -----------------------------------------------------------------------------
SECTION_WRITERS = (
    ("utility", "## 1. Utility on real data: PneumoniaMNIST", _utility),
    ("drift", "## 1b. The no-DP gap at the hard seed, remedy by remedy", _drift),
    ("dp", "## 2. DP cost per training step", _dp),
    ("overhead", "## 3. Round overhead and bytes on the wire", _overhead),
    ("scale", "## 4. Scale: 3, 10, 30 sites", _scale),
    ("data", "## 5. Data: DICOM decode and preprocess throughput", _data),
    ("speed", "## 6. Deployment against simulation, one sitting", _speed),
)


def write(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write OUT/benchmarks.md, OUT/benchmarks/*.png and OUT/benchmarks-headline.md."""
    out = Path(out)
    fig_dir = out / PLOTS
    sections = results.get("sections", {})
    util = sections.get("utility", {})
    figures = {
        "utility_auc": plots.utility_auc(
            util, (f"MedMNIST v2 {REFERENCE[0][0]} ({REFERENCE[0][3]})", REFERENCE[0][2]),
            fig_dir / "utility-auc.png"),
        "utility_rounds": plots.utility_rounds(util, fig_dir / "utility-rounds.png"),
        "dp_cost": plots.dp_cost(sections.get("dp", {}), fig_dir / "dp-cost.png"),
        "round_overhead": plots.round_overhead(sections.get("overhead", {}), fig_dir / "round-overhead.png"),
        "scale": plots.scale(sections.get("scale", {}), fig_dir / "scale.png"),
        "data_throughput": plots.data_throughput(sections.get("data", {}), fig_dir / "data-throughput.png"),
    }
    lines = ["# fedmed benchmarks", ""]
    size = "smoke" if results.get("smoke") else "full"
    lines += [f"Written by `{results['command']}` ({size} size) on {results['machine']['date_utc']} UTC; "
              f"the raw numbers are in [`{PLOTS}/results.json`]({PLOTS}/results.json).", ""]
    if results.get("smoke"):
        lines += ["> **Smoke size**: tiny data and 2 rounds, to show that every benchmark runs. These "
                  "numbers say nothing about fedmed's accuracy or speed; `python -m benchmarks all` "
                  "measures the full size.", ""]
    lines += ["## Headline", "", headline_markdown(results, link=False), ""]
    lines += _machine(results)
    for name, title, writer in SECTION_WRITERS:
        if name in sections:
            section = sections[name]
            # A section that failed, or was skipped for want of its data, says why instead.
            why = section.get("skipped") or section.get("error")
            lines += [title, ""] + ([f"**Not run:** {why}", ""] if why else writer(section, figures))
    lines += _gpu(out)
    lines += [
        "## References", "",
        "- Yang, J. et al. MedMNIST v2 — A large-scale lightweight benchmark for 2D and 3D biomedical "
        "image classification. Scientific Data 10, 41 (2023).",
        "- Kermany, D. S. et al. Identifying Medical Diagnoses and Treatable Diseases by Image-Based "
        "Deep Learning. Cell 172(5), 1122–1131 (2018).",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    doc = out / "benchmarks.md"
    doc.write_text("\n".join(lines))
    snippet = out / "benchmarks-headline.md"
    snippet.write_text(headline_markdown(results))
    return {"doc": doc, "headline": snippet}
