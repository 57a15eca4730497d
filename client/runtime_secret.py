"""The secret that lets only this site's executor take its SuperNode's tasks.

The SuperNode (`--isolation process`) queues each message as a task on its Runtime API,
an HTTP port on loopback; whoever takes a task (`AcquireTask`) gets its message, the
site's node config (data and state folders) and a token to reply as the site. Any
local account can reach a loopback port, so `fedmed client` starts the SuperNode with
Flower 1.42's `--superexec-auth-secret-file` (experimental in 1.42): `AcquireTask` must
then carry an HMAC of the request made with this secret (`flwr/supercore/auth/`), and
every other Runtime call needs the token only `AcquireTask` hands out. fedmed's
executor signs with the same file.

A fresh random secret is written at every start, in the site's state folder (0700),
readable by the site's account only (0600); it never leaves the machine.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_FILE = "runtime-api.secret"


def runtime_secret_path(state_dir: Path) -> Path:
    return Path(state_dir).resolve() / SECRET_FILE


def write_runtime_secret(state_dir: Path) -> Path:
    """A new 32-byte secret, created 0600 (never briefly readable by others)."""
    path = runtime_secret_path(state_dir)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
    finally:
        os.close(fd)
    return path


def read_runtime_secret(path: Path) -> bytes:
    data = Path(path).read_bytes()
    if not data:
        raise ValueError(f"{path}: empty Runtime API secret; restart `fedmed client`")
    return data
