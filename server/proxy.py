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
- from the headers alone, before a byte of the body is buffered, it requires Flower's
  signature headers (checked as the SuperLink checks them), an enrolled key (resolved to
  the site's name and node ID through the run folder's `sites.json`) and a declared
  size within the call's limit (1 MiB; push-object: one array chunk, sized from the
  model);
- it parses each Fleet request and applies one site's rules (`server/fleet_guard.py`):
  a site may push only replies to instructions it received, addressed to the
  coordinator, and pull or confirm only its own messages and objects;
- it bounds open connections, requests in flight and idle or slow connections;
- it writes to the run's audit log: refused TLS handshakes (a site without TLS, or one
  that does not trust the federation CA), unauthenticated or unenrolled requests,
  SuperNodes the SuperLink refused, refused Control/ServerAppIo calls (with the peer's
  address), and every Fleet request of an enrolled site it refused (`fleet-refused`,
  with the site's name and the reason).

Control therefore stays on the coordinator's machine: `flwr run`, `flwr stop` and
`flwr supernode register` reach it only through loopback. Every Fleet call is a unary
request and response (no streaming or long-poll route exists in
`flwr/superlink/routers/fleet/router.py`; SuperNodes poll), so each is buffered whole,
at most MAX_IN_FLIGHT at a time.

Run as `python -m fedmed.server.proxy --listen HOST:PORT --upstream 127.0.0.1:PORT
--certs DIR --run-dir DIR`; `fedmed server start` does this.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import h11
import httpx

from google.protobuf.message import DecodeError

from fedmed.common.certs import server_material
from fedmed.common.processes import split_address
from fedmed.server.audit import AuditLog
from fedmed.server.enrollment import read_enrolled
from fedmed.server.fleet_guard import KEY_CALLS, REQUESTS, FleetGuard, Refused, check_signature, key_sha256, parse

FLEET_PREFIX = "/v1/fleet/"
PUBLIC_KEY_HEADER = "flwr-public-key"
# Request bodies: every Fleet call but push-object is a few kilobytes of protobuf;
# push-object carries one object, at most one chunk of an array (Flower splits arrays
# into 5 MiB chunks). `fedmed server start` sizes the push-object limit from the model
# (`request_limit`); both are checked before a byte of the body is buffered.
SMALL_BODY = 1024 * 1024
DEFAULT_MAX_BODY = 8 * 1024 * 1024
MAX_CONNECTIONS = 256             # open connections; more are closed on accept
MAX_IN_FLIGHT = 16                # requests buffered or forwarded at once; others wait unread
IDLE_TIMEOUT = 60.0               # a keep-alive connection with no request (SuperNodes poll every 3 s)
HEADER_TIMEOUT = 10.0             # from a request's first byte to the end of its headers
BODY_READ_TIMEOUT = 30.0          # longest wait for the next piece of a body
UPSTREAM_TIMEOUT = 300.0
HANDSHAKE_TIMEOUT = 10.0
LINGER_SECONDS = 1.0              # after refusing mid-request: let the peer read the answer
AUDIT_REPEAT_SECONDS = 60.0       # a retrying SuperNode is audited once a minute, not per try
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "host", "content-length"}


def request_limit(largest_object_bytes: int) -> int:
    """The push-object body limit for a model whose largest object on the wire has this
    many bytes of weights (`packed_arrays.largest_object_bytes`: at most one array chunk),
    with room for its protobuf framing and the rest of its record."""
    from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

    return max(SMALL_BODY, min(int(largest_object_bytes), FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE) + 256 * 1024)


def _key_sha256(header_value: bytes | None) -> str | None:
    """The audit log's name for a SuperNode key: SHA-256 of its OpenSSH encoding."""
    if not header_value:
        return None
    try:
        return key_sha256(base64.b64decode(header_value))
    except Exception:  # noqa: BLE001 — a garbled header is itself worth recording as such
        return "unreadable"


class EnrolledSites:
    """{key fingerprint: (site, node ID)} from the run folder's sites.json, re-read when
    an unknown key shows up (a site enrolled into the running federation)."""

    RELOAD_SECONDS = 2.0

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self._by_key: dict[str, tuple[str, int]] = {}
        self._loaded = -1e9

    def _load(self) -> None:
        self._loaded = time.monotonic()
        if self.run_dir is None:
            return
        try:
            enrolled = read_enrolled(self.run_dir)
        except (OSError, ValueError):
            return
        self._by_key = {str(v["key_sha256"]): (name, int(v["node_id"]))
                        for name, v in enrolled.items() if v.get("key_sha256") and v.get("node_id")}

    def lookup(self, key: str) -> tuple[str, int] | None:
        if key not in self._by_key and time.monotonic() - self._loaded > self.RELOAD_SECONDS:
            self._load()
        return self._by_key.get(key)


