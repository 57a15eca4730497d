"""Can this site reach its coordinator and speak to it? One line per failed attempt, with the fix.

Flower's SuperNode retries a failed connection for ever and says only "Connection
attempt failed" (the reason is logged at debug level): a site started with `--insecure`
against a TLS coordinator retried silently and never exited. So `fedmed client` checks
the coordinator itself — before it starts the SuperNode, and again whenever the
SuperNode reports a failed attempt — and says what is wrong and what to do:

- transient (nothing listens there yet, no answer, the connection dropped): the site
  keeps trying — a site may well start before its coordinator, so it looks again after
  0.2 s at first, less often the longer it waits, with a line at most every 2 s;
- not transient (the coordinator speaks TLS and this site does not, or the other way
  round; its certificate is not the federation's; it refused this site's key): the site
  stops with a non-zero exit once the failure has lasted `give_up_after` seconds.

The check opens a TCP connection and, with TLS, completes a handshake against the
federation CA (`--certs DIR/ca.crt`) — the same check the SuperNode makes; with
`--insecure` it sends one plain HTTP request, which a TLS server cannot answer.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedmed.common.backoff import Backoff
from fedmed.common.processes import split_address

PROBE_TIMEOUT = 5.0
RETRY_FIRST, RETRY_MAX = 2.0, 30.0
# A coordinator that is not up yet (its port refuses connections) is looked for again
# soon: sites are often started with it, and it listens a few seconds later. The line
# saying so is repeated at most every RETRY_FIRST seconds.
QUICK_RETRY_S = 0.2
DEFAULT_GIVE_UP_AFTER = 10.0
# What the SuperNode prints for a failed attempt, and before the reason it gives up.
_ATTEMPT_FAILED = "Connection attempt failed"
_GAVE_UP = "Failed to initialize the connection to the SuperLink"


class JoinError(RuntimeError):
    """The site cannot join and retrying will not help; the message says what to fix."""


@dataclass(frozen=True)
class Probe:
    ok: bool
    transient: bool = True
    reason: str = ""


def probe(server: str, insecure: bool, ca_cert: Path | None, timeout: float = PROBE_TIMEOUT) -> Probe:
    """One attempt to reach the coordinator at `server` (HOST:PORT) as the SuperNode would."""
    host, port = split_address(server, "--server")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return Probe(False, True, f"nothing listens at {server} (connection refused): is `fedmed server "
                                  "start` running there, with this port in its --address?")
    except socket.gaierror as exc:
        return Probe(False, True, f"cannot resolve {host!r} ({exc.strerror}): check the host name in --server")
    except OSError as exc:
        return Probe(False, True, f"no connection to {server} ({exc.strerror or exc}): check the address, and "
                                  f"that this machine may reach port {port} there (firewall)")
    with sock:
        sock.settimeout(timeout)
        return _plain(sock, server, host) if insecure else _tls(sock, server, host, ca_cert)


def _plain(sock: socket.socket, server: str, host: str) -> Probe:
    try:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = sock.recv(5)
    except (TimeoutError, socket.timeout):
        return Probe(False, True, f"{server} accepted the connection but did not answer in time")
    except OSError as exc:
        answer = b"" if isinstance(exc, ConnectionResetError) else None
        if answer is None:
            return Probe(False, True, f"the connection to {server} failed ({exc})")
    if answer.startswith(b"HTTP/"):
        return Probe(True)
    return Probe(False, False, f"the coordinator at {server} uses TLS, and --insecure connects without it: "
                               "start this site with --certs DIR (the federation's ca.crt and this site's "
                               "key) instead of --insecure")


def _tls(sock: socket.socket, server: str, host: str, ca_cert: Path | None) -> Probe:
    context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    try:
        with context.wrap_socket(sock, server_hostname=host):
            return Probe(True)
    except ssl.SSLCertVerificationError as exc:
        return Probe(False, False, f"the coordinator's certificate is not trusted ({exc.verify_message}): "
                                   f"--certs must hold the federation's ca.crt from the coordinator's operator, "
                                   f"and --server must name the host its certificate was made for")
    except ssl.SSLError as exc:
        text = f"{exc.reason or ''} {exc}".upper()
        if any(s in text for s in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "PACKET_LENGTH", "UNKNOWN_PROTOCOL",
                                   "HTTP_REQUEST")):
            return Probe(False, False, f"the coordinator at {server} does not use TLS (started with "
                                       "--insecure?): ask its operator to start it with --certs")
        return Probe(False, True, f"the TLS handshake with {server} failed ({exc.reason or exc})")
    except (TimeoutError, socket.timeout):
        return Probe(False, True, f"{server} accepted the connection but did not complete a TLS handshake in time")
    except OSError as exc:
        return Probe(False, True, f"the connection to {server} dropped during the TLS handshake ({exc})")


class JoinCheck:
    """The coordinator's reachability for one site: checked before its SuperNode starts
    (`wait_until_reachable`), and again when the SuperNode reports a failed attempt
    (`on_supernode_line`, fed the SuperNode's output)."""

    def __init__(self, server: str, insecure: bool, ca_cert: Path | None, say: Callable[[str], None],
                 give_up_after: float = DEFAULT_GIVE_UP_AFTER) -> None:
        self.server, self.insecure, self.ca_cert = server, insecure, ca_cert
        self.say = say
        self.give_up_after = give_up_after
        self.failed: str | None = None  # set when a non-transient failure outlasted give_up_after
        self.refusal: str | None = None  # the coordinator's reason, when the SuperNode gave up
        self._failing_since: float | None = None
        self._checking = threading.Lock()
        self._next_is_refusal = False

    def attempt(self, quiet: bool = False) -> Probe:
        """Check once; say what failed (unless `quiet` and it is transient), and decide
        whether to give up."""
        result = probe(self.server, self.insecure, self.ca_cert)
        if result.ok:
            self._failing_since = None
            return result
        now = time.monotonic()
        if result.transient:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = now
        giving_up = not result.transient and now - self._failing_since >= self.give_up_after
        if giving_up:
            self.failed = result.reason
        if quiet and result.transient:
            return result
        self.say(f"cannot join: {result.reason}" + ("" if giving_up else "; retrying"))
        return result

    def wait_until_reachable(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Return once the coordinator answers as expected; `JoinError` when a failure
        that is not transient persists for `give_up_after` seconds."""
        wait, quick = RETRY_FIRST, Backoff(QUICK_RETRY_S, RETRY_MAX)
        said: dict[str, float] = {}  # a transient reason -> when it was last said
        while not stop():
            result = self.attempt(quiet=True)
            if result.ok:
                return
            if self.failed is not None:
                raise JoinError(self.failed)
            if result.transient:
                if time.monotonic() - said.get(result.reason, -1e9) >= RETRY_FIRST:
                    said[result.reason] = time.monotonic()
                    self.say(f"cannot join: {result.reason}; retrying")
                time.sleep(quick.next())
                continue
            time.sleep(min(wait, self.give_up_after))
            wait = min(wait * 2, RETRY_MAX)

    def on_supernode_line(self, line: str) -> None:
        if self._next_is_refusal:
            self._next_is_refusal = False
            self.refusal = line.strip()
        elif _GAVE_UP in line:
            self._next_is_refusal = True
        elif _ATTEMPT_FAILED in line and self._checking.acquire(blocking=False):
            # Off the output reader's thread: a probe can take seconds.
            threading.Thread(target=self._check_in_background, daemon=True).start()

    def _check_in_background(self) -> None:
        try:
            self.attempt()
        finally:
            self._checking.release()
