"""The coordinator's public port: TLS, the Fleet API only, everything else refused.

Flower 1.42's SuperLink serves the Fleet API (what SuperNodes call), the Control API
(submit and stop runs, register SuperNodes) and the ServerAppIo API on one HTTP(S)
port, and the open-source Control API has no authentication: whoever reaches that port
can submit a run — and a run ships code to every site. So `fedmed server start` binds
the SuperLink to loopback only and puts this proxy on the public address:

- it terminates TLS with the coordinator's certificate (`server.crt`/`server.key`);
- it forwards `POST /v1/fleet/<call>` to the loopback SuperLink, over TLS checked
  against the federation CA, passing headers and body through untouched (SuperNode
  authentication signs a timestamp header, which must arrive as sent);
- it answers 403 to every other method and path (Control, ServerAppIo, health, docs);
- it writes to the run's audit log: refused TLS handshakes (a site without TLS, or one
  that does not trust the federation CA), SuperNodes the SuperLink refused (key not
  enrolled), and refused Control/ServerAppIo calls, each with the peer's address.

Control therefore stays on the coordinator's machine: `flwr run`, `flwr stop` and
`flwr supernode register` reach it only through loopback. Every Fleet call is a unary
request and response (no streaming or long-poll route exists in
`flwr/superlink/routers/fleet/router.py`; SuperNodes poll), so each is buffered whole.

Run as `python -m fedmed.server.proxy --listen HOST:PORT --upstream 127.0.0.1:PORT
--certs DIR --run-dir DIR`; `fedmed server start` does this.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import h11
import httpx

from fedmed.common.certs import server_material
from fedmed.common.processes import split_address
from fedmed.server.audit import AuditLog

FLEET_PREFIX = "/v1/fleet/"
PUBLIC_KEY_HEADER = "flwr-public-key"
MAX_BODY = 512 * 1024 * 1024      # far above any Fleet object; bounds memory per request
READ_TIMEOUT = 300.0              # an idle keep-alive connection is closed after this
HANDSHAKE_TIMEOUT = 15.0
AUDIT_REPEAT_SECONDS = 60.0       # a retrying SuperNode is audited once a minute, not per try
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "host", "content-length"}


def _key_sha256(header_value: bytes | None) -> str | None:
    """The audit log's name for a SuperNode key: SHA-256 of its OpenSSH encoding."""
    if not header_value:
        return None
    try:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_public_key(base64.b64decode(header_value))
        blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return hashlib.sha256(blob.split()[1]).hexdigest()
    except Exception:  # noqa: BLE001 — a garbled header is itself worth recording as such
        return "unreadable"


