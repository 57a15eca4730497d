"""A site restarted at once after a crash, for real on loopback.

The SuperLink keeps a crashed site's session until it has missed two heartbeats (about a
minute) and refuses the same key meanwhile. A site started again within that minute is
refused, says why, retries, and joins once the old session is dropped; it trains again
in the same run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmed.server.audit import read_audit
from fedmed.server.outputs import read_metrics

from process_tree import kill_tree, start, start_coordinator, stop, wait_for  # noqa: E402 — tests/ is on sys.path under pytest
from enrolled_federation import enrolled_federation  # noqa: E402 — tests/ is on sys.path under pytest

pytestmark = pytest.mark.e2e


def _trained(run_dir: Path, site: str) -> list[int]:
    rows = read_metrics(run_dir)
    return [r["round"] for r in rows if (r["sites"].get(site) or {}).get("num_train_examples")]


def test_a_site_restarted_while_its_old_session_is_held_retries_and_rejoins(synthetic_sites: Path,
                                                                              tmp_path: Path, fedmed_cmd):
    co, keys = enrolled_federation(tmp_path, ("A", "B"))
    run_dir = tmp_path / "run"
    server, port = start_coordinator(fedmed_cmd + [
        "server", "start", "--certs", str(co), "--sites-dir", str(keys), "--address", "127.0.0.1:0",
        "--out", str(run_dir), "--rounds", "200", "--min-sites", "1", "--round-timeout", "60",
        "--image-size", "32", "--batch-size", "16"], tmp_path / "server.log")

    def client(site: str, log: str):
        return start(fedmed_cmd + [
            "client", "--site", site, "--data", str(synthetic_sites / site), "--server", f"127.0.0.1:{port}",
            "--state", str(tmp_path / "state" / site), "--certs", str(tmp_path / f"certs-{site}"), "--no-dp",
        ], tmp_path / log)

    sites = {s: client(s, f"client-{s}.log") for s in ("A", "B")}
    restarted = tmp_path / "client-A-restarted.log"
    try:
        assert wait_for(lambda: _trained(run_dir, "A"), 240), (tmp_path / "server.log").read_text()
        kill_tree(sites["A"])  # SIGKILL: the running marker stays, the SuperLink keeps the session
        sites["A"] = client("A", restarted.name)
        assert wait_for(lambda: "still holds the session" in restarted.read_text(), 120), restarted.read_text()
        rejoined_after = max(_trained(run_dir, "A"))
        # Two missed 30 s heartbeats drop the old session; the site then joins and trains.
        assert wait_for(lambda: max(_trained(run_dir, "A")) > rejoined_after, 240), restarted.read_text()
    finally:
        stop(server, *sites.values())
    out = restarted.read_text()
    assert out.count("still holds the session") >= 1
    assert "must be enrolled" not in out  # a crashed site is not told to enrol while it waits
    assert "Traceback" not in out
    # The coordinator's audit log says why: the key is enrolled, its old node still online.
    refused = [e for e in read_audit(run_dir) if e["event"] == "site-refused"]
    assert refused and all(e["reason"] == "node-still-online" and e["site"] == "A" for e in refused)
