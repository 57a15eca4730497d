"""`fedmed server start`: a SuperLink, the fedmed app submitted to it, the rounds watched.

The coordinator's machine runs three things: the SuperLink (Flower's coordinator process,
which the sites' SuperNodes connect to), the ServerApp it starts for the run (fedmed's
`server/app.py`, which writes the run folder), and this function, which submits the run,
prints a table row as each round lands in `metrics.jsonl`, and turns the run's
`status.json` into an exit code — Flower itself reports a run whose sites all failed as
completed.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

from fedmed.common.federation import FederationConfig
from fedmed.common.processes import executable, flower_env, split_address, start, stop, wait_for_port
from fedmed.server import progress
from fedmed.server.app import RUN_CONFIG_KEY
from fedmed.server.flower_app import write_app_dir
from fedmed.server.outputs import CONFIG_FILE, METRICS_FILE, read_status, write_json

CONNECTION = "fedmed"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class DeploymentError(RuntimeError):
    """The federation could not be started; the message says what to do."""


@dataclass
class ServerOptions:
    out_dir: Path
    config: FederationConfig
    address: str = "127.0.0.1:9092"
    insecure: bool = False
    startup_timeout: float = 60.0


def _flwr_home(out_dir: Path, host: str, port: int) -> Path:
    home = out_dir / ".flwr"
    home.mkdir(parents=True, exist_ok=True)
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{connect}:{port}"\ninsecure = true\n'
    )
    return home


def _submit(out_dir: Path, home: Path) -> str:
    app_dir = write_app_dir(out_dir / ".app", version("fedmed"))
    config_path = (out_dir / CONFIG_FILE).resolve()
    cmd = [executable("flwr"), "run", str(app_dir), CONNECTION,
           "--run-config", f"{RUN_CONFIG_KEY}='{config_path}'", "--format", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=flower_env({"FLWR_HOME": str(home)}),
                          timeout=120)
    if done.returncode != 0:
        raise DeploymentError(f"submitting the run to the SuperLink failed (exit {done.returncode}): "
                              f"{(done.stdout + done.stderr).strip()[-500:]}")
    try:
        return str(json.loads(done.stdout).get("run-id", "?"))
    except json.JSONDecodeError:
        return "?"


def _follow(out_dir: Path, superlink: subprocess.Popen, deadline: float,
            emit: Callable[[str], None]) -> dict:
    """Print rows as metrics.jsonl grows; return status.json once the run has written it."""
    printed = 0
    metrics_path = out_dir / METRICS_FILE
    while True:
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        for line in lines[printed:]:
            if line.strip():
                emit(progress.row(json.loads(line)))
        printed = len(lines)
        status = read_status(out_dir)
        if status is not None:
            return status
        if superlink.poll() is not None:
            return {"status": "failed",
                    "reason": f"the SuperLink exited with code {superlink.returncode}; "
                              f"see {out_dir / 'superlink.log'}"}
        if time.monotonic() > deadline:
            return {"status": "failed", "reason": "the run did not finish in time "
                    "(rounds × round timeout); raise --round-timeout or check the sites"}
        time.sleep(0.5)


def start_server(options: ServerOptions, emit: Callable[[str], None] = print) -> int:
    """Run a whole federation from this machine; 0 when it completed, 1 when it failed."""
    host, port = split_address(options.address, "--address")
    if not options.insecure:
        raise DeploymentError("TLS is not set up for this coordinator yet: pass --insecure "
                              "to run without it (loopback only)")
    if options.insecure and host not in LOOPBACK:
        raise DeploymentError(f"--address {options.address}: an --insecure coordinator binds "
                              "only to loopback (127.0.0.1); use TLS to accept remote sites")
    out_dir = Path(options.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (METRICS_FILE, "status.json"):
        (out_dir / stale).unlink(missing_ok=True)
    write_json(out_dir / CONFIG_FILE, {"federation": options.config.to_dict(), "mode": "deployment",
                                       "address": options.address, "insecure": options.insecure})
    home = _flwr_home(out_dir, host, port)
    log_file = open(out_dir / "superlink.log", "ab")
    cmd = [executable("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation",
           "--database", str(out_dir / "superlink.db")]
    if options.insecure:
        cmd.append("--insecure")
    superlink = start(cmd, log_file, flower_env({"FLWR_HOME": str(home)}))
    try:
        if not wait_for_port(host, port, options.startup_timeout, superlink):
            raise DeploymentError(f"the SuperLink did not start on {host}:{port} "
                                  f"(port in use?); see {out_dir / 'superlink.log'}")
        run_id = _submit(out_dir, home)
        emit(f"fedmed coordinator on {host}:{port}, run {run_id}: waiting for "
             f"{options.config.min_sites} site(s); outputs in {out_dir}")
        emit(progress.header())
        deadline = time.monotonic() + options.startup_timeout + options.config.rounds * options.config.round_timeout * 2
        status = _follow(out_dir, superlink, deadline, emit)
    finally:
        stop(superlink)
        log_file.close()
    if status["status"] == "completed":
        emit(f"run completed: {status.get('rounds_completed', options.config.rounds)} rounds; "
             f"final model {out_dir / 'model-final.pt'}")
        return 0
    emit(f"run failed: {status.get('reason', 'unknown reason')}")
    return 1
