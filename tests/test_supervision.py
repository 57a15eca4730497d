"""Children that must stay up: a port clash at start-up is retried on a new port, a port
someone else holds is never mistaken for the child's, and an exit is noticed at once."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from fedmed.common import processes, supervision
from fedmed.common.processes import flower_env

# A tiny server: binds argv[1] (after an optional delay), listens, waits to be stopped.
SERVER = ("import socket, sys, time\n"
          "time.sleep(float(sys.argv[2]))\n"
          "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
          "print('listening', flush=True); time.sleep(60)\n")


def _server(delay: float = 0.0):
    return lambda port: [sys.executable, "-c", SERVER, str(port), str(delay)]


@pytest.fixture
def taken():
    """A port some other program listens on."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s.getsockname()[1]


def test_a_clash_at_start_up_is_retried_on_a_new_port(taken, monkeypatch):
    picks = iter([taken, processes.free_port()])
    monkeypatch.setattr(processes, "free_port", lambda host="127.0.0.1": next(picks))
    notes: list[str] = []
    child, port = supervision.start_on_free_port("server", _server(), flower_env(), on_retry=notes.append,
                                                 timeout=30)
    try:
        assert port != taken and child.running() and child.listening("127.0.0.1", port)
        assert len(notes) == 1 and f"could not bind port {taken}" in notes[0]
    finally:
        child.stop()
    assert not child.running()


def test_a_port_someone_else_answers_on_is_not_the_childs(taken):
    # The child binds only after a second; meanwhile the port answers — but not from it.
    child = supervision.Child("server", _server(delay=1.0)(taken), flower_env())
    try:
        assert not child.listening("127.0.0.1", taken)
        assert not child.wait_listening("127.0.0.1", taken, timeout=30)
        assert child.port_clash  # it reported the clash and exited
    finally:
        child.stop()


def test_a_clash_on_a_chosen_port_names_the_option(taken):
    with pytest.raises(supervision.PortInUse, match=f"--address 127.0.0.1:{taken}: the port is already in use"):
        supervision.start_on_port("server", _server()(taken), flower_env(), "127.0.0.1", taken, "--address",
                                  timeout=30)


def test_a_child_that_dies_at_start_up_is_reported_at_once():
    started = time.monotonic()
    with pytest.raises(supervision.ChildExited, match="the broken exited with code 3 while starting"):
        supervision.start_on_free_port("broken", lambda port: [sys.executable, "-c", "raise SystemExit(3)"],
                                       flower_env(), timeout=60)
    assert time.monotonic() - started < 20


def test_the_first_child_to_exit_is_noticed_at_once():
    quick = supervision.Child("quick", [sys.executable, "-c", "import time; time.sleep(0.5)"], flower_env())
    slow = supervision.Child("slow", [sys.executable, "-c", "import time; time.sleep(60)"], flower_env())
    try:
        assert supervision.first_exited([slow, quick]) is quick
        assert slow.running()
    finally:
        started = time.monotonic()
        supervision.stop_all([quick, slow])
    assert not slow.running() and time.monotonic() - started < 5


def test_free_ports_come_from_below_the_ephemeral_range():
    for _ in range(20):
        assert processes._PICK_FROM <= processes.free_port() < processes._ephemeral_start()
