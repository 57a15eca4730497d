"""`fedmed server start`: a SuperLink, the fedmed app submitted to it, the rounds watched.

The coordinator's machine runs, by default (TLS):

- the SuperLink (Flower's coordinator process) bound to 127.0.0.1 on a free port, with
  TLS and SuperNode authentication: only SuperNodes whose keys were enrolled join;
- fedmed's proxy (`server/proxy.py`) on the public `--address`: TLS with the
  coordinator's certificate, Fleet API calls passed to the SuperLink, everything else
  (run submission, stopping, enrolment) refused — those stay on loopback;
- the run's ServerApp (`server/app.py`), which writes the run folder, run by fedmed's
  coordinator executor (`server/app_executor.py`) once the run is submitted: the SuperLink
  runs with `--isolation process` and starts no process of its own;
- this function, which enrolls the sites' keys, submits the run, prints a table row as
  each round lands in `metrics.jsonl`, turns the run's `status.json` into an exit code
  (Flower itself reports a run whose sites all failed as completed), and writes run
  start and end to the audit log.

`--insecure` (no TLS, no site authentication, no proxy) is for trying fedmed on one
machine and binds to loopback only. `--resume` continues an interrupted run folder
after its last completed round.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fedmed.common.certs import CertError, server_material
from fedmed.common.federation import FederationConfig
from fedmed.common.interrupts import EXIT_INTERRUPTED, signals_held
from fedmed.common.processes import executable, flower_env, split_address
from fedmed.common.supervision import (Child, ChildExited, PortInUse, connectable_host, start_on_free_port,
                                       start_on_port, stop_all)
from fedmed.server import progress, starting_point
from fedmed.server.audit import AuditLog, current_user, read_audit
from fedmed.server.enrollment import SITES_FILE, EnrollmentError, enroll, read_sites_dir
from fedmed.server.flower_app import RUN_CONFIG_KEY, write_app_dir
from fedmed.server.outputs import (CONFIG_FILE, METRICS_FILE, STATUS_FILE, last_completed_round, read_metrics,
                                   read_status,
                                   write_interrupted, write_json, write_run_report)
from fedmed.server.strategy.update_checks import UpdateLimits

CONNECTION = "fedmed"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class DeploymentError(RuntimeError):
    """The federation could not be started; the message says what to do."""


class _Stopped(Exception):
    """SIGTERM reached the coordinator."""


@dataclass
class ServerOptions:
    out_dir: Path
    config: FederationConfig | None
    address: str = "127.0.0.1:9092"
    insecure: bool = False
    certs: Path | None = None
    sites_dir: Path | None = None
    update_limits: UpdateLimits = field(default_factory=UpdateLimits)
    resume: bool = False
    # Seconds the first round waits for every enrolled site before it starts with the
    # sites present (at least the quorum).
    join_timeout: float = 120.0
    # Also log each round as TensorBoard scalars here (`tensorboard_log.py`).
    tensorboard: Path | None = None
    # Start round 1 from this model file instead of random weights
    # (`fedmed.common.starting_model`), and which weights the sites then train
    # (`fedmed.common.freezing`).
    init_from: Path | None = None
    freeze: str = "none"
    startup_timeout: float = 60.0
    # The public port's push-object body limit in bytes; None sizes it from the model.
    max_request_bytes: int | None = None
    # The bundle to submit instead of fedmed's own. Not a command-line option: it exists
    # so tests can offer sites a modified app and watch them refuse it.
    app_dir: Path | None = None


def _flwr_home(out_dir: Path, superlink: str, ca_cert: Path | None) -> Path:
    home = out_dir / ".flwr"
    home.mkdir(parents=True, exist_ok=True)
    tls = f'root-certificates = "{ca_cert.resolve()}"' if ca_cert else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{superlink}"\n{tls}\n'
    )
    return home


def _flwr(args: list[str], home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([executable("flwr"), *args], capture_output=True, text=True,
                          env=flower_env({"FLWR_HOME": str(home)}), timeout=timeout)


def _serverapp_executor_cmd(runtime_address: str, material) -> list[str]:
    """fedmed's executor for the run's ServerApp (`server/app_executor.py`)."""
    cmd = [sys.executable, "-m", "fedmed.server.app_executor", "--runtime-api-address", runtime_address,
           "--parent-pid", str(os.getpid())]
    return cmd + (["--root-certificates", str(material.ca_cert.resolve())] if material is not None else [])


def _start_app_hash(app_dir: Path) -> subprocess.Popen:
    """Hash the app bundle in a short-lived child (`fedmed.common.app_bundle`): building
    it loads much of Flower, which this launcher, alive for the whole run, does without."""
    return subprocess.Popen([sys.executable, "-m", "fedmed.common.app_bundle", str(app_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _app_hash(hashing: subprocess.Popen) -> str:
    out, err = hashing.communicate(timeout=120)
    if hashing.returncode != 0:
        raise DeploymentError(f"hashing the app bundle failed (exit {hashing.returncode}): {err.strip()[-500:]}")
    return out.strip()


def _submit(out_dir: Path, home: Path, app_dir: Path) -> str:
    config_path = (out_dir / CONFIG_FILE).resolve()
    done = _flwr(["run", str(app_dir), CONNECTION, "--run-config", f"{RUN_CONFIG_KEY}='{config_path}'",
                  "--format", "json"], home)
    if done.returncode != 0 or '"success": false' in done.stdout:
        raise DeploymentError(f"submitting the run to the SuperLink failed (exit {done.returncode}): "
                              f"{(done.stdout + done.stderr).strip()[-500:]}")
    try:
        return str(json.loads(done.stdout[done.stdout.index("{"):]).get("run-id", "?"))
    except ValueError:
        return "?"


def _audit_so_far(out_dir: Path) -> list[dict]:
    try:
        return list(read_audit(out_dir))
    except ValueError:  # a line being appended right now; read it next time
        return []


def _follow(out_dir: Path, watched: list[Child], deadline: float,
            emit: Callable[[str], None], on_record: Callable[[dict], None] | None = None,
            classes: tuple[str, ...] = ()) -> dict:
    """Print rows as metrics.jsonl grows (with a warning under a round whose model is
    one-class, inverted or weak at a site), and a line for each audit event that changes
    who takes part (the ServerApp's own output does not reach this terminal); return
    status.json once the run has written it."""
    printed = 0
    metrics_path = out_dir / METRICS_FILE
    seen_events = len(_audit_so_far(out_dir))  # a resumed run's earlier events were shown then
    while True:
        events = _audit_so_far(out_dir)
        for event in events[seen_events:]:
            if (line := progress.notice(event)) is not None:
                emit(line)
        seen_events = max(seen_events, len(events))
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        for line in lines[printed:]:
            if line.strip():
                record = json.loads(line)
                emit(progress.row(record))
                for warning in progress.warnings(record, classes):
                    emit(warning)
                if on_record is not None:
                    on_record(record)
        printed = len(lines)
        status = read_status(out_dir)
        if status is not None:
            return status
        for child in watched:
            if not child.running():
                # The ServerApp's executor ends when the run does, just after writing status.json.
                return read_status(out_dir) or {"status": "failed", "reason": str(ChildExited(child))}
        if time.monotonic() > deadline:
            return {"status": "failed", "reason": "the run did not finish in time "
                    "(rounds × round timeout); raise --round-timeout or check the sites"}
        time.sleep(0.5)


def _check_options(options: ServerOptions, host: str) -> None:
    if options.insecure:
        if host not in LOOPBACK:
            raise DeploymentError(f"--address {options.address}: an --insecure coordinator binds "
                                  "only to loopback (127.0.0.1); use TLS (--certs) to accept remote sites")
        if options.certs or options.sites_dir:
            raise DeploymentError("--insecure runs without TLS or enrolled sites: drop --certs and "
                                  "--sites-dir, or drop --insecure")
        return
    if options.certs is None:
        raise DeploymentError("--certs DIR is required (TLS is the default): make it with `fedmed "
                              "certs init --out DIR --server-name HOST`, or pass --insecure to try "
                              "fedmed on this machine only")
    if options.sites_dir is None:
        raise DeploymentError("--sites-dir DIR is required with TLS: a folder of the sites' public "
                              "keys (A.pub, B.pub, ...) made at each site by `fedmed certs site NAME`")


def _resume_config(out_dir: Path) -> tuple[FederationConfig, int, str | None]:
    """The interrupted run's config, its last completed round and its Flower run ID.

    What the run started from and froze (`init_from`, `freeze`) are read by `_transfer_meta`."""
    config_path = out_dir / CONFIG_FILE
    if not config_path.exists():
        raise DeploymentError(f"--resume {out_dir}: no {CONFIG_FILE}; point it at the run folder of "
                              "an interrupted `fedmed server start`")
    saved = json.loads(config_path.read_text())
    config = FederationConfig.from_dict(saved["federation"])
    done = last_completed_round(out_dir)
    started = [e for e in read_audit(out_dir) if e.get("event") == "run-started"]
    return config, done, (str(started[-1].get("run_id")) if started else None)


def _transfer_meta(options: ServerOptions, config: FederationConfig, out_dir: Path) -> dict:
    """config.json's `init_from` and `freeze`: checked now (a wrong model file is one line
    before anything starts), or those of the interrupted run being resumed."""
    if options.resume:
        saved = json.loads((out_dir / CONFIG_FILE).read_text())
        return {k: saved[k] for k in ("init_from", "freeze") if k in saved}
    if options.init_from is None and options.freeze == "none":
        return {}  # a random start: no model file to read, and no torch in the launcher
    from fedmed.common.starting_model import transfer_meta

    try:
        return transfer_meta(options.init_from, options.freeze, config)
    except ValueError as exc:
        raise DeploymentError(str(exc)) from None


def start_server(options: ServerOptions, emit: Callable[[str], None] = print) -> int:
    """Run a whole federation from this machine; 0 when it completed, 1 when it failed."""
    host, port = split_address(options.address, "--address", allow_zero=True)
    _check_options(options, host)
    board = None
    if options.tensorboard is not None:
        from fedmed.server.tensorboard_log import TensorBoardLog

        board = TensorBoardLog(options.tensorboard)  # a missing package fails before anything starts
    try:
        material = None if options.insecure else server_material(options.certs)
        keys = [] if options.insecure else read_sites_dir(options.sites_dir)
    except (CertError, EnrollmentError) as exc:
        raise DeploymentError(str(exc)) from None
    out_dir = Path(options.out_dir).resolve()
    resume_from, previous_run = 0, None
    config = options.config
    if options.resume:
        config, resume_from, previous_run = _resume_config(out_dir)
        if resume_from >= config.rounds:
            emit(f"{out_dir}: all {config.rounds} rounds are already complete; nothing to resume")
            return 0
    elif config is None:
        raise DeploymentError("no federation configuration given")
    # The run folder holds every site's updates, checkpoints and the SuperLink's
    # database: this account only (files 0600 through the umask, which the SuperLink,
    # the proxy and the ServerApp inherit).
    transfer = _transfer_meta(options, config, out_dir)
    previous_umask = os.umask(0o077)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(out_dir, 0o700)
        return _run(options, out_dir, config, resume_from, previous_run, material, keys, host, port, board, emit,
                    transfer)
    finally:
        os.umask(previous_umask)


def _run(options: ServerOptions, out_dir: Path, config: FederationConfig, resume_from: int,
         previous_run: str | None, material, keys, host: str, port: int, board,
         emit: Callable[[str], None], transfer: dict) -> int:
    if not options.resume:
        # A fresh run in a used folder starts from a clean SuperLink and clean outputs.
        for stale in (METRICS_FILE, STATUS_FILE, SITES_FILE, "superlink.db"):
            (out_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    (out_dir / STATUS_FILE).unlink(missing_ok=True)
    audit = AuditLog(out_dir)

    home = out_dir / ".flwr"
    env = flower_env({"FLWR_HOME": str(home)})
    superlink_log, proxy_log = out_dir / "superlink.log", out_dir / "proxy.log"

    def superlink_cmd(link_host: str, link_port: int) -> list[str]:
        # `--isolation process`: the SuperLink starts no SuperExec; fedmed's executor runs
        # the ServerApp (`server/app_executor.py`).
        cmd = [executable("flower-superlink"), "--host", link_host, "--port", str(link_port),
               "--isolation", "process",
               "--disable-runtime-dependency-installation", "--database", str(out_dir / "superlink.db")]
        if material is None:
            return cmd + ["--insecure"]
        return cmd + ["--ssl-ca-certfile", str(material.ca_cert), "--ssl-certfile", str(material.cert),
                      "--ssl-keyfile", str(material.key), "--enable-supernode-auth"]

    # The app bundle and its hash (for the audit log) do not need the SuperLink: the hash,
    # whose Flower import takes a second or two, is worked out while the SuperLink starts.
    app_dir = options.app_dir or write_app_dir(out_dir / ".app")
    hashing = _start_app_hash(app_dir)
    # Round 1's weights need torch (the model is built once), which neither this launcher
    # nor the ServerApp imports: a short-lived child works them out while the SuperLink
    # starts, and the ServerApp reads its file.
    preparing = starting_point.start(out_dir, config.to_dict(), transfer)
    children: list[Child] = []
    previous_handler = None
    if _is_main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _raise_stopped)
    status: dict = {"status": "failed", "reason": "the coordinator was interrupted"}
    try:
        # The SuperLink serves the public address itself with --insecure; with TLS it
        # listens on a loopback port of its own behind the proxy.
        link_host = host if options.insecure else "127.0.0.1"
        if options.insecure and port:
            link_port = port
            children.append(start_on_port("SuperLink", superlink_cmd(host, port), env, host, port, "--address",
                                          timeout=options.startup_timeout, log=superlink_log))
        else:
            superlink, link_port = start_on_free_port(
                "SuperLink", lambda p: superlink_cmd(link_host, p), env, host=link_host,
                timeout=options.startup_timeout, log=superlink_log, on_retry=emit)
            children.append(superlink)
        if options.insecure:
            port = link_port
        runtime_address = f"{connectable_host(link_host)}:{link_port}"
        # The run's ServerApp, once submitted, runs in this child (its output in the
        # SuperLink's log, where Flower's own ServerApp process would have written it).
        children.append(Child("ServerApp executor", _serverapp_executor_cmd(runtime_address, material), env,
                              log=superlink_log))
        _flwr_home(out_dir, runtime_address, material.ca_cert if material else None)
        # Enrol before the public port opens: a site that connects before its key is
        # registered is refused and gives up.
        sites = enroll(keys, out_dir, home, CONNECTION, audit) if keys else {}
        if material is not None:
            def proxy_cmd(public_port: int) -> list[str]:
                return [sys.executable, "-m", "fedmed.server.proxy", "--listen", f"{host}:{public_port}",
                        "--upstream", f"127.0.0.1:{link_port}", "--certs", str(Path(options.certs).resolve()),
                        "--run-dir", str(out_dir), "--max-body",
                        str(options.max_request_bytes or _request_limit(out_dir, config, transfer, preparing))]

            if port:
                children.append(start_on_port("public-port proxy", proxy_cmd(port), env, host, port, "--address",
                                              timeout=options.startup_timeout, log=proxy_log))
            else:
                proxy, port = start_on_free_port("public-port proxy", proxy_cmd, env, host=host,
                                                 timeout=options.startup_timeout, log=proxy_log, on_retry=emit)
                children.append(proxy)
        if previous_run:
            # The interrupted run is still "running" in the SuperLink's database; stop it so
            # sites do not train for a ServerApp that no longer exists.
            _flwr(["stop", previous_run, CONNECTION], home, timeout=60)
        write_json(out_dir / CONFIG_FILE, {
            "federation": config.to_dict(), "mode": "deployment", "address": f"{host}:{port}",
            "insecure": options.insecure, "update_limits": options.update_limits.to_dict(),
            "resume_from": resume_from, "sites": {str(k): v for k, v in sites.items()},
            "join_timeout": options.join_timeout, **transfer,
        })
        preparing.wait()  # a failure is reported by the ServerApp, which then tries again itself
        run_id = _submit(out_dir, home, app_dir)
        app_hash = _app_hash(hashing)
        audit.record("run-started", by=current_user(), run_id=run_id, app_hash=app_hash,
                     address=f"{host}:{port}", tls=not options.insecure, sites=sorted(sites.values()),
                     rounds=config.rounds, resumed_after_round=resume_from or None)
        emit(f"fedmed coordinator on {host}:{port}{'' if options.insecure else ' (TLS, enrolled sites only)'}, "
             f"run {run_id}: waiting for {config.min_sites} site(s); outputs in {out_dir}")
        if resume_from:
            emit(f"resuming after round {resume_from} of {config.rounds}")
        elif transfer.get("init_from"):
            from fedmed.common.starting_model import describe_transfer

            emit(describe_transfer(transfer))
        emit(progress.header())
        remaining = config.rounds - resume_from
        deadline = time.monotonic() + options.startup_timeout + remaining * config.round_timeout * 2
        status = _follow(out_dir, children, deadline, emit, on_record=board.round if board else None,
                         classes=config.classes)
    except (_Stopped, KeyboardInterrupt) as exc:
        how = "SIGTERM" if isinstance(exc, _Stopped) else "Ctrl-C"
        audit.record("run-stopped", by=current_user(), reason=f"the coordinator was interrupted ({how})")
        status = {"status": "stopped", "how": how}
    except (EnrollmentError, ChildExited, PortInUse, TimeoutError) as exc:
        raise DeploymentError(str(exc)) from None
    finally:
        with signals_held():
            if preparing.poll() is None:
                preparing.kill()
                preparing.wait()
            if hashing.poll() is None:
                hashing.kill()
            hashing.communicate()
            stop_all(children)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if board is not None:
            board.close()
    if status["status"] == "stopped":
        # After the children are stopped, so the ServerApp cannot overwrite it.
        done = write_interrupted(out_dir, status["how"])["rounds_completed"]
        emit(f"interrupted by {status['how']} after {done} of {config.rounds} round(s); continue later "
             f"with `fedmed server start --resume {out_dir}`")
        return EXIT_INTERRUPTED
    audit.record("run-finished", status=status["status"], reason=status.get("reason", ""),
                 rounds_completed=status.get("rounds_completed"))
    emit(write_run_report(out_dir))
    if status["status"] == "completed":
        rows = read_metrics(out_dir)
        words = progress.final_words(rows[-1] if rows else None, config.classes)
        if words:
            emit(words)
        emit(f"run completed{' with warnings' if words else ''}: "
             f"{status.get('rounds_completed', config.rounds)} rounds; final model {out_dir / 'model-final.pt'}")
        return 0
    emit(f"run failed: {status.get('reason', 'unknown reason')}")
    return 1


def _request_limit(out_dir: Path, config: FederationConfig, transfer: dict,
                   preparing: subprocess.Popen) -> int:
    """The proxy's push-object limit for this run's model: its largest object on the wire
    (weights travel packed, inline or one array per dtype: `fedmed.common.packed_arrays`).
    The model's shapes come from the starting point's file, so this launcher needs no torch."""
    from fedmed.common.packed_arrays import largest_object_bytes
    from fedmed.server.proxy import request_limit

    preparing.wait()
    point = starting_point.read(out_dir, config.to_dict(), transfer)
    if point.arrays is None:
        raise DeploymentError(point.error)
    arrays = point.arrays
    packed: dict = {}
    for array in arrays.values():
        packed[array.dtype] = packed.get(array.dtype, 0) + array.nbytes
    return request_limit(largest_object_bytes(packed))


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_stopped(signum, frame) -> None:
    raise _Stopped()
