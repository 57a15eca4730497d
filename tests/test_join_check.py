"""A site that cannot join says why, once per attempt, with the fix; a failure retrying
cannot fix (TLS on one side only, a CA the site does not trust) ends it in bounded time."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedmed.client.join_check import JoinCheck, JoinError, probe
from fedmed.common.certs import init_federation


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 — http.server's naming
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(tls_certs: Path | None = None):
    # Port 0: the kernel picks the port as it binds it, so nothing can take it first.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    if tls_certs is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls_certs / "server.crt", tls_certs / "server.key")
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *args: None  # the handshakes that fail here are the point
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("join")
    init_federation(root / "ours", "localhost")
    init_federation(root / "other", "localhost")
    plain, tls = _serve(), _serve(root / "ours")
    yield {"plain": f"127.0.0.1:{plain.server_address[1]}", "tls": f"127.0.0.1:{tls.server_address[1]}",
           "ca": root / "ours" / "ca.crt", "other_ca": root / "other" / "ca.crt"}
    plain.shutdown()
    tls.shutdown()


def test_the_right_pairings_join(servers):
    assert probe(servers["plain"], insecure=True, ca_cert=None).ok
    assert probe(servers["tls"], insecure=False, ca_cert=servers["ca"]).ok


def test_nothing_listening_is_transient():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    result = probe(f"127.0.0.1:{port}", insecure=True, ca_cert=None)
    assert not result.ok and result.transient and "nothing listens at" in result.reason


@pytest.mark.parametrize("server, insecure, ca, expected", [
    ("tls", True, None, "uses TLS, and --insecure connects without it: start this site with --certs DIR"),
    ("plain", False, "ca", "does not use TLS (started with --insecure?)"),
    ("tls", False, "other_ca", "the coordinator's certificate is not trusted"),
])
def test_a_mismatch_is_named_with_its_fix(servers, server, insecure, ca, expected):
    result = probe(servers[server], insecure=insecure, ca_cert=servers[ca] if ca else None)
    assert not result.ok and not result.transient
    assert expected in result.reason


def test_a_lasting_mismatch_gives_up_in_bounded_time(servers):
    lines: list[str] = []
    check = JoinCheck(servers["tls"], insecure=True, ca_cert=None, say=lines.append, give_up_after=1.0)
    started = time.monotonic()
    with pytest.raises(JoinError, match="uses TLS"):
        check.wait_until_reachable()
    assert time.monotonic() - started < 10
    assert len(lines) >= 2 and all(line.startswith("cannot join: the coordinator at") for line in lines)
    assert lines[0].endswith("; retrying") and not lines[-1].endswith("; retrying")
