"""The public-port proxy against a stand-in SuperLink: what passes, what is refused,
what is audited, and what it costs per request."""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.fleet_pb2 import (  # pylint: disable=no-name-in-module
    ActivateNodeRequest,
    PullMessagesRequest,
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
)
from flwr.proto.message_pb2 import Message, Metadata, ObjectTree, PushObjectRequest  # pylint: disable=no-name-in-module
from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module

from fedmed.common.certs import init_federation, key_fingerprint
from fedmed.common.supervision import start_on_free_port
from fedmed.server.audit import read_audit


class _Upstream(BaseHTTPRequestHandler):
    """Answers like the SuperLink's Fleet API: echoes the request, or refuses a key."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the SuperLink's server does
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between header and body
    wbufsize = 1 << 16
    seen: list[tuple[str, dict, bytes]] = []

    def do_POST(self):  # noqa: N802 — http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path.endswith("/pull-messages") and PullMessagesRequest.FromString(body).node.node_id == NODE_A:
            ins = Message(metadata=Metadata(run_id=1, message_id="ins-1", src_node_id=SUPERLINK_NODE_ID,
                                            dst_node_id=NODE_A, message_type="train"))
            payload, status = PullMessagesResponse(messages_list=[ins], message_object_trees=[
                ObjectTree(object_id="ins-1")]).SerializeToString(), 200
        elif self.path.endswith("/activate-node"):
            payload, status = json.dumps({"code": 2004, "message": "no such node"}).encode(), 412
        elif self.path.endswith("/push-messages"):
            payload, status = PushMessagesResponse(objects_to_push=["obj-1"]).SerializeToString(), 200
        else:
            payload, status = body, 200
        self.send_response(status)
        self.send_header("content-type", "application/protobuf")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy")
    certs = root / "certs"
    init_federation(certs, "localhost")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "server.crt", certs / "server.key")
    upstream.socket = ctx.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    run_dir = root / "run"
    run_dir.mkdir()
    # One enrolled site, as `fedmed server start` leaves it in sites.json.
    site_key = ec.generate_private_key(ec.SECP384R1())
    (run_dir / "sites.json").write_text(json.dumps(
        {"A": {"key_sha256": key_fingerprint(site_key.public_key()), "node_id": NODE_A}}))
    # Started as `fedmed server start` starts it: on a free port, a clash retried on another.
    proxy, port = start_on_free_port("proxy", lambda port: [
        sys.executable, "-m", "fedmed.server.proxy", "--listen", f"127.0.0.1:{port}",
        "--upstream", f"127.0.0.1:{upstream.server_address[1]}", "--certs", str(certs),
        "--run-dir", str(run_dir)], dict(os.environ), timeout=30)
    yield {"certs": certs, "port": port, "run_dir": run_dir, "upstream": upstream, "key": site_key,
           "proxy": proxy}
    proxy.stop()
    upstream.shutdown()


NODE_A = 4242


def signed(private_key) -> dict[str, str]:
    """Flower's SuperNode authentication headers: a timestamp signed with the site's key."""
    import base64
    import datetime

    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return {"flwr-public-key": base64.b64encode(public_key_to_bytes(private_key.public_key())).decode(),
            "flwr-signature": base64.b64encode(sign_message(private_key, stamp.encode())).decode(),
            "flwr-timestamp": stamp, "content-type": "application/protobuf"}


def _client(federation, ca: Path | None = None) -> httpx.Client:
    return httpx.Client(base_url=f"https://127.0.0.1:{federation['port']}",
                        verify=ssl.create_default_context(cafile=str(ca or federation["certs"] / "ca.crt")))


def _events(federation, name):
    return [e for e in read_audit(federation["run_dir"]) if e["event"] == name]


def _reply(reply_to: str, src: int = NODE_A, dst: int = SUPERLINK_NODE_ID) -> bytes:
    meta = Metadata(run_id=1, message_id="r", src_node_id=src, dst_node_id=dst,
                    reply_to_message_id=reply_to, message_type="train")
    return PushMessagesRequest(node=Node(node_id=NODE_A), messages_list=[Message(metadata=meta)],
                               message_object_trees=[ObjectTree(object_id="r")]).SerializeToString()


def test_fleet_calls_pass_through_untouched(federation):
    """A site's round as the proxy sees it: pull an instruction, push its reply, push the
    object the SuperLink asks for — byte for byte, signature headers as sent."""
    headers = signed(federation["key"])
    pull = PullMessagesRequest(node=Node(node_id=NODE_A)).SerializeToString()
    body = PushObjectRequest(node=Node(node_id=NODE_A), run_id=1, object_id="obj-1",
                             object_content=bytes(range(256)) * 4096).SerializeToString()  # 1 MiB
    with _client(federation) as client:
        assert client.post("/v1/fleet/pull-messages", content=pull, headers=headers).status_code == 200
        assert client.post("/v1/fleet/push-messages", content=_reply("ins-1"), headers=headers).status_code == 200
        reply = client.post("/v1/fleet/push-object", content=body, headers=headers)
    assert reply.status_code == 200 and reply.content == body
    path, seen_headers, seen_body = _Upstream.seen[-1]
    assert path == "/v1/fleet/push-object" and seen_body == body
    for key, value in headers.items():
        assert seen_headers[key] == value


@pytest.mark.parametrize("call, body, reason", [
    ("push-messages", _reply(""), "push-not-a-reply"),                   # an instruction of its own
    ("push-messages", _reply("ins-1", dst=NODE_A + 1), "reply-not-to-coordinator"),
    ("push-messages", _reply("someone-elses"), "reply-to-unknown-instruction"),
    ("push-object", PushObjectRequest(node=Node(node_id=NODE_A), run_id=1, object_id="obj-9",
                                      object_content=b"x").SerializeToString(), "object-not-requested"),
    ("pull-messages", PullMessagesRequest(node=Node(node_id=NODE_A + 1)).SerializeToString(),
     "node-id-not-the-signers"),
    ("pull-messages", b"\xff\xff", "malformed-request"),
])
def test_what_a_site_may_not_do_is_refused_and_audited_with_its_name(federation, call, body, reason):
    count = len(_Upstream.seen)
    with _client(federation) as client:
        client.post("/v1/fleet/pull-messages", headers=signed(federation["key"]),
                    content=PullMessagesRequest(node=Node(node_id=NODE_A)).SerializeToString())
        count = len(_Upstream.seen)
        reply = client.post(f"/v1/fleet/{call}", content=body, headers=signed(federation["key"]))
    assert reply.status_code == 403 and reason in reply.text
    assert len(_Upstream.seen) == count  # nothing reached the SuperLink
    refused = [e for e in _events(federation, "fleet-refused") if e["reason"].startswith(reason)]
    assert refused and refused[-1]["site"] == "A" and refused[-1]["node_id"] == NODE_A


def test_unauthenticated_and_oversized_requests_are_refused_before_their_body(federation):
    count = len(_Upstream.seen)
    with _client(federation) as client:
        reply = client.post("/v1/fleet/pull-messages", content=b"x")
        assert reply.status_code == 401 and "missing-signature" in reply.text
        # an enrolled site, but more than the limit: refused on the declared size
        reply = client.post("/v1/fleet/get-run", content=b"\0" * (1024 * 1024 + 1),
                            headers=signed(federation["key"]))
        assert reply.status_code == 413
    assert len(_Upstream.seen) == count
    assert any(e["reason"] == "unauthenticated:missing-signature" for e in _events(federation, "site-refused"))
    assert any(e["reason"].startswith("request-body-too-large") and e["site"] == "A"
               for e in _events(federation, "fleet-refused"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_huge_unauthenticated_body_costs_no_memory_and_garbage_no_time(federation):
    ctx = ssl.create_default_context(cafile=str(federation["certs"] / "ca.crt"))
    before = _rss_kib(federation["proxy"].process.pid)
    with socket.create_connection(("127.0.0.1", federation["port"])) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"POST /v1/fleet/push-object HTTP/1.1\r\nhost: x\r\n"
                    b"content-length: 67108864\r\n\r\n")
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:
                tls.sendall(b"\0" * 65536)
                sent += 65536
        except OSError:
            pass  # refused and closed
        assert sent < 64 * 1024 * 1024
    assert _rss_kib(federation["proxy"].process.pid) - before < 5 * 1024
    # Garbage after the handshake: the connection is closed at once, not kept.
    with socket.create_connection(("127.0.0.1", federation["port"])) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.settimeout(20)
        started = time.monotonic()
        tls.sendall(b"\x16\x03garbage garbage\r\n\r\n")
        try:
            while tls.recv(4096):
                pass
        except OSError:
            pass
        assert time.monotonic() - started < 15
    assert any(e["reason"] == "malformed-http" for e in _events(federation, "site-refused"))


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/control/start-run"), ("POST", "/v1/control/register-node"),
    ("POST", "/v1/control/stop-run"), ("POST", "/v1/serverappio/pull-messages"),
    ("GET", "/v1/fleet/pull-messages"), ("GET", "/docs"), ("POST", "/v1/fleet/../control/start-run"),
])
def test_everything_else_is_refused_and_audited(federation, method, path):
    count = len(_Upstream.seen)
    with _client(federation) as client:
        reply = client.request(method, path, content=b"x")
    assert reply.status_code == 403 and "only the Fleet API" in reply.text
    assert len(_Upstream.seen) == count  # nothing reached the SuperLink
    assert any(e["method"] == method for e in _events(federation, "control-refused"))


def test_a_refused_key_is_audited_with_its_fingerprint(federation):
    from cryptography.hazmat.primitives import serialization
    private = ec.generate_private_key(ec.SECP384R1())
    key = private.public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with _client(federation) as client:
        # Activation goes to the SuperLink, which knows no such key...
        reply = client.post("/v1/fleet/activate-node", headers=signed(private),
                            content=ActivateNodeRequest(public_key=pem, heartbeat_interval=30).SerializeToString())
        assert reply.status_code == 412
        # ...any other call of an unenrolled key stops at the proxy.
        reply = client.post("/v1/fleet/pull-messages", headers=signed(private),
                            content=PullMessagesRequest(node=Node(node_id=NODE_A)).SerializeToString())
        assert reply.status_code == 403
    refused = [e for e in _events(federation, "site-refused") if e.get("reason") == "not-enrolled"]
    assert {e["call"] for e in refused} == {"activate-node", "pull-messages"}
    assert {e["key_sha256"] for e in refused} == {key_fingerprint(key)}


def test_bad_tls_is_refused_and_audited(federation, tmp_path):
    init_federation(tmp_path / "other", "localhost")
    with pytest.raises(httpx.ConnectError), _client(federation, tmp_path / "other" / "ca.crt") as client:
        client.post("/v1/fleet/pull-messages", content=b"x")
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{federation['port']}/v1/fleet/pull-messages", content=b"x", timeout=5)
    with socket.create_connection(("127.0.0.1", federation["port"])):
        pass  # a port probe that says nothing is not a site and is not audited
    time.sleep(0.5)
    reasons = {e["reason"] for e in _events(federation, "site-refused")}
    assert "tls-handshake-failed:TLSV1_ALERT_UNKNOWN_CA" in reasons
    assert "tls-handshake-failed:HTTP_REQUEST" in reasons
    assert not any("EOF" in r or "Reset" in r for r in reasons)


def test_overhead_per_call_is_small(federation):
    """Keep-alive Fleet calls through the proxy vs straight to the upstream."""
    upstream_port = federation["upstream"].server_address[1]
    verify = ssl.create_default_context(cafile=str(federation["certs"] / "ca.crt"))

    headers = signed(federation["key"])
    body = PullMessagesRequest(node=Node(node_id=NODE_A)).SerializeToString()

    def per_call(base: str) -> float:
        with httpx.Client(base_url=base, verify=verify, headers=headers) as client:
            assert client.post("/v1/fleet/pull-messages", content=body).status_code == 200
            started = time.perf_counter()
            for _ in range(50):
                client.post("/v1/fleet/pull-messages", content=body)
            return (time.perf_counter() - started) / 50

    direct = per_call(f"https://127.0.0.1:{upstream_port}")
    proxied = per_call(f"https://127.0.0.1:{federation['port']}")
    print(f"Fleet call: {direct * 1000:.1f} ms direct, {proxied * 1000:.1f} ms through the proxy")
    # SuperNodes poll every 3 s; anything under a tenth of that is invisible in a round.
    assert proxied - direct < 0.3
