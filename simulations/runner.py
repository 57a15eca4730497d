"""One machine, many sites: a federation in Flower's simulation engine (Ray).

The coordinator's code (ServerApp, strategy, run folder) and each site's code (ClientApp,
data pipeline, training) are exactly those of a deployment; only the transport differs.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from fedmed.client.app import make_client_app
from fedmed.client.privacy.noise_check import kept_warning
from fedmed.client.site import Site
from fedmed.client.state_lock import StateLocked, state_lock
from fedmed.common.federation import FederationConfig
from fedmed.server.app import make_server_app
from fedmed.common.interrupts import stop_at_once
from fedmed.server.outputs import read_status, write_interrupted, write_run_report


@contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    """Flower logs every message exchange at INFO and warns that the Python entry point
    is deprecated; a researcher wants the round table, not that."""
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


@contextmanager
def _sites_locked(sites: list[Site]) -> Iterator[None]:
    """Each simulated site holds its state folder as `fedmed client` does: two runs on the
    same folders would spend the same privacy budget twice."""
    with ExitStack() as stack:
        for site in sites:
            Path(site.state_dir).mkdir(parents=True, exist_ok=True)
            try:
                stack.enter_context(state_lock(Path(site.state_dir)))
            except StateLocked as exc:
                raise ValueError(str(exc)) from None
        yield


def _record_stop(out_dir: Path, planned: int) -> Callable[[str], str]:
    """What Ctrl-C/SIGTERM leaves behind: status.json `interrupted`, and one line."""
    def on_stop(how: str) -> str:
        if not (out_dir / "config.json").exists():
            return f"interrupted by {how} before the first round; nothing to keep"
        done = write_interrupted(out_dir, how)["rounds_completed"]
        return (f"interrupted by {how} after {done} of {planned} round(s); "
                f"{out_dir / 'status.json'} says so, checkpoints are in {out_dir / 'checkpoints'}")
    return on_stop


class _SiteWarnings:
    """Each site's noise-to-signal warning (`noise_check.keep_warning`), passed on once.

    A simulated site runs in a Ray worker whose output the researcher sees only with
    --verbose; its warning is also kept in its state folder on this machine, where the
    researcher (who holds every site's data) reads it. A warning already there when the
    run starts was made for an earlier run.
    """

    def __init__(self, sites: list[Site], say: Callable[[str, str], None] | None) -> None:
        self._sites = [site for site in sites if site.privacy.enabled] if say is not None else []
        self._say = say
        self._before = {site.name: kept_warning(Path(site.state_dir)) for site in self._sites}
        self._told: set[str] = set()

    def check(self) -> None:
        for site in self._sites:
            kept = kept_warning(Path(site.state_dir))
            if site.name not in self._told and kept is not None and kept != self._before[site.name]:
                self._told.add(site.name)
                self._say(site.name, kept[1])


def _gpus_per_site(num_sites: int) -> float:
    import torch

    return 1.0 / num_sites if torch.cuda.is_available() else 0.0


def simulate(
    sites: list[Site],
    config: FederationConfig,
    out_dir: Path,
    *,
    ray_address: str | None = None,
    cpus_per_site: float = 1.0,
    meta: dict[str, Any] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_site_warning: Callable[[str, str], None] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the federation over `sites`; return the run's status (see `status.json`).

    `on_site_warning(site, text)` is called once per site whose DP plan warns that its
    noise will swamp the signal, before the row of the first round that follows."""
    from flwr.simulation import run_simulation

    if len(sites) < config.min_sites:
        raise ValueError(f"min sites: the federation needs {config.min_sites} sites, "
                         f"the simulation has {len(sites)}")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from fedmed.client.privacy.round import key_simulated_site

    for site in sites:  # reproducible DP randomness: one person holds every simulated site
        key_simulated_site(site.state_dir, config.seed, site.name)
    by_partition = dict(enumerate(sites))

    def resolve(context) -> Site:
        return by_partition[int(context.node_config["partition-id"])]

    warnings_ = _SiteWarnings(sites, on_site_warning)

    def round_done(record: dict[str, Any]) -> None:
        warnings_.check()  # the sites trained this round before its row is written
        if on_round is not None:
            on_round(record)

    meta = {"mode": "simulation", "sites": [s.name for s in sites], **(meta or {})}
    init_args: dict[str, Any] = {"logging_level": "error", "log_to_driver": verbose}
    if ray_address:
        init_args["address"] = ray_address
    # Ray hides the GPU from actors that reserve none; sites share it when there is one.
    gpus = _gpus_per_site(len(sites))
    backend_config = {
        "client_resources": {"num_cpus": cpus_per_site, "num_gpus": gpus},
        "init_args": init_args,
    }
    with _quiet_flower(verbose), _sites_locked(sites), stop_at_once(_record_stop(Path(out_dir), config.rounds)):
        run_simulation(
            server_app=make_server_app(config, Path(out_dir), meta, round_done),
            client_app=make_client_app(resolve),
            num_supernodes=len(sites),
            backend_config=backend_config,
        )
    warnings_.check()  # a run that ended before any round's row
    status = read_status(Path(out_dir)) or {"status": "failed", "reason": "the run ended without a status"}
    status["report"] = write_run_report(Path(out_dir))
    return status
