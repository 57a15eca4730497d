"""`fedmed client`: this site's SuperNode, connected to the coordinator.

Two processes run at the site:

- the SuperNode (Flower's site process), which fetches messages from the coordinator
  over TLS, checking the coordinator's certificate against the federation CA
  (`--certs DIR/ca.crt`) and authenticating with the site's enrolled key
  (`--certs DIR/SITE.key`). It runs in `--isolation process`: it queues each message
  and runs nothing itself. It is started through `client/fleet_polling.py`, which asks
  for messages quickly while a run is active and slowly when idle, and wakes the
  executor when a task is queued;
- fedmed's executor (`client/app_executor.py`), which takes those messages and runs
  fedmed's installed ClientApp on them — but only for runs whose app bundle the site
  approved (`client/app_approval.py`); any other run is declined and logged here.

The SuperNode's node config carries the site's name and folders; they stay on this
machine — the ClientApp reads them from the node config, the coordinator never sees
them. `--insecure` (no TLS, no key) is for trying fedmed on one machine: it connects
to loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedmed.client import fleet_polling
from fedmed.client.child_request import ask_child
from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.client.join_check import DEFAULT_GIVE_UP_AFTER, JoinCheck, JoinError
from fedmed.client.site import default_state_dir
from fedmed.client.runtime_secret import runtime_secret_path, write_runtime_secret
from fedmed.client.state_lock import StateLocked, state_lock
from fedmed.client.task_signal import signal_path
from fedmed.common.certs import CertError, site_material
from fedmed.common.interrupts import EXIT_INTERRUPTED, signals_held
from fedmed.common.processes import flower_env, split_address
from fedmed.common.supervision import Child, ChildExited, PortInUse, first_exited, start_on_free_port, stop_all
from fedmed.common.settings import DEFAULT_CLASSES

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Present while the site runs; left behind by a crash. The coordinator keeps a crashed
# site's session open until it misses two 30 s heartbeats and refuses the same key
# meanwhile, so a site restarting after a crash retries joining for this long.
RUNNING_MARKER = "supernode.running"
REJOIN_WINDOW = 100.0
REJOIN_RETRY = 10.0
# Seconds the SuperNode may take to open its Runtime API (an import of Flower on a busy
# machine); it binds that port before it contacts the coordinator.
SUPERNODE_START_TIMEOUT = 120.0


class ClientSetupError(ValueError):
    """The site cannot join as configured; the message says what to fix."""


@dataclass
class ClientOptions:
    site: str
    data_dir: Path
    server: str
    state_dir: Path | None = None
    insecure: bool = False
    certs: Path | None = None
    approve: tuple[str, ...] = ()
    privacy: PrivacyPolicy = PrivacyPolicy()
    classes: tuple[str, ...] = DEFAULT_CLASSES
    # Seconds a failure that retrying will not fix (TLS or protocol mismatch) may last
    # before the site stops; an unreachable coordinator is retried without end.
    give_up_after: float = DEFAULT_GIVE_UP_AFTER


def _toml_string(value: str, flag: str) -> str:
    if "'" in value or "\n" in value:
        raise ClientSetupError(f"{flag}: a value containing a single quote or newline cannot be "
                               "passed to the SuperNode; rename or use another path")
    return f"'{value}'"


def _toml_value(value: object, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # the privacy unit, --new-ledger's reason
        return _toml_string(value, key)
    return repr(float(value)) if isinstance(value, float) else str(value)


def supernode_command(options: ClientOptions, runtime_port: int) -> list[str]:
    split_address(options.server, "--server")
    state_dir = Path(options.state_dir or default_state_dir(options.site)).resolve()
    node_config = " ".join([
        f"site={_toml_string(options.site, '--site')}",
        f"data-dir={_toml_string(str(Path(options.data_dir).resolve()), '--data')}",
        f"state-dir={_toml_string(str(state_dir), '--state')}",
        *(f"{key}={_toml_value(value, key)}" for key, value in options.privacy.to_node_config().items()),
    ])
    # Flower's SuperNode, started through fedmed's request pacing (`fleet_polling`).
    cmd = [*fleet_polling.command(signal_path(state_dir)), "--superlink", options.server,
           "--node-config", node_config, "--host", "127.0.0.1", "--port", str(runtime_port),
           "--isolation", "process", "--superexec-auth-secret-file", str(runtime_secret_path(state_dir))]
    if options.insecure:
        cmd.append("--insecure")
    else:
        material = _material(options)
        cmd += ["--root-certificates", str(material.ca_cert.resolve()),
                "--auth-supernode-private-key", str(material.private_key.resolve())]
    return cmd


def _material(options: ClientOptions):
    if options.certs is None:
        raise ClientSetupError("--certs DIR is required (TLS is the default): the folder with the "
                               f"federation's ca.crt and this site's {options.site}.key (make the key "
                               f"with `fedmed certs site {options.site} --out DIR --ca ca.crt`); or "
                               "pass --insecure to try fedmed on this machine only")
    try:
        return site_material(Path(options.certs), options.site)
    except CertError as exc:
        raise ClientSetupError(str(exc)) from None


def executor_command(options: ClientOptions, runtime_port: int, state_dir: Path) -> list[str]:
    """fedmed's executor for the SuperNode's tasks (see `client/app_executor.py`)."""
    from fedmed.client.app_approval import parse_hashes

    try:
        approved = sorted(parse_hashes(options.approve))
    except ValueError as exc:
        raise ClientSetupError(str(exc)) from None
    cmd = [sys.executable, "-m", "fedmed.client.app_executor",
           "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--site", options.site,
           "--state", str(state_dir.resolve()), "--parent-pid", str(os.getpid()),
           "--auth-secret-file", str(runtime_secret_path(state_dir)),
           "--wake", str(signal_path(state_dir).resolve())]
    for value in approved:
        cmd += ["--approve", value]
    return cmd


def preflight(options: ClientOptions, classes: tuple[str, ...]) -> str:
    """Run `fedmed data check`'s header-only checks before joining, so the admin sees data
    problems here, at the site, with file names — the coordinator only ever gets counts.
    Returns a summary line; raises ClientSetupError (exit before joining) on a problem."""
    from fedmed.client.datacheck import preflight as check

    try:
        found = check(Path(options.data_dir), classes, exclude=[options.state_dir] if options.state_dir else ())
    except ValueError as exc:
        raise ClientSetupError(f"--data {exc}") from None
    files, skipped = found.files, found.skips
    if found.problems or not files:
        problems = found.problems or [f"{options.data_dir}: no usable labelled DICOM image "
                                      f"({skipped.total} file(s) skipped)"]
        raise ClientSetupError("; ".join(problems) + f"; run `fedmed data check {options.data_dir}`")
    line = f"site {options.site}: {len(files)} labelled image(s) ready"
    if skipped.total:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.counts.items()))
        line += f"; {skipped.total} skipped ({reasons})"
    for warning in found.warnings:
        line += f"\nsite {options.site}: warning: {warning}"
    return line


def preflight_in_child(options: ClientOptions, classes: tuple[str, ...]) -> str:
    """`preflight` in a short-lived child process: the checks load pydicom and numpy, which
    this launcher -- it supervises the SuperNode and the executor for as long as the site
    runs -- then never holds. The same summary line, or the same ClientSetupError."""
    request = {"site": options.site, "data_dir": str(options.data_dir), "classes": list(classes),
               "state_dir": None if options.state_dir is None else str(options.state_dir)}
    answer, code = ask_child("fedmed.client.supernode", request)
    if answer is None:
        raise ClientSetupError(f"--data {options.data_dir}: the data check stopped (exit {code}, "
                               f"see above); run `fedmed data check {options.data_dir}`")
    if "error" in answer:
        raise ClientSetupError(answer["error"])
    return answer["line"]


def _preflight_child() -> int:
    """`python -m fedmed.client.supernode`: `preflight_in_child`'s child; the request as
    JSON on stdin, the answer as one JSON line on stdout."""
    request = json.loads(sys.stdin.read())
    options = ClientOptions(site=request["site"], data_dir=Path(request["data_dir"]), server="",
                            state_dir=None if request["state_dir"] is None else Path(request["state_dir"]))
    try:
        answer = {"line": preflight(options, tuple(request["classes"]))}
    except ClientSetupError as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer), flush=True)
    return 0


def run_client(options: ClientOptions) -> int:
    """Join the federation and serve it until stopped; returns the exit code of whichever
    of the SuperNode and the executor ended first."""
    if not options.site or not options.site.replace("-", "").replace("_", "").isalnum():
        raise ClientSetupError(f"--site {options.site!r}: expected a short name of letters, "
                               "digits, '-' or '_' (it is how the coordinator will know this site)")
    if not Path(options.data_dir).is_dir():
        raise ClientSetupError(f"--data {options.data_dir}: not a folder; point it at the site's "
                               "DICOM export (labels.csv or class sub-folders)")
    host, _ = split_address(options.server, "--server")
    if options.give_up_after < 0:
        raise ClientSetupError(f"--give-up-after {options.give_up_after:g}: expected seconds, 0 or more")
    if options.insecure:
        if host not in LOOPBACK:
            raise ClientSetupError(f"--server {options.server}: --insecure connects only to loopback; "
                                   "use --certs DIR to join a remote coordinator over TLS")
        if options.certs is not None:
            raise ClientSetupError("--insecure connects without TLS or a key: drop --certs or drop --insecure")
    else:
        _material(options)
    state_dir = Path(options.state_dir or default_state_dir(options.site))
    # Everything the site and its SuperNode and executor write (ledger, cache, logs,
    # the Runtime API secret) is for this account only.
    os.umask(0o077)
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, as on Ctrl-C
    try:
        with state_lock(state_dir):  # before the (slow) scan: a second process is refused at once
            return _run_locked(options, state_dir)
    except StateLocked as exc:
        raise ClientSetupError(str(exc)) from None


def _run_locked(options: ClientOptions, state_dir: Path) -> int:
    write_runtime_secret(state_dir)
    marker = state_dir / RUNNING_MARKER
    rejoin_until = time.monotonic() + REJOIN_WINDOW if marker.exists() else 0.0
    marker.write_text(str(os.getpid()))
    try:
        print(preflight_in_child(options, options.classes), flush=True)
        if options.privacy.enabled:
            print(f"site {options.site}: differential privacy on, budget epsilon={options.privacy.epsilon:g} "
                  "for all runs on this data (the privacy ledger is in the state folder)", flush=True)
            if not options.privacy.private_metrics:
                print(f"site {options.site}: evaluation metrics are sent EXACTLY (--no-dp-metrics); "
                      "each release is recorded in the ledger", flush=True)
        else:
            print(f"site {options.site}: differential privacy OFF (--no-dp); this is recorded in the run",
                  flush=True)
        say = lambda line: print(f"site {options.site}: {line}", flush=True)  # noqa: E731
        check = JoinCheck(options.server, options.insecure,
                          None if options.insecure else _material(options).ca_cert.resolve(), say,
                          options.give_up_after)
        while True:
            try:
                check.wait_until_reachable()
            except JoinError:
                return 1  # the reason is the line just printed
            # Flower's SuperNode exits with status 1 for every error (its own code, 305
            # for a refused connection, is only printed), so any failure counts here.
            may_retry = time.monotonic() < rejoin_until
            supernode_failed, code = _serve(options, state_dir, check, expect_held_session=may_retry)
            if not supernode_failed or not may_retry:
                return code
            print(f"site {options.site}: the coordinator refused this site ({check.refusal or 'no reason given'}); "
                  "it still holds the session of this site's previous (crashed) run until two heartbeats "
                  f"are missed (about a minute), retrying in {REJOIN_RETRY:g} s", flush=True)
            time.sleep(REJOIN_RETRY)
    except KeyboardInterrupt:
        print(f"site {options.site}: interrupted; stopped", flush=True)
        return EXIT_INTERRUPTED
    finally:
        marker.unlink(missing_ok=True)


def _serve(options: ClientOptions, state_dir: Path, check: JoinCheck,
           expect_held_session: bool = False) -> tuple[bool, int]:
    """Run the SuperNode and the executor until either ends (or `check` gives up on the
    coordinator); return (whether the SuperNode ended with an error, the exit code).
    `expect_held_session`: a refusal is likely the crashed previous run's session, which
    the caller retries and explains, so the enrolment hint is left out."""
    # Flower keeps each run's app bundle under FLWR_HOME; keep it in the site's state.
    env = flower_env({"FLWR_HOME": str((state_dir / "flower").resolve())})
    say = check.say
    check.refusal = None
    try:
        # The executor finds the SuperNode on its Runtime API port, so the SuperNode must
        # hold that port before the executor starts (a clash is retried on a new port).
        supernode, runtime_port = start_on_free_port(
            "SuperNode", lambda port: supernode_command(options, port), env, on_retry=say,
            on_line=check.on_supernode_line, timeout=SUPERNODE_START_TIMEOUT)
    except ChildExited as exc:
        say(f"{exc}; see the lines above")
        return True, exc.child.returncode or 1
    except (PortInUse, TimeoutError) as exc:
        say(str(exc))
        return False, 1
    children = [supernode]
    try:
        children.append(Child("executor", executor_command(options, runtime_port, state_dir), env,
                              capture=False))
        # Either process ending ends the site: a SuperNode without its executor would
        # accept work it never does.
        ended = first_exited(children, stop_when=lambda: check.failed is not None)
        if ended is None:
            return False, 1  # the coordinator cannot be joined as configured; the line is out
        if ended is not supernode:
            say(f"the {ended.name} exited with code {ended.returncode}; stopping the site")
        elif check.refusal and not expect_held_session:
            say(f"the coordinator refused this site ({check.refusal}): if this site is new, its public key "
                f"must be enrolled there first (`fedmed server enroll`, or {options.site}.pub in the "
                "coordinator's --sites-dir)")
        code = supernode.returncode
        return (code not in (None, 0), code if code is not None else ended.returncode)
    except KeyboardInterrupt:
        supernode.mute()  # the operator asked to stop: one line, not Flower's shutdown log
        raise
    finally:
        with signals_held():
            stop_all(children)


if __name__ == "__main__":
    sys.exit(_preflight_child())