class _Answer(Exception):
    """End the request with this response; `close` when its body was not read."""

    def __init__(self, status: int, detail: str, close: bool = True) -> None:
        super().__init__(detail)
        self.status, self.detail, self.close = status, detail, close


class FleetProxy:
    """Serve the public port; forward Fleet calls to the loopback SuperLink."""

    def __init__(self, server_ctx: ssl.SSLContext, upstream: str, upstream_ca: Path,
                 audit: AuditLog | None, run_dir: Path | None = None,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.server_ctx = server_ctx
        self.upstream = upstream
        self.audit = audit
        self.max_body = max_body
        self.sites = EnrolledSites(run_dir)
        self.guard = FleetGuard()
        self._connections = 0
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        verify = ssl.create_default_context(cafile=str(upstream_ca))
        # No Nagle on the hop to the SuperLink either: headers and body go out as
        # separate writes.
        transport = httpx.AsyncHTTPTransport(
            verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.client = httpx.AsyncClient(base_url=f"https://{upstream}", transport=transport,
                                        timeout=httpx.Timeout(UPSTREAM_TIMEOUT, connect=10.0))
        self._audited: dict[tuple, float] = {}

    def _audit(self, event: str, key: tuple, **fields) -> None:
        if self.audit is None:
            return
        now = time.monotonic()
        if now - self._audited.get((event, *key), -1e9) < AUDIT_REPEAT_SECONDS:
            return
        self._audited[(event, *key)] = now
        if len(self._audited) > 10_000:  # keys vary with what strangers send: forget old ones
            self._audited = {k: t for k, t in self._audited.items() if now - t < AUDIT_REPEAT_SECONDS}
        try:
            self.audit.record(event, **fields)
        except OSError as exc:
            print(f"[fedmed proxy] could not write the audit log: {exc}", file=sys.stderr, flush=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if peer else "?"
        if self._connections >= MAX_CONNECTIONS:
            self._audit("site-refused", (peer_host, "too-many-connections"), peer=peer_host,
                        reason="too-many-connections")
            writer.close()
            return
        self._connections += 1
        try:
            await self._handle(reader, writer, peer_host)
        finally:
            self._connections -= 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_host: str) -> None:
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
        graceful = False
        try:
            graceful = await self._serve(reader, writer, peer_host)
        except h11.RemoteProtocolError:
            self._audit("site-refused", (peer_host, "malformed-http"), peer=peer_host, reason="malformed-http")
        except asyncio.TimeoutError:
            self._audit("site-refused", (peer_host, "request-too-slow"), peer=peer_host,
                        reason="request-too-slow")
        except (OSError, h11.ProtocolError):
            pass
        finally:
            # A TLS close waits (30 s) for the peer's close_notify: right for a site that
            # finished, not for one refused mid-request or sending garbage.
            if graceful:
                writer.close()
            else:
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str) -> bool:
        """Answer requests until the connection ends; True when it ended cleanly."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        while True:
            request = await self._read_head(conn, reader)
            if request is None:
                return True
            close = False
            try:
                status, headers, content = await self._respond(conn, reader, request, peer)
            except _Answer as answer:
                detail = json.dumps({"detail": answer.detail}).encode()
                status, content, close = answer.status, detail, answer.close
                headers = [("content-type", "application/json"), ("content-length", str(len(detail)))]
                if close:
                    headers.append(("connection", "close"))
            # One write per response: separate small segments would meet Nagle's algorithm
            # and delayed ACKs at the peer (tens of milliseconds each).
            writer.write(b"".join([conn.send(h11.Response(status_code=status, headers=headers)),
                                   conn.send(h11.Data(data=content)) if content else b"",
                                   conn.send(h11.EndOfMessage())]))
            await writer.drain()
            if close:
                await self._linger(reader)
                return False
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return True
            conn.start_next_cycle()

    @staticmethod
    async def _linger(reader: asyncio.StreamReader) -> None:
        """Discard what the peer still sends for a moment, so that closing does not reset
        the connection before it has read the refusal."""
        deadline, discarded = time.monotonic() + LINGER_SECONDS, 0
        try:
            while (left := deadline - time.monotonic()) > 0 and discarded < SMALL_BODY:
                data = await asyncio.wait_for(reader.read(65536), left)
                if not data:
                    return
                discarded += len(data)
        except (asyncio.TimeoutError, OSError):
            return

    async def _read_head(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        """The next request's line and headers: a quiet keep-alive connection is closed
        after IDLE_TIMEOUT, headers must be complete HEADER_TIMEOUT after they start."""
        deadline = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if deadline is None:
                    try:  # a quiet keep-alive connection is closed without further ado
                        data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                    except asyncio.TimeoutError:
                        return None
                else:
                    data = await asyncio.wait_for(reader.read(65536), max(deadline - time.monotonic(), 0.001))
                if deadline is None:
                    deadline = time.monotonic() + HEADER_TIMEOUT
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                return event
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")

    async def _read_body(self, conn: h11.Connection, reader: asyncio.StreamReader, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(reader.read(65536), BODY_READ_TIMEOUT))
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise _Answer(413, "request-body-too-large")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise OSError("connection closed mid-request")

    def _refuse_site(self, status: int, reason: str, call: str, peer: str, site: str | None = None,
                     node_id: int | None = None, key: str | None = None, close: bool = True) -> _Answer:
        if site is not None:
            self._audit("fleet-refused", (site, call, reason), site=site, node_id=node_id, call=call,
                        reason=reason, peer=peer)
        else:
            self._audit("site-refused", (peer, key, reason), peer=peer, key_sha256=key, reason=reason, call=call)
        return _Answer(status, reason, close)

    async def _respond(self, conn: h11.Connection, reader: asyncio.StreamReader, request: h11.Request,
                       peer: str):
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        call = path[len(FLEET_PREFIX):]
        if method != "POST" or not path.startswith(FLEET_PREFIX) or ".." in path or call not in REQUESTS:
            self._audit("control-refused", (peer, method, path), peer=peer, method=method, path=path)
            raise _Answer(403, "only the Fleet API is served on this port; the federation is "
                          "controlled from the coordinator's machine")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        # Who is asking, from the headers alone: nothing of an unauthenticated body is read.
        try:
            public_key = check_signature(headers)
        except Refused as refusal:
            raise self._refuse_site(401, refusal.reason, call, peer,
                                    key=_key_sha256(headers.get(PUBLIC_KEY_HEADER, "").encode())) from None
        key = key_sha256(public_key)
        enrolled = self.sites.lookup(key)
        if enrolled is None and call not in KEY_CALLS:
            raise self._refuse_site(403, "not-enrolled", call, peer, key=key)
        site, node_id = enrolled if enrolled is not None else (None, None)
        limit = self.max_body if call == "push-object" else SMALL_BODY
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._refuse_site(413, f"request-body-too-large:{declared}>{limit}", call, peer,
                                    site=site, node_id=node_id, key=key)
        async with self._in_flight:
            try:
                body = await self._read_body(conn, reader, limit)
            except _Answer as answer:
                raise self._refuse_site(answer.status, answer.detail, call, peer, site=site, node_id=node_id,
                                        key=key) from None
            try:
                parsed = parse(call, body)
                if node_id is not None:
                    self.guard.check(call, node_id, parsed)
            except Refused as refusal:
                raise self._refuse_site(403, refusal.reason, call, peer, site=site, node_id=node_id,
                                        key=key, close=False) from None
            forward = [(k, v) for k, v in request.headers if k.decode().lower() not in HOP_BY_HOP]
            try:
                upstream = await self.client.post(path, content=body, headers=forward)
            except httpx.HTTPError:
                return 502, [("content-length", "0")], b""
            del body
        if upstream.status_code in (401, 412):
            code = None
            try:
                code = upstream.json().get("code")
            except (ValueError, AttributeError):
                pass
            if upstream.status_code == 401:
                reason = "unauthenticated"
            elif site is not None and call == "activate-node":
                # An enrolled key the SuperLink will not activate: its node is still online,
                # the session of a crashed run of the site (or the same key used twice).
                reason = "node-still-online"
            else:
                reason = "not-enrolled"
            self._audit("site-refused", (peer, key, upstream.status_code), peer=peer, key_sha256=key,
                        reason=reason, http_status=upstream.status_code, flower_code=code, call=call,
                        **({"site": site} if site is not None else {}))
        content = upstream.content
        if upstream.status_code == 200 and node_id is not None:
            self._observe(call, node_id, content, parsed)
        out = [(k, v) for k, v in upstream.headers.raw if k.decode().lower() not in HOP_BY_HOP]
        out.append((b"content-length", str(len(content)).encode()))
        return upstream.status_code, out, content

    def _observe(self, call: str, node_id: int, content: bytes, request) -> None:
        if call == "confirm-message-received":
            self.guard.confirmed(node_id, request.message_object_id)
        try:
            self.guard.observe(call, node_id, content)
        except DecodeError:
            print(f"[fedmed proxy] could not read a {call} response for node {node_id}", file=sys.stderr,
                  flush=True)


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


async def serve(listen: str, upstream: str, certs: Path, run_dir: Path,
                ready: asyncio.Event | None = None, max_body: int = DEFAULT_MAX_BODY) -> None:
    host, port = split_address(listen, "--listen")
    split_address(upstream, "--upstream")
    proxy = FleetProxy(server_context(certs), upstream, server_material(certs).ca_cert,
                       AuditLog(run_dir), run_dir, max_body)
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
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="run folder: sites.json (enrolled keys and node IDs), audit.jsonl")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY,
                        help="largest push-object request body in bytes (others: 1 MiB)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.upstream, args.certs, args.run_dir, max_body=args.max_body))
    except (ValueError, OSError) as exc:
        print(f"[fedmed proxy] error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
