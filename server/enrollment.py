"""Enrolled sites: the public keys the SuperLink accepts SuperNodes with.

With SuperNode authentication on (`--enable-supernode-auth`), the SuperLink refuses any
SuperNode whose key was not registered through its Control API. fedmed registers the
keys in `--sites-dir` (`A.pub`, `B.pub`, ...: the file name is the site's name) at
start, and `fedmed server enroll` adds one to a running federation; both go through
`flwr supernode register` on the coordinator's loopback connection, the only place the
Control API is reachable.

RUN_DIR/sites.json keeps {site: {"key_sha256", "node_id"}}: the ServerApp uses it to
name a site whose reply carries no name (one that died mid-round), and a resumed run,
whose SuperLink database already holds the keys, finds the node IDs there.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fedmed.common.certs import CertError, key_fingerprint, load_site_public_key
from fedmed.common.file_replace import replace_text
from fedmed.common.processes import executable, flower_env
from fedmed.server.audit import AuditLog, current_user

SITES_FILE = "sites.json"


class EnrollmentError(RuntimeError):
    """A site's key could not be enrolled; the message says what to do."""


@dataclass(frozen=True)
class SiteKey:
    name: str
    path: Path
    key_sha256: str


def _valid_name(name: str) -> bool:
    return bool(name) and name.replace("-", "").replace("_", "").isalnum()


def site_key(path: Path, name: str | None = None) -> SiteKey:
    path = Path(path)
    name = name or path.stem
    if not _valid_name(name):
        raise EnrollmentError(f"{path}: site name {name!r} (from the file name) must be letters, "
                              "digits, '-' or '_'; rename the file to SITE.pub")
    try:
        key = load_site_public_key(path)
    except CertError as exc:
        raise EnrollmentError(str(exc)) from None
    return SiteKey(name, path.resolve(), key_fingerprint(key))


def read_sites_dir(sites_dir: Path) -> list[SiteKey]:
    """The keys in `--sites-dir`, one `SITE.pub` per site."""
    sites_dir = Path(sites_dir)
    if not sites_dir.is_dir():
        raise EnrollmentError(f"--sites-dir {sites_dir}: not a folder; put each site's public key "
                              "there as SITE.pub (made at the site by `fedmed certs site SITE`)")
    keys = [site_key(p) for p in sorted(sites_dir.glob("*.pub"))]
    if not keys:
        raise EnrollmentError(f"--sites-dir {sites_dir}: no SITE.pub file; ask each site for the "
                              "public key `fedmed certs site SITE` made")
    seen: dict[str, str] = {}
    for key in keys:
        if key.key_sha256 in seen:
            raise EnrollmentError(f"--sites-dir {sites_dir}: {seen[key.key_sha256]}.pub and "
                                  f"{key.name}.pub are the same key; each site needs its own")
        seen[key.key_sha256] = key.name
    return keys


def read_enrolled(run_dir: Path) -> dict[str, dict]:
    path = Path(run_dir) / SITES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def node_names(run_dir: Path) -> dict[int, str]:
    """{node_id: site} for the sites enrolled in this run folder."""
    return {int(v["node_id"]): name for name, v in read_enrolled(run_dir).items() if v.get("node_id")}


def _save(run_dir: Path, enrolled: dict[str, dict]) -> None:
    replace_text(Path(run_dir) / SITES_FILE, json.dumps(enrolled, indent=2, sort_keys=True) + "\n")


def _register_cmd(key: SiteKey, connection: str) -> list[str]:
    return [executable("flwr"), "supernode", "register", str(key.path), connection,
            "--name", key.name, "--format", "json"]


def _outcome(key: SiteKey, done: subprocess.CompletedProcess, known: dict[str, dict]) -> int:
    try:
        reply = json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        reply = {}
    if reply.get("success"):
        return int(reply["node-id"])
    message = str(reply.get("error-message", (done.stdout + done.stderr).strip()[-300:]))
    if "already in use" in message:
        previous = next((v for v in known.values() if v.get("key_sha256") == key.key_sha256), None)
        if previous and previous.get("node_id"):
            return int(previous["node_id"])  # a resumed run: the SuperLink kept the key
        raise EnrollmentError(f"{key.path}: this key is already enrolled under another name; "
                              "each site needs its own key")
    raise EnrollmentError(f"enrolling site {key.name} ({key.path}) failed: {message}")


def enroll(keys: list[SiteKey], run_dir: Path, flwr_home: Path, connection: str,
           audit: AuditLog | None = None) -> dict[int, str]:
    """Register every key with the SuperLink (in parallel); return {node_id: site}."""
    env = flower_env({"FLWR_HOME": str(flwr_home)})
    known = read_enrolled(run_dir)
    running = [(key, subprocess.Popen(_register_cmd(key, connection), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env)) for key in keys]
    enrolled = dict(known)
    errors = []
    for key, process in running:
        stdout, stderr = process.communicate(timeout=120)
        try:
            node_id = _outcome(key, subprocess.CompletedProcess([], process.returncode, stdout, stderr), known)
        except EnrollmentError as exc:
            errors.append(str(exc))
            continue
        fresh = known.get(key.name, {}).get("node_id") != node_id
        enrolled[key.name] = {"key_sha256": key.key_sha256, "node_id": node_id}
        if audit is not None and fresh:
            audit.record("site-enrolled", site=key.name, key_sha256=key.key_sha256, node_id=node_id,
                         by=current_user())
    _save(run_dir, enrolled)
    if errors:
        raise EnrollmentError("; ".join(errors))
    return {v["node_id"]: name for name, v in enrolled.items()}


def enroll_into_running(run_dir: Path, key_path: Path, name: str | None = None) -> tuple[str, int]:
    """Enrol one more site into the federation running from `run_dir` (coordinator only:
    it uses the run's loopback connection to the SuperLink). Returns (site, node_id)."""
    run_dir = Path(run_dir)
    home = run_dir / ".flwr"
    if not (home / "config.toml").exists():
        raise EnrollmentError(f"--out {run_dir}: no running federation's connection there; give the "
                              "run folder of a running `fedmed server start`")
    key = site_key(key_path, name)
    if key.name in read_enrolled(run_dir):
        raise EnrollmentError(f"site {key.name} is already enrolled in {run_dir}; each site joins once")
    nodes = enroll([key], run_dir, home, "fedmed", AuditLog(run_dir))
    node_id = next(n for n, site in nodes.items() if site == key.name)
    return key.name, node_id
