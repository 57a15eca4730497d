"""One site process per state folder: a second `fedmed client` on the same --state is
refused at start, and a crashed holder never leaves the folder locked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedmed.client.state_lock import LOCK_FILE, StateLocked, state_lock
from fedmed.client.supernode import ClientOptions, ClientSetupError, run_client


def _holder(state: Path) -> subprocess.Popen:
    """Another process holding the folder's lock, as a running `fedmed client` does."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom fedmed.client.state_lock import state_lock\n"
            "with state_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(state)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_client_on_the_same_state_is_refused_at_start(tmp_path: Path):
    state, data = tmp_path / "state", tmp_path / "data"
    state.mkdir()
    data.mkdir()  # refused before the data is even scanned
    holder = _holder(state)
    try:
        options = ClientOptions(site="A", data_dir=data, server="127.0.0.1:9", state_dir=state,
                                insecure=True)
        with pytest.raises(ClientSetupError, match=rf"--state {state}: this state folder is in use by another "
                                                   rf"fedmed process \(pid {holder.pid}\)"):
            run_client(options)
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_frees_the_folder(tmp_path: Path):
    holder = _holder(tmp_path)
    with pytest.raises(StateLocked):
        with state_lock(tmp_path):
            pass
    os.kill(holder.pid, signal.SIGKILL)  # a crash: nothing of fedmed's runs to unlock
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # the file stays; the kernel dropped the lock
    with state_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    with state_lock(tmp_path):  # and released again on leaving the block
        pass


def test_a_simulation_refuses_a_state_folder_in_use(tmp_path: Path):
    from fedmed.client.site import dicom_site
    from fedmed.common.federation import FederationConfig
    from fedmed.simulations.runner import simulate

    state = tmp_path / "state" / "A"
    state.mkdir(parents=True)
    holder = _holder(state)
    try:
        with pytest.raises(ValueError, match=f"--state {state}: this state folder is in use"):
            simulate([dicom_site("A", tmp_path, state)], FederationConfig(rounds=1, min_sites=1), tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "run").exists()  # refused before anything ran
