"""Section 4: how a simulation grows with the number of sites.

Each site gets the same small IID share of PneumoniaMNIST (a stratified subset of
`sites × per-site` images), so only the number of sites changes between runs. Peak
memory is that of the whole process tree, Ray's daemons and actors included
(`benchmarks.proctree`).

What to expect: Flower's Ray backend starts one actor per `cpus_per_site` of the machine's
cores, not one per site, and the actors take the sites' messages in turn. So time per
round grows with the sites (the same actors do more work), while memory grows mostly with
the number of actors; the sites add only their replies held at the coordinator and their
data, loaded one site at a time per actor.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.common.federation import FederationConfig
from fedmed.common.settings import ImageSettings
from fedmed.simulations.sites import npz_sites

from benchmarks import pneumonia, simrun

GIB = 1024 ** 3
MIB = 1024 ** 2
LIMIT_GIB = 24
FULL = {"sites": (3, 10, 30), "train_per_site": 100, "val_per_site": 30, "rounds": 3}
SMOKE = {"sites": (3, 10), "train_per_site": 30, "val_per_site": 10, "rounds": 2}


def _log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def _actor_mib(memory: dict[str, Any], key: str) -> float:
    """The largest single site actor (Ray titles it ``ray::ClientAppActor...``)."""
    sizes = [v for k, v in memory[key].items() if k.startswith("ray::ClientAppActor")]
    return max(sizes) if sizes else float("nan")


def extrapolate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where 24 GiB runs out, from a straight line through the measured peaks.

    Two limits: more sites at the default one actor per core (the fitted slope per
    site), and one actor per site -- every site training at once, which a machine with
    a core per site would do -- at the measured memory of one actor.
    """
    done = [r for r in rows if r["status"] == "completed"]
    out: dict[str, Any] = {"limit_gib": LIMIT_GIB}
    if len(done) >= 2:
        x = np.array([r["sites"] for r in done], dtype=float)
        y = np.array([r["peak_pss_mib"] for r in done], dtype=float)
        slope, intercept = np.polyfit(x, y, 1)
        out["pss_mib_per_site"] = float(slope)
        out["pss_mib_intercept"] = float(intercept)
        out["sites_fitting_default_actors"] = (
            int((LIMIT_GIB * GIB / MIB - intercept) / slope) if slope > 0 else None)
    if done:
        largest = done[-1]
        actor_rss = _actor_mib(largest["memory"], "per_kind_peak_rss_mib")
        actor_pss = _actor_mib(largest["memory"], "per_kind_peak_pss_mib")
        # Everything that is not an actor: the driver (coordinator), Ray's daemons.
        rest = largest["peak_pss_mib"] - largest["concurrent"] * actor_pss
        out.update(actor_rss_mib=actor_rss, actor_pss_mib=actor_pss, non_actor_pss_mib=rest)
        if actor_pss > 0:
            out["sites_fitting_one_actor_per_site"] = int((LIMIT_GIB * GIB / MIB - rest) / actor_pss)
    return out


def run(work: Path, smoke: bool) -> dict[str, Any]:
    size = SMOKE if smoke else FULL
    source = pneumonia.locate()
    if source is None:
        return pneumonia.skipped("scale")
    rows = []
    for n in size["sites"]:
        npz = pneumonia.write_subset(source, work / f"subset-{n}.npz",
                                     {"train": n * size["train_per_site"], "val": n * size["val_per_site"],
                                      "test": 10}, seed=0)
        config = FederationConfig(rounds=size["rounds"], batch_size=32, image=ImageSettings(size=28),
                                  min_sites=n, seed=0)
        sites = npz_sites(npz, n, "iid", 0, work / f"sites{n}" / "state", PrivacyPolicy(enabled=False))
        _log(f"{n} sites, {size['rounds']} rounds")
        r = simrun.run(f"scale-{n}", sites, config, work / f"sites{n}" / "run")
        rows.append({"sites": n, "status": r.status, "reason": r.reason, "rounds": r.rounds_planned,
                     "concurrent": r.concurrent, "per_round_s": r.per_round_s, "startup_s": r.startup_s,
                     "total_s": r.total_s, "peak_rss_mib": r.memory["peak_rss_mib"],
                     "peak_pss_mib": r.memory["peak_pss_mib"], "memory": r.memory,
                     "load": [r.load_before, r.load_after]})
        _log(f"{n} sites: {r.per_round_s:.1f} s/round, peak PSS {r.memory['peak_pss_mib']:.0f} MiB")
    return {"size": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
            "rows": rows, "extrapolation": extrapolate(rows)}
