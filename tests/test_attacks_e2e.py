"""Attacks by an enrolled site and by local users, for real on loopback: each refused.

One TLS federation of three enrolled sites, three rounds, quorum of two:

- site A is enrolled and honest in its own rounds, but someone with A's key (A itself,
  say) pushes a training instruction of its own making to site B, as Flower 1.42's
  SuperLink would store it: the public-port proxy refuses it, audits it under A's
  name, and B never trains on it (B trains with DP-SGD: its privacy ledger holds
  exactly the rounds of the real run);
- site D lies about its example counts (`lying_site/sitecustomize.py`): 1e9, NaN, 0,
  -3 and 12.5 in turn, in training and evaluation replies; each is left out and
  audited, the run completes on A and B and its final model is finite;
- a local process at site B without the Runtime API secret tries to take B's tasks
  from B's SuperNode, and is refused each time;
- a 64 MiB unauthenticated body sent to the public port is refused without the
  proxy's memory growing;
- the run's report lists exactly the enrolled sites, by name.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import os
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from fedmed.server.audit import read_audit, verify_chain
from process_tree import descendants, start, start_coordinator, stop, wait_for  # noqa: E402 — tests/ is on sys.path under pytest
from enrolled_federation import enrolled_federation  # noqa: E402 — tests/ is on sys.path under pytest

pytestmark = pytest.mark.e2e

LIES = "1e9,nan,0,-3,12.5"


def _events(run_dir: Path, name: str) -> list[dict]:
    return [e for e in read_audit(run_dir) if e["event"] == name]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _child(process: subprocess.Popen, marker: str) -> tuple[int, list[str]] | None:
    """A process below `process` whose command line mentions `marker`: what `ps` shows
    any local user."""
    for pid in descendants(process.pid):
        cmd = _cmdline(pid)
        if any(marker in part for part in cmd):
            return pid, cmd
    return None


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _signed_by(key_path: Path) -> dict[str, str]:
    """Flower's SuperNode authentication headers, made with a site's private key."""
    from cryptography.hazmat.primitives import serialization
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

    private = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return {"flwr-public-key": base64.b64encode(public_key_to_bytes(private.public_key())).decode(),
            "flwr-signature": base64.b64encode(sign_message(private, stamp.encode())).decode(),
            "flwr-timestamp": stamp, "content-type": "application/protobuf"}


def _inject_instruction(port: int, ca: Path, key: Path, sender: int, victim: int, run_id: int,
                        src: int) -> httpx.Response:
    """Push a `train` message to `victim` with `sender`'s key, as no reply to anything."""
    import hashlib
    import time

    from flwr.proto.fleet_pb2 import PushMessagesRequest  # pylint: disable=no-name-in-module
    from flwr.proto.message_pb2 import Message, Metadata, ObjectTree  # pylint: disable=no-name-in-module
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module

    message_id = hashlib.sha256(f"forged-{src}-{time.time()}".encode()).hexdigest()
    meta = Metadata(run_id=run_id, message_id=message_id, src_node_id=src, dst_node_id=victim,
                    message_type="train", ttl=3600.0, created_at=time.time(), group_id="1")
    body = PushMessagesRequest(node=Node(node_id=sender), messages_list=[Message(metadata=meta)],
                               message_object_trees=[ObjectTree(object_id=message_id)]).SerializeToString()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as client:
        return client.post(f"https://127.0.0.1:{port}/v1/fleet/push-messages", content=body,
                           headers=_signed_by(key))


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _acquire_without_the_secret(runtime_port: int, secret: bytes | None) -> int:
    """A local user's attempt to take a task from a site's SuperNode: the HTTP status."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor

    from fedmed.client.app_executor import ACQUIRE_TASK, _client

    signer = [SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_TASK})] if secret else []
    client = _client(f"127.0.0.1:{runtime_port}", *signer)
    client._retry_invoker.should_giveup = lambda exc: True  # one try; Flower's own would SIGINT us on 401
    try:
        response = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code
    finally:
        client.close()
    return 200 if not response.HasField("task") else 299  # 299: it got a task


def _send_huge_unauthenticated_body(port: int, ca: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"POST /v1/fleet/push-object HTTP/1.1\r\nhost: coordinator\r\n"
                    b"content-type: application/protobuf\r\ncontent-length: 67108864\r\n\r\n")
        try:
            for _ in range(1024):
                tls.sendall(b"\0" * 65536)
        except OSError:
            pass  # refused and closed


def test_one_site_cannot_harm_another(synthetic_sites: Path, tmp_path: Path, fedmed_cmd):
    co, keys = enrolled_federation(tmp_path, ("A", "B", "D"))
    run_dir = tmp_path / "run"
    # Port 0: the coordinator picks a free port itself (retrying a clash) and prints it.
    server, port = start_coordinator(fedmed_cmd + [
        "server", "start", "--certs", str(co), "--sites-dir", str(keys), "--address", "127.0.0.1:0",
        "--rounds", "3", "--min-sites", "2", "--out", str(run_dir), "--round-timeout", "120",
        "--image-size", "32", "--batch-size", "16"], tmp_path / "server.log")

    def client(site: str, data: str, env: dict | None = None, *flags: str) -> subprocess.Popen:
        return start(fedmed_cmd + [
            "client", "--site", site, "--data", str(synthetic_sites / data), "--server", f"127.0.0.1:{port}",
            "--state", str(tmp_path / "state" / site), "--certs", str(tmp_path / f"certs-{site}"), *flags,
        ], tmp_path / f"client-{site}.log", env)

    liar_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(Path(__file__).parent / d) for d in ("lying_site", "site_hooks")), "FEDMED_TEST_LIES": LIES}
    sites = {"A": client("A", "A", None, "--no-dp"),
             "B": client("B", "B"),  # the victim trains with DP-SGD: its ledger shows what it trained on
             "D": client("D", "C", liar_env, "--no-dp")}
    try:
        assert wait_for(lambda: _events(run_dir, "run-started"), 240), (tmp_path / "server.log").read_text()
        run_id = int(_events(run_dir, "run-started")[0]["run_id"])
        nodes = {name: v["node_id"] for name, v in json.loads((run_dir / "sites.json").read_text()).items()}

        # 1. Site A sends B a training task of its own making, as the SuperLink itself
        #    (src = the SuperLink's node ID 1) or as itself: refused at the public port.
        for src in (1, nodes["A"]):
            forged = _inject_instruction(port, co / "ca.crt", tmp_path / "certs-A" / "A.key", nodes["A"],
                                         nodes["B"], run_id, src)
            assert forged.status_code == 403 and "push-not-a-reply" in forged.text, forged.text

        # 2. A local user at site B, without the secret (or with a wrong one), tries to
        #    take B's tasks from its SuperNode's Runtime API; the port is in `ps`.
        #    (The SuperNode runs as `python -m fedmed.client.fleet_polling ... -- <Flower's
        #    flags>`; its Runtime flag is what `ps` shows.)
        supernode = "--superexec-auth-secret-file"
        assert wait_for(lambda: _child(sites["B"], supernode) is not None, 60)
        _, cmd = _child(sites["B"], supernode)
        runtime_port = int(cmd[cmd.index("--port") + 1])
        # The SuperNode's process shows in `ps` before its Runtime API listens.
        assert wait_for(lambda: _listening(runtime_port), 120)
        secret_file = Path(cmd[cmd.index("--superexec-auth-secret-file") + 1])
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "state" / "B").stat().st_mode & 0o777 == 0o700
        assert _acquire_without_the_secret(runtime_port, None) == 401
        assert _acquire_without_the_secret(runtime_port, b"a guess" * 5) == 401

        # 3. A 64 MiB body without signature headers costs the proxy nothing.
        proxy_pid, _ = _child(server, "fedmed.server.proxy")
        before = _rss_kib(proxy_pid)
        _send_huge_unauthenticated_body(port, co / "ca.crt")
        grown = _rss_kib(proxy_pid) - before
        assert grown < 5 * 1024, f"the proxy grew by {grown} KiB"

        # Between rounds, B's tasks are still out of reach.
        assert wait_for(lambda: _events(run_dir, "round-completed"), 300), (tmp_path / "server.log").read_text()
        assert _acquire_without_the_secret(runtime_port, None) == 401
        code = server.wait(timeout=600)
    finally:
        stop(server, *sites.values())
    server_out = (tmp_path / "server.log").read_text()
    assert code == 0, server_out + (run_dir / "superlink.log").read_text()[-3000:]
    print(f"proxy memory after a 64 MiB unauthenticated body: +{grown} KiB")

    audit = list(read_audit(run_dir))
    assert verify_chain(run_dir) is None

    # The forged instruction: audited under A's name, never trained on by B.
    forged = [e for e in audit if e["event"] == "fleet-refused"]
    assert forged and all(e["site"] == "A" and e["node_id"] == nodes["A"] for e in forged)
    assert {e["reason"] for e in forged} == {"push-not-a-reply"}
    from fedmed.client.privacy.ledger import DP_SGD, GAUSSIAN, PrivacyLedger

    ledger = PrivacyLedger.audit(tmp_path / "state" / "B")
    # One training row and one evaluation release per round of the real run, nothing else.
    assert sorted(e.round for e in ledger.entries if e.mechanism == DP_SGD) == [1, 2, 3]
    assert sorted(e.round for e in ledger.entries if e.mechanism == GAUSSIAN) == [1, 2, 3]
    assert {str(e.run) for e in ledger.entries} == {str(run_id)}

    # The lying counts: every one of D's replies left out and named; A and B carried
    # every round, and the final model is finite.
    completed = [e for e in audit if e["event"] == "round-completed"]
    assert [e["contributors"] for e in completed] == [["A", "B"]] * 3
    rejected = [e for e in audit if e["event"] in ("update-rejected", "reply-rejected")]
    assert {e["site"] for e in rejected} == {"D"}
    reasons = {e["reason"].split(":")[0] for e in rejected}
    assert reasons == {"num-examples-out-of-proportion", "num-examples-not-finite", "num-examples-not-positive",
                       "num-examples-not-an-integer"}, reasons
    assert len([e for e in rejected if e["event"] == "update-rejected"]) == 3
    assert "update from site D rejected (num-examples-out-of-proportion" in server_out
    from fedmed.common.checkpoint import load_checkpoint

    final = load_checkpoint(run_dir / "model-final.pt")["state_dict"]
    assert all(math.isfinite(float(v.float().abs().sum())) for v in final.values() if v.is_floating_point())
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"

    # The oversized body: refused before its body, audited.
    refused = [e for e in audit if e["event"] == "site-refused"]
    assert any(e["reason"] == "unauthenticated:missing-signature" and e["call"] == "push-object" for e in refused)

    # Sites by name, never by node ID: in the report and in the terminal.
    from fedmed.server.report import _read_run

    assert _read_run(run_dir).sites == ["A", "B", "D"]
    report = (run_dir / "report.html").read_text()
    assert not any(str(node_id) in report or str(node_id) in server_out for node_id in nodes.values())
    assert "site A: push-messages refused at the public port (push-not-a-reply)" in server_out

    # What the coordinator keeps is its account's alone.
    assert run_dir.stat().st_mode & 0o777 == 0o700
    for name in ("superlink.db", "model-final.pt", "audit.jsonl", "sites.json"):
        assert (run_dir / name).stat().st_mode & 0o077 == 0, name
