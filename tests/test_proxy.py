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

from fedmed.common.certs import init_federation
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
        if self.path.endswith("/activate-node") and b"unknown" in body:
            payload, status = json.dumps({"code": 2004, "message": "no such node"}).encode(), 412
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
    # Started as `fedmed server start` starts it: on a free port, a clash retried on another.
    proxy, port = start_on_free_port("proxy", lambda port: [
        sys.executable, "-m", "fedmed.server.proxy", "--listen", f"127.0.0.1:{port}",
        "--upstream", f"127.0.0.1:{upstream.server_address[1]}", "--certs", str(certs),
        "--run-dir", str(run_dir)], dict(os.environ), timeout=30)
    yield {"certs": certs, "port": port, "run_dir": run_dir, "upstream": upstream}
    proxy.stop()
    upstream.shutdown()


def _client(federation, ca: Path | None = None) -> httpx.Client:
    return httpx.Client(base_url=f"https://127.0.0.1:{federation['port']}",
                        verify=ssl.create_default_context(cafile=str(ca or federation["certs"] / "ca.crt")))


def _events(federation, name):
    return [e for e in read_audit(federation["run_dir"]) if e["event"] == name]


def test_fleet_calls_pass_through_untouched(federation):
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    headers = {"flwr-public-key": "a2V5", "flwr-signature": "c2ln", "flwr-timestamp": "2026-01-01T00:00:00",
               "content-type": "application/protobuf"}
    with _client(federation) as client:
        reply = client.post("/v1/fleet/push-object", content=body, headers=headers)
    assert reply.status_code == 200 and reply.content == body
    path, seen_headers, seen_body = _Upstream.seen[-1]
    assert path == "/v1/fleet/push-object" and seen_body == body
    for key, value in headers.items():
        assert seen_headers[key] == value


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
    from cryptography.hazmat.primitives.asymmetric import ec
    import base64

    from fedmed.common.certs import key_fingerprint

    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with _client(federation) as client:
        reply = client.post("/v1/fleet/activate-node", content=b"unknown",
                            headers={"flwr-public-key": base64.b64encode(pem).decode()})
    assert reply.status_code == 412
    refused = [e for e in _events(federation, "site-refused") if e.get("reason") == "not-enrolled"]
    assert refused and refused[-1]["key_sha256"] == key_fingerprint(key)


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

    def per_call(base: str) -> float:
        with httpx.Client(base_url=base, verify=verify) as client:
            client.post("/v1/fleet/pull-messages", content=b"warm-up")
            started = time.perf_counter()
            for _ in range(50):
                client.post("/v1/fleet/pull-messages", content=b"x" * 512)
            return (time.perf_counter() - started) / 50

    direct = per_call(f"https://127.0.0.1:{upstream_port}")
    proxied = per_call(f"https://127.0.0.1:{federation['port']}")
    print(f"Fleet call: {direct * 1000:.1f} ms direct, {proxied * 1000:.1f} ms through the proxy")
    # SuperNodes poll every 3 s; anything under a tenth of that is invisible in a round.
    assert proxied - direct < 0.3
