"""Section 6: fedmed's deployment against Flower's simulation, the same task in one sitting.

The task: three sites of real PneumoniaMNIST images (each site a DICOM folder of
`PER_SITE` images, one patient each, so the 80/20 patient split gives it about 600
training images), `cnn` on 28×28, one local epoch, batch 32, SGD, no DP. First Flower's
simulation engine runs it (`simrun`), then a real deployment on loopback
(`fedmed server start --insecure` + three `fedmed client --insecure --no-dp`, each site
through a relay that counts its bytes and Fleet API requests, `deployment.run`; each
site's processes with one compute thread, as the simulation gives each site one CPU). Both
start with empty site state, so both decode their images in round 1.

Figures:
- round: the median of rounds 2..R of each run's `seconds` (metrics.jsonl: from one
  round's evaluation to the next's); the gap is deployed − simulated;
- launch → end of round 1: from starting the coordinator and the sites together to the
  first row of metrics.jsonl (the sites connect while the coordinator starts);
- peak PSS: the deployment's processes (coordinator and sites, not this benchmark),
  sampled every 0.5 s (`proctree`); the simulation's is its whole Ray tree;
- `fedmed --help`: wall time of the installed command, median of three;
- requests: Fleet API requests per site, busy (during the run) and idle (a site
  connected to a SuperLink with no run, after its active window).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedmed.client.fleet_polling import ACTIVE_WINDOW_S
from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.common.federation import FederationConfig
from fedmed.common.processes import executable, flower_env, free_port, start, stop, wait_for_port
from fedmed.common.settings import ImageSettings
from fedmed.simulations.sites import dicom_sites

from benchmarks import deployment, pneumonia, simrun

SITES = ("A", "B", "C")
# The simulation gives each site one CPU (one thread per Ray actor); the deployed sites
# get the same, so that both runs do the same compute. Three sites with torch's default
# of one thread per core would oversubscribe the cores, and torch's threads spin while
# they wait: on a loaded machine that alone made deployed training several times slower.
ONE_CPU = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FULL = {"rounds": 6, "per_site": 750, "idle_s": 30.0}
SMOKE = {"rounds": 2, "per_site": 40, "idle_s": 6.0}
# Issue targets: round gap s, launch → end of round 1 s, peak PSS MiB (2.0 GB), --help s,
# idle requests per second per site.
TARGETS = {"round_gap_s": 1.0, "round1_s": 15.0, "round1_warm_s": 15.0, "pss_mib": 2.0e9 / 2 ** 20,
           "help_s": 1.0, "idle_rate": 0.5}


def _log(msg: str) -> None:
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


def _median_later(seconds: list[float]) -> float:
    later = seconds[1:] or seconds
    return statistics.median(later) if later else float("nan")


def _fedmed() -> list[str]:
    script = Path(sys.executable).parent / "fedmed"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fedmed.cli.main"]


def help_seconds(times: int = 3) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of `fedmed --help`; on a shared machine
    the wall time follows the load, the CPU time does not."""
    walls, cpus = [], []
    for _ in range(times):
        t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(_fedmed() + ["--help"], capture_output=True, check=True, timeout=120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        walls.append(time.perf_counter() - t0)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def idle_rate(data: Path, work: Path, seconds: float) -> dict[str, Any]:
    """Fleet API requests per second of one `fedmed client` connected to a SuperLink that
    has no run, counted on the wire once its active window after joining has passed."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    link = start([executable("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                  "--disable-runtime-dependency-installation"], open(work / "superlink.log", "wb"),
                 flower_env({"FLWR_HOME": str(work / "flwr")}))
    relay = deployment.Relay(("127.0.0.1", port))
    site = None
    try:
        if not wait_for_port("127.0.0.1", port, 120, link):
            return {"error": "the SuperLink did not start"}
        site = start(_fedmed() + ["client", "--site", "A", "--data", str(data), "--server",
                                  f"127.0.0.1:{relay.port}", "--state", str(work / "state"), "--insecure",
                                  "--no-dp"], open(work / "client.log", "wb"), dict(os.environ))
        deadline = time.monotonic() + 180
        while relay.request_count() < 2 and time.monotonic() < deadline:  # register + activate
            time.sleep(0.2)
        time.sleep(ACTIVE_WINDOW_S + 1.0)
        before = relay.request_count()
        time.sleep(seconds)
        count = relay.request_count() - before
        return {"requests": count, "seconds": seconds, "per_s": count / seconds}
    finally:
        for process in (site, link):
            if process is not None:
                stop(process)
        relay.close()


def run(work: Path, smoke: bool) -> dict[str, Any]:
    npz = pneumonia.locate()
    if npz is None:
        return pneumonia.skipped("deployment-against-simulation")
    size = SMOKE if smoke else FULL
    data = work / "data"
    _log(f"writing {len(SITES)} DICOM sites × {size['per_site']} PneumoniaMNIST images")
    pneumonia.write_dicom_sites(npz, data, SITES, size["per_site"], seed=0)
    config = FederationConfig(rounds=size["rounds"], epochs=1, batch_size=32, lr=0.01, optimizer="sgd",
                              model="cnn", image=ImageSettings(size=28), min_sites=len(SITES), seed=0)
    load0 = os.getloadavg()[0]

    _log("Flower simulation")
    sim = simrun.run("speed-simulation", dicom_sites(data, work / "sim-state", PrivacyPolicy(enabled=False)),
                     config, work / "sim-run")
    _log("deployment on loopback")
    dep = deployment.run(data, SITES, work / "deployment", rounds=config.rounds, image_size=28, batch_size=32,
                         timeout=900.0, extra=["--model", "cnn", "--optimizer", "sgd", "--lr", "0.01", "--epochs", "1"],
                         site_env=ONE_CPU)
    # A consortium repeats experiments: the sites' decoded-image caches from the first run
    # are there, as they are for any run after a site's first.
    _log("deployment again, sites' caches warm: launch → end of round 1")
    warm = deployment.run(data, SITES, work / "deployment", rounds=1, image_size=28, batch_size=32,
                          timeout=600.0, extra=["--model", "cnn", "--optimizer", "sgd", "--lr", "0.01", "--epochs", "1"],
                          site_env=ONE_CPU)
    _log("idle site request rate")
    idle = idle_rate(data / "A", work / "idle", size["idle_s"])
    _log("fedmed --help")
    help_s, help_cpu_s = help_seconds()

    dep_round_s = [float(r["seconds"]) for r in dep["rounds"]]
    sim_median, dep_median = _median_later(sim.round_s), _median_later(dep_round_s)
    wall_after_1 = [r["end_s"] - prev["end_s"] for prev, r in zip(dep["rounds"], dep["rounds"][1:])]
    busy_requests = [sum(r["requests"].values()) / len(SITES) for r in dep["rounds"][1:]]
    train = {
        "simulation": _median_later([statistics.median(v["train"].values()) for v in sim.rounds
                                     if v.get("train")] or [float("nan")]),
        "deployment": _median_later([statistics.median(r["train"].values()) for r in dep["rounds"]]
                                    or [float("nan")]),
    }
    pss = dep["memory"]["peak_pss_mib"]
    # CPU seconds per round (rounds 2..R) of every process of each run: what a round costs
    # whatever the machine's load (its wall time follows the load).
    cpu_per_round = {
        "simulation": _median_later([0.0] + [b - a for a, b in zip(sim.cpu_marks, sim.cpu_marks[1:])])
        if len(sim.cpu_marks) > 1 else None,
        "deployment": _median_later([0.0] + [b["cpu_s"] - a["cpu_s"] for a, b in zip(dep["rounds"], dep["rounds"][1:])])
        if len(dep["rounds"]) > 1 else None,
    }
    # The same per kind of process (three sites' SuperNodes are one kind), and each site's
    # Fleet API requests per round by call.
    later = list(zip(dep["rounds"], dep["rounds"][1:]))
    kinds = sorted({k for r in dep["rounds"] for k in r.get("cpu_by_kind", {})})
    cpu_by_kind = {k: statistics.median(b["cpu_by_kind"].get(k, 0.0) - a["cpu_by_kind"].get(k, 0.0)
                                        for a, b in later) for k in kinds} if later else {}
    calls = sorted({c for r in dep["rounds"] for site in r.get("calls", {}).values() for c in site})
    calls_per_site_round = {c: statistics.median(
        sum(b["calls"][s].get(c, 0) - a["calls"][s].get(c, 0) for s in SITES) / len(SITES) for a, b in later)
        for c in calls} if later else {}
    first_call = dep.get("first_call_s", {})

    def last_site(call: str) -> float | None:
        """When the last of the sites first made `call`, s from launch."""
        times = [v[call] for v in first_call.values() if call in v]
        return max(times) if times and len(times) == len(SITES) else None

    # Launch → all sites joined (register-node) → all have round 1's first message
    # (get-run, asked when a run's first message arrives) → end of round 1.
    # CPU of every process from launch to the end of round 1: on a machine whose cores all
    # the processes share, start-up is bound by it.
    first = dep["rounds"][0] if dep["rounds"] else {}
    startup = {"joined_s": last_site("register-node"), "first_message_s": last_site("get-run"),
               "round1_s": dep["time_to_round1_s"], "cpu_s": first.get("cpu_s"),
               "cpu_by_kind_s": first.get("cpu_by_kind")}
    figures = {
        "round_gap_s": dep_median - sim_median,
        "round1_s": dep["time_to_round1_s"],
        "round1_warm_s": warm["time_to_round1_s"] if warm["completed"] else None,
        "pss_mib": pss,
        "help_s": help_s,
        "idle_rate": idle.get("per_s"),
    }
    return {
        "measured_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "config": {"rounds": config.rounds, "per_site": size["per_site"], "batch": 32, "image": 28,
                   "model": "cnn", "optimizer": "sgd", "epochs": 1},
        "rows": [
            {"setting": "simulation", "status": sim.status, "reason": sim.reason[:300], "round_s": sim.round_s,
             "median_round_s": sim_median, "round1_s": sim.round_s[0] if sim.round_s else None,
             "total_s": sim.total_s, "memory": sim.memory, "train_median_s": train["simulation"]},
            {"setting": "deployment", "status": "completed" if dep["completed"] else f"failed (exit {dep['exit_code']})",
             "round_s": dep_round_s, "median_round_s": dep_median, "round1_s": dep["time_to_round1_s"],
             "total_s": dep["total_s"], "memory": dep["memory"], "train_median_s": train["deployment"],
             "wall_between_rows_s": wall_after_1},
        ],
        "figures": figures,
        "targets": TARGETS,
        "met": {k: (v is not None and v <= TARGETS[k]) for k, v in figures.items()},
        "idle": idle,
        "help_cpu_s": help_cpu_s,
        "cpu_per_round_s": cpu_per_round,
        "cpu_per_round_by_kind_s": cpu_by_kind,
        "calls_per_site_round": calls_per_site_round,
        "startup": startup,
        "busy_requests_per_site_round": statistics.median(busy_requests) if busy_requests else None,
        "busy_requests_per_site_s": (statistics.median(b / w for b, w in zip(busy_requests, wall_after_1))
                                     if busy_requests else None),
        "load": {"start": load0, "end": os.getloadavg()[0]},
        "cores": os.cpu_count(),
    }
