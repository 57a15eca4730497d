"""Stopping and joining as an operator sees it, with real processes: Ctrl-C ends a
simulation and a coordinator within 10 s with status.json `interrupted` and one line;
an `--insecure` site against a TLS coordinator exits non-zero within 60 s with a
one-line reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from process_tree import start, start_coordinator, stop, wait_for  # noqa: E402 — tests/ is on sys.path under pytest
from enrolled_federation import enrolled_federation  # noqa: E402 — tests/ is on sys.path under pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _ctrl_c_reaches_children():
    """A command started in the background by a script inherits SIGINT ignored, and so
    would the processes these tests start; an operator's terminal passes Ctrl-C on."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt(process: subprocess.Popen, sig: int = signal.SIGINT) -> float:
    """Send `sig` as a terminal's Ctrl-C does (to the whole process group); seconds to exit."""
    started = time.monotonic()
    os.killpg(process.pid, sig)
    process.wait(timeout=30)
    return time.monotonic() - started


def test_ctrl_c_ends_a_simulation_within_10_s(synthetic_sites: Path, tmp_path: Path, fedmed_cmd):
    run_dir = tmp_path / "run"
    sim = start(fedmed_cmd + ["simulate", "--data", str(synthetic_sites), "--rounds", "50", "--no-dp",
                              "--image-size", "32", "--batch-size", "16", "--out", str(run_dir)],
                tmp_path / "simulate.log")
    try:
        # The ServerApp has started (it writes config.json) and the sites are training.
        assert wait_for(lambda: (run_dir / "config.json").exists() or sim.poll() is not None, 240), \
            (tmp_path / "simulate.log").read_text()
        seconds = _interrupt(sim)
    finally:
        stop(sim)
    out = (tmp_path / "simulate.log").read_text()
    assert seconds < 10, out
    assert sim.returncode == 130, out
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["reason"] == "stopped by Ctrl-C"
    assert status["rounds_planned"] == 50
    assert out.count("interrupted by Ctrl-C") == 1 and "Traceback" not in out, out


def test_an_insecure_site_against_tls_is_told_why_and_a_coordinator_stops_on_ctrl_c(
        synthetic_sites: Path, tmp_path: Path, fedmed_cmd):
    co, keys = enrolled_federation(tmp_path, ("A",), certs="certs")
    run_dir = tmp_path / "run"
    server, port = start_coordinator(fedmed_cmd + [
        "server", "start", "--certs", str(co), "--sites-dir", str(keys), "--address", "127.0.0.1:0",
        "--rounds", "1", "--min-sites", "1", "--out", str(run_dir)], tmp_path / "server.log")
    try:
        started = time.monotonic()
        site = subprocess.run(fedmed_cmd + ["client", "--site", "I", "--data", str(synthetic_sites / "A"),
                                            "--server", f"127.0.0.1:{port}", "--state", str(tmp_path / "state"),
                                            "--insecure", "--no-dp"],
                              capture_output=True, text=True, timeout=90)
        elapsed = time.monotonic() - started
        seconds = _interrupt(server)
    finally:
        stop(server)
    assert site.returncode not in (0, None) and elapsed < 60, site.stdout + site.stderr
    reasons = [line for line in site.stdout.splitlines() if line.startswith("site I: cannot join:")]
    assert reasons and "uses TLS" in reasons[-1] and "--certs DIR" in reasons[-1], site.stdout
    assert "Traceback" not in site.stdout + site.stderr

    out = (tmp_path / "server.log").read_text()
    assert seconds < 10 and server.returncode == 130, out
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert out.strip().splitlines()[-1].startswith("interrupted by Ctrl-C after 0 of 1 round(s)"), out
    assert "Traceback" not in out
