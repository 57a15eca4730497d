"""The secret the site's executor and its SuperNode share for the Runtime API."""

from __future__ import annotations

import stat
from pathlib import Path

from fedmed.client.runtime_secret import read_runtime_secret, runtime_secret_path, write_runtime_secret
from fedmed.client.supernode import ClientOptions, executor_command, supernode_command


def test_a_fresh_secret_for_this_account_only_at_every_start(tmp_path: Path):
    first = read_runtime_secret(write_runtime_secret(tmp_path))
    path = write_runtime_secret(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(read_runtime_secret(path)) == 32 and read_runtime_secret(path) != first


def test_the_supernode_and_the_executor_are_given_the_same_secret(tmp_path: Path):
    options = ClientOptions(site="A", data_dir=tmp_path, server="127.0.0.1:9092", state_dir=tmp_path / "state",
                            insecure=True)
    node = supernode_command(options, 9094)
    executor = executor_command(options, 9094, tmp_path / "state")
    secret = str(runtime_secret_path(tmp_path / "state"))
    assert node[node.index("--superexec-auth-secret-file") + 1] == secret
    assert executor[executor.index("--auth-secret-file") + 1] == secret
    assert node[node.index("--isolation") + 1] == "process"  # Flower ignores the secret otherwise
