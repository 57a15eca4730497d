"""`fedmed client`: this site's SuperNode, connected to the coordinator.

The SuperNode is Flower's site process: it fetches messages from the coordinator's
SuperLink and runs fedmed's ClientApp (installed here) for each. Its node config carries
the site's name and folders; they stay on this machine — the ClientApp reads them from
the node config, the coordinator never sees them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.client.site import default_state_dir
from fedmed.common.settings import DEFAULT_CLASSES
from fedmed.common.processes import executable, flower_env, free_port, split_address, start, stop


class ClientSetupError(ValueError):
    """The site cannot join as configured; the message says what to fix."""


@dataclass
class ClientOptions:
    site: str
    data_dir: Path
    server: str
    state_dir: Path | None = None
    insecure: bool = False
    privacy: PrivacyPolicy = PrivacyPolicy()
    classes: tuple[str, ...] = DEFAULT_CLASSES


def _toml_string(value: str, flag: str) -> str:
    if "'" in value or "\n" in value:
        raise ClientSetupError(f"{flag}: a value containing a single quote or newline cannot be "
                               "passed to the SuperNode; rename or use another path")
    return f"'{value}'"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(float(value)) if isinstance(value, float) else str(value)


def supernode_command(options: ClientOptions, runtime_port: int) -> list[str]:
    split_address(options.server, "--server")
    state_dir = Path(options.state_dir or default_state_dir(options.site)).resolve()
    node_config = " ".join([
        f"site={_toml_string(options.site, '--site')}",
        f"data-dir={_toml_string(str(Path(options.data_dir).resolve()), '--data')}",
        f"state-dir={_toml_string(str(state_dir), '--state')}",
        *(f"{key}={_toml_value(value)}" for key, value in options.privacy.to_node_config().items()),
    ])
    cmd = [executable("flower-supernode"), "--superlink", options.server,
           "--node-config", node_config, "--host", "127.0.0.1", "--port", str(runtime_port)]
    if options.insecure:
        cmd.append("--insecure")
    return cmd


def preflight(options: ClientOptions, classes: tuple[str, ...]) -> str:
    """Scan the site's folder before joining, so the admin sees data problems here, at the
    site, with file names — the coordinator only ever gets counts. Returns a summary line."""
    from fedmed.client.sitedata import scan_site

    files, skipped = scan_site(Path(options.data_dir), classes)
    if not files:
        raise ClientSetupError(f"--data {options.data_dir}: no usable labelled DICOM image "
                               f"({skipped.total} file(s) skipped); run `fedmed data check` on it")
    line = f"site {options.site}: {len(files)} labelled image(s) ready"
    if skipped.total:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.counts.items()))
        line += f"; {skipped.total} skipped ({reasons})"
    return line


def run_client(options: ClientOptions) -> int:
    """Join the federation and serve it until stopped; returns the SuperNode's exit code."""
    if not options.site or not options.site.replace("-", "").replace("_", "").isalnum():
        raise ClientSetupError(f"--site {options.site!r}: expected a short name of letters, "
                               "digits, '-' or '_' (it is how the coordinator will know this site)")
    if not Path(options.data_dir).is_dir():
        raise ClientSetupError(f"--data {options.data_dir}: not a folder; point it at the site's "
                               "DICOM export (labels.csv or class sub-folders)")
    if not options.insecure:
        raise ClientSetupError("TLS is not set up for this site yet: pass --insecure to connect "
                               "without it (loopback only)")
    print(preflight(options, options.classes), flush=True)
    if options.privacy.enabled:
        print(f"site {options.site}: differential privacy on, budget epsilon={options.privacy.epsilon:g} "
              "for all runs on this data (the privacy ledger is in the state folder)", flush=True)
    else:
        print(f"site {options.site}: differential privacy OFF (--no-dp); this is recorded in the run", flush=True)
    state_dir = Path(options.state_dir or default_state_dir(options.site))
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    cmd = supernode_command(options, free_port())
    # Flower installs each run's app bundle under FLWR_HOME; keep it in the site's state.
    process = start(cmd, None, flower_env({"FLWR_HOME": str((state_dir / "flower").resolve())}))
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        stop(process)
