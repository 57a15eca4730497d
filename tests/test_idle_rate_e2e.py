"""An idle site does not hammer its coordinator: a real `fedmed client` connected to a
real SuperLink with no run makes at most one Fleet API request per 2 s (its polls and
Flower's heartbeat together), counted on the wire by a relay between the two."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from fedmed.client.fleet_polling import ACTIVE_WINDOW_S
from fedmed.common.processes import executable, flower_env, free_port, wait_for_port
from process_tree import start, stop  # noqa: E402 — tests/ is on sys.path under pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IDLE_RATE_LIMIT = 0.5  # requests per second
MEASURE_S = 20.0
REQUEST = b"POST /v1/fleet/"


class CountingRelay:
    """Forwards one TCP port to `target` and counts the Fleet API requests going up."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.requests: list[tuple[float, bytes]] = []  # (time, request line)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if count:
                    seen = tail + data
                    start_at = 0
                    while (i := seen.find(REQUEST, start_at)) >= 0:
                        end = seen.find(b" ", i + 5)
                        self.requests.append((time.monotonic(), seen[i + 5:end if end > 0 else i + 60]))
                        start_at = i + len(REQUEST)
                    tail = seen[-(len(REQUEST) - 1):] if len(seen) >= len(REQUEST) else seen
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


def _superlink(tmp_path: Path):
    """A SuperLink on a free port; another port if that one was taken meanwhile."""
    for attempt in range(3):
        port = free_port()
        process = start([executable("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                         "--port", str(port), "--disable-runtime-dependency-installation"],
                        tmp_path / f"superlink-{attempt}.log", env=flower_env({"FLWR_HOME": str(tmp_path / "flwr")}))
        if wait_for_port("127.0.0.1", port, 120, process):
            return process, port
        stop(process)
    pytest.fail("no SuperLink started; see superlink-*.log")


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_an_idle_site_makes_at_most_one_request_per_two_seconds(synthetic_sites: Path, tmp_path: Path,
                                                                  fedmed_cmd):
    superlink, port = _superlink(tmp_path)
    relay = CountingRelay(("127.0.0.1", port))
    site = None
    try:
        site = start(fedmed_cmd + ["client", "--site", "A", "--data", str(synthetic_sites / "A"),
                                   "--server", f"127.0.0.1:{relay.port}", "--state", str(tmp_path / "state"),
                                   "--insecure", "--no-dp"], tmp_path / "client.log")
        _wait(lambda: any(b"activate-node" in line for _, line in relay.requests), 180, "the site to connect")
        joined = next(t for t, line in relay.requests if b"activate-node" in line)
        # A site that just connected looks quickly for a run's first message; then it idles.
        idle_from = joined + ACTIVE_WINDOW_S + 1.0
        time.sleep(max(0.0, idle_from - time.monotonic()))
        time.sleep(MEASURE_S)
        window = [line for t, line in relay.requests if idle_from <= t < idle_from + MEASURE_S]
        assert site.poll() is None, (tmp_path / "client.log").read_text()[-2000:]
        assert window, "the site made no request at all while idle; is it still connected?"
        rate = len(window) / MEASURE_S
        assert rate <= IDLE_RATE_LIMIT, f"{rate:.2f} requests/s while idle: {window}"
    finally:
        stop(site, superlink)
        relay.close()
