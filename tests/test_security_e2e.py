"""The secure deployment, for real on loopback: TLS, enrolled sites, a Fleet-only public
port, and sites that run only the app they approved.

One federation serves several checks at once (processes are slow to start on two
cores): three enrolled sites train, while a site with an unenrolled key, a site without
TLS and a site that does not trust the federation CA try to join, and someone on the
public port tries to submit a run and to enrol a key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedmed.common.certs import init_federation, make_site_keys
from fedmed.server.audit import read_audit, verify_chain
from process_tree import start, start_coordinator, stop, wait_for  # noqa: E402 — tests/ is on sys.path under pytest
from enrolled_federation import enrolled_federation  # noqa: E402 — tests/ is on sys.path under pytest

pytestmark = pytest.mark.e2e


def _flwr(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
    flwr = str(Path(sys.executable).parent / "flwr")
    return subprocess.run([flwr, *args], capture_output=True, text=True, env=env, timeout=120)


def _events(run_dir: Path, name: str) -> list[dict]:
    return [e for e in read_audit(run_dir) if e["event"] == name]


def test_tls_federation_admits_only_enrolled_sites_and_keeps_control_local(
        synthetic_sites: Path, tmp_path: Path, fedmed_cmd):
    # Z made a key but was never enrolled.
    co, keys = enrolled_federation(tmp_path, ("A", "B", "C", "Z"), enrolled=("A", "B", "C"))
    init_federation(tmp_path / "other-ca", "localhost")
    make_site_keys("N", tmp_path / "certs-N", tmp_path / "other-ca" / "ca.crt")  # trusts another CA

    run_dir = tmp_path / "run"
    server, port = start_coordinator(fedmed_cmd + [
        "server", "start", "--certs", str(co), "--sites-dir", str(keys), "--address", "127.0.0.1:0",
        "--rounds", "1", "--min-sites", "3", "--out", str(run_dir),
        "--image-size", "32", "--batch-size", "16", "--round-timeout", "120",
    ], tmp_path / "server.log")

    def client(name: str, data_site: str, *flags: str) -> subprocess.Popen:
        return start(fedmed_cmd + [
            "client", "--site", name, "--data", str(synthetic_sites / data_site),
            "--server", f"127.0.0.1:{port}", "--state", str(tmp_path / "state" / name), "--no-dp", *flags,
        ], tmp_path / f"client-{name}.log")

    sites = [client(s, s, "--certs", str(tmp_path / f"certs-{s}")) for s in ("A", "B", "C")]
    intruders = {
        "Z": client("Z", "A", "--certs", str(tmp_path / "certs-Z")),   # key not enrolled
        "I": client("I", "B", "--insecure"),                            # no TLS
        "N": client("N", "C", "--certs", str(tmp_path / "certs-N")),   # does not trust our CA
    }
    try:
        assert wait_for(lambda: _events(run_dir, "run-started"), 120), (tmp_path / "server.log").read_text()

        # Someone on the public port (with the CA certificate, which is no secret) tries
        # to submit a run and to enrol a key: both are refused by the proxy.
        public = tmp_path / "public-flwr-home"
        public.mkdir()
        (public / "config.toml").write_text(
            '[superlink]\ndefault = "public"\n\n[superlink.public]\n'
            f'address = "127.0.0.1:{port}"\nroot-certificates = "{co / "ca.crt"}"\n')
        from fedmed.common.app_bundle import write_app_dir

        submitted = _flwr(["run", str(write_app_dir(tmp_path / "public-app")), "public", "--format", "json"], public)
        enrolled = _flwr(["supernode", "register", str(tmp_path / "certs-Z" / "Z.pub"), "public",
                          "--format", "json"], public)
        for attempt in (submitted, enrolled):
            assert '"success": false' in attempt.stdout, attempt.stdout + attempt.stderr
            assert "only the Fleet API" in attempt.stdout

        code = server.wait(timeout=420)
    finally:
        stop(server, *sites, *intruders.values())
    server_out = (tmp_path / "server.log").read_text()
    assert code == 0, server_out + (run_dir / "superlink.log").read_text()[-3000:]

    # Only the three enrolled sites trained; the intruders left nothing in the metrics.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1]
    for r in rows:
        assert set(r["sites"]) == {"A", "B", "C"}
        assert all(s["status"] == "ok" for s in r["sites"].values())
    assert "Z" not in server_out and "site I" not in server_out

    # The sites that could not join gave up on their own, each saying why.
    for name in ("Z", "I", "N"):
        assert intruders[name].returncode not in (0, None), name
    assert "the coordinator refused this site" in (tmp_path / "client-Z.log").read_text()
    assert "uses TLS, and --insecure connects without it" in (tmp_path / "client-I.log").read_text()
    assert "the coordinator's certificate is not trusted" in (tmp_path / "client-N.log").read_text()

    # The audit log tells the story, and its hash chain is intact.
    assert verify_chain(run_dir) is None
    started = _events(run_dir, "run-started")[0]
    assert started["by"] and len(started["app_hash"]) == 64 and started["tls"] is True
    assert {e["site"] for e in _events(run_dir, "site-enrolled")} == {"A", "B", "C"}
    assert {e["site"] for e in _events(run_dir, "site-joined")} == {"A", "B", "C"}
    assert [e["contributors"] for e in _events(run_dir, "round-completed")] == [["A", "B", "C"]]
    refused = _events(run_dir, "site-refused")
    reasons = {e["reason"] for e in refused}
    assert "not-enrolled" in reasons
    assert any(r.startswith("tls-handshake-failed") and "UNKNOWN_CA" in r for r in reasons)
    assert any(r.startswith("tls-handshake-failed") and "HTTP_REQUEST" in r for r in reasons)
    z_key = next(e["key_sha256"] for e in refused if e["reason"] == "not-enrolled")
    from fedmed.common.certs import key_fingerprint, load_site_public_key

    assert z_key == key_fingerprint(load_site_public_key(tmp_path / "certs-Z" / "Z.pub"))
    paths = {e["path"] for e in _events(run_dir, "control-refused")}
    assert "/v1/control/start-run" in paths and "/v1/control/register-node" in paths
    assert _events(run_dir, "run-finished")[0]["status"] == "completed"


def test_a_site_refuses_a_run_whose_app_differs(synthetic_sites: Path, tmp_path: Path, fedmed_cmd):
    from flwr.cli.build import build_fab_from_disk

    from fedmed.common.app_bundle import fab_hash, write_app_dir
    from fedmed.common.federation import FederationConfig
    from fedmed.common.settings import ImageSettings
    from fedmed.server.deployment import ServerOptions, start_server

    # A bundle that names its own ClientApp, which would leave a mark if it ever ran.
    marker = tmp_path / "the-modified-app-ran"
    app = write_app_dir(tmp_path / "modified-app")
    (app / "payload.py").write_text(
        "from pathlib import Path\nfrom flwr.clientapp import ClientApp\n"
        f"Path({str(marker)!r}).write_text('ran')\napp = ClientApp()\n")
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('clientapp = "fedmed.client.app:app"',
                                                       'clientapp = "payload:app"'))
    modified_hash = hashlib.sha256(build_fab_from_disk(app)).hexdigest()
    assert modified_hash != fab_hash()

    run_dir = tmp_path / "run"
    state = tmp_path / "state" / "A"
    lines: list[str] = []
    site = None

    def emit(line: str) -> None:
        # Port 0: the coordinator picks a free port itself; the site joins once it is known.
        nonlocal site
        lines.append(line)
        if site is None and (serving := re.search(r"fedmed coordinator on \S+:(\d+)", line)):
            site = start(fedmed_cmd + ["client", "--site", "A", "--data", str(synthetic_sites / "A"),
                                       "--server", f"127.0.0.1:{serving.group(1)}", "--state", str(state),
                                       "--insecure"], tmp_path / "client-A.log")

    try:
        config = FederationConfig(rounds=1, min_sites=1, round_timeout=90, batch_size=16,
                                  image=ImageSettings(size=32))
        code = start_server(ServerOptions(out_dir=run_dir, config=config, address="127.0.0.1:0",
                                          insecure=True, app_dir=app), emit=emit)
    finally:
        stop(site)
    assert code == 1, "\n".join(lines)
    status = json.loads((run_dir / "status.json").read_text())
    assert "A: declined (app-not-approved)" in status["reason"]

    # Nothing was trained and nothing of the bundle ran.
    assert not marker.exists()
    assert not list((run_dir / "checkpoints").glob("*.pt"))
    assert not (state / "privacy-ledger.jsonl").exists()  # no privacy spent on a refused run

    # The site logged the refusal with the bundle's hash; the coordinator audited it.
    refusals = [json.loads(line) for line in (state / "app-refusals.jsonl").read_text().splitlines()]
    assert refusals and {r["fab_sha256"] for r in refusals} == {modified_hash}
    assert "refused run" in (tmp_path / "client-A.log").read_text()
    audit = list(read_audit(run_dir))
    assert next(e for e in audit if e["event"] == "run-started")["app_hash"] == modified_hash
    declined = [e for e in audit if e["event"] == "site-declined"]
    assert declined and declined[0]["site"] == "A" and declined[0]["reason"] == "app-not-approved"