class FleetProxy:
    """Serve the public port; forward Fleet calls to the loopback SuperLink."""

    def __init__(self, server_ctx: ssl.SSLContext, upstream: str, upstream_ca: Path,
                 audit: AuditLog | None) -> None:
        self.server_ctx = server_ctx
        self.upstream = upstream
        self.audit = audit
        verify = ssl.create_default_context(cafile=str(upstream_ca))
        # No Nagle on the hop to the SuperLink either: headers and body go out as
        # separate writes.
        transport = httpx.AsyncHTTPTransport(
            verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.client = httpx.AsyncClient(base_url=f"https://{upstream}", transport=transport,
                                        timeout=httpx.Timeout(READ_TIMEOUT, connect=10.0))
        self._audited: dict[tuple, float] = {}

    def _audit(self, event: str, key: tuple, **fields) -> None:
        if self.audit is None:
            return
        now = time.monotonic()
        if now - self._audited.get((event, *key), -1e9) < AUDIT_REPEAT_SECONDS:
            return
        self._audited[(event, *key)] = now
        try:
            self.audit.record(event, **fields)
        except OSError as exc:
            print(f"[fedmed proxy] could not write the audit log: {exc}", file=sys.stderr, flush=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if peer else "?"
        try:
            await asyncio.wait_for(writer.start_tls(self.server_ctx), HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
            # A handshake the peer got wrong (no TLS, a CA it does not trust) is audited;
            # a connection closed before saying anything (a port probe) is not.
            if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
                reason = getattr(exc, "reason", None) or type(exc).__name__
                self._audit("site-refused", (peer_host, reason), peer=peer_host,
                            reason=f"tls-handshake-failed:{reason}")
            writer.close()
            return
        try:
            await self._serve(reader, writer, peer_host)
        except (OSError, asyncio.TimeoutError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        while True:
            request, body = await self._read_request(conn, reader)
            if request is None:
                return
            status, headers, content = await self._respond(request, body, peer)
            # One write per response: separate small segments would meet Nagle's algorithm
            # and delayed ACKs at the peer (tens of milliseconds each).
            writer.write(b"".join([conn.send(h11.Response(status_code=status, headers=headers)),
                                   conn.send(h11.Data(data=content)) if content else b"",
                                   conn.send(h11.EndOfMessage())]))
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader):
        request, chunks, size = None, [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None, b""
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise h11.LocalProtocolError("request body too large")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)

    async def _respond(self, request: h11.Request, body: bytes, peer: str):
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        if method != "POST" or not path.startswith(FLEET_PREFIX) or ".." in path:
            self._audit("control-refused", (peer, method, path), peer=peer, method=method, path=path)
            detail = json.dumps({"detail": "only the Fleet API is served on this port; the "
                                 "federation is controlled from the coordinator's machine"}).encode()
            return 403, [("content-type", "application/json"),
                         ("content-length", str(len(detail)))], detail
        headers = [(k, v) for k, v in request.headers if k.decode().lower() not in HOP_BY_HOP]
        try:
            upstream = await self.client.post(path, content=body, headers=headers)
        except httpx.HTTPError:
            return 502, [("content-length", "0")], b""
        if upstream.status_code in (401, 412):
            key = _key_sha256(dict(request.headers).get(PUBLIC_KEY_HEADER.encode()))
            code = None
            try:
                code = upstream.json().get("code")
            except (ValueError, AttributeError):
                pass
            self._audit("site-refused", (peer, key, upstream.status_code), peer=peer, key_sha256=key,
                        reason="not-enrolled" if upstream.status_code == 412 else "unauthenticated",
                        http_status=upstream.status_code, flower_code=code, call=path[len(FLEET_PREFIX):])
        content = upstream.content
        out = [(k, v) for k, v in upstream.headers.raw if k.decode().lower() not in HOP_BY_HOP]
        out.append((b"content-length", str(len(content)).encode()))
        return upstream.status_code, out, content


class _PlainUntilTls(asyncio.StreamReaderProtocol):
    """Accepts a TCP connection without reading from it.

    The handshake is done by `handle` (`StreamWriter.start_tls`) so that a failed one
    reaches fedmed and is audited; asyncio's own TLS server drops those silently. Bytes
    read before the TLS layer is in place would be lost to it, so reading stays paused
    until `start_tls` resumes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()
        super().connection_made(transport)


def server_context(certs: Path) -> ssl.SSLContext:
    material = server_material(certs)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(material.cert), str(material.key))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def serve(listen: str, upstream: str, certs: Path, run_dir: Path | None,
                ready: asyncio.Event | None = None) -> None:
    host, port = split_address(listen, "--listen")
    split_address(upstream, "--upstream")
    proxy = FleetProxy(server_context(certs), upstream, server_material(certs).ca_cert,
                       AuditLog(run_dir) if run_dir else None)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _PlainUntilTls(asyncio.StreamReader(), proxy.handle),
                                      host, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"[fedmed proxy] public port {listen} -> Fleet API of {upstream}", flush=True)
    if ready is not None:
        ready.set()
    async with server:
        await stop.wait()
    await proxy.client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fedmed public-port proxy (Fleet API only)")
    parser.add_argument("--listen", required=True, help="public HOST:PORT")
    parser.add_argument("--upstream", required=True, help="the loopback SuperLink's HOST:PORT")
    parser.add_argument("--certs", required=True, type=Path, help="folder with ca.crt, server.crt, server.key")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder whose audit.jsonl to append to")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.upstream, args.certs, args.run_dir))
    except (ValueError, OSError) as exc:
        print(f"[fedmed proxy] error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
