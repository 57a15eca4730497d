"""The site's SuperNode, with fedmed's pacing of its Fleet API requests.

`fedmed client` starts Flower's own SuperNode — its command-line entry point, flags,
protocol, TLS and node authentication unchanged — through this module
(`python -m fedmed.client.fleet_polling --wake PIPE -- <flower-supernode flags>`),
which changes only how long it waits:

- Flower 1.42's main loop (`flwr/supernode/start_client_internal.py`) asks the
  coordinator for a message and sleeps a fixed 3 s whenever there is none. Here the
  connection's `receive` (the Fleet connection API: `http_request_response` in
  `flwr/supernode/fleet_http_connection.py` yields node ID, receive, send, ...) keeps
  asking at `FleetPacing`'s interval until a message comes, so the 3 s sleep is never
  reached: while a run is active (a message or reply within `ACTIVE_WINDOW_S`, or just
  connected) every 50 ms at first, growing to 0.25 s; otherwise every `IDLE_S`.
  With the SuperNode's heartbeat (about one per 20 s) an idle site makes under one
  request per 2 s; a busy one at most 4 per second while it waits for the others.
  In a run the wait for the next message is much like the ones before (the other sites
  training, the coordinator aggregating): from its third message on, an active site
  first waits `LEAD` of the shorter of its last two waits before asking, so that the
  coordinator, whose SuperLink handles every request in Python, is not asked several
  times for a message that cannot be there yet.
  While the ClientApp trains the SuperNode asks nothing: it waits for the reply.
- before the SuperNode connects, the launcher waits until the coordinator's port
  accepts a TCP connection (looking every 0.1 s, growing to 1 s). A SuperNode started
  before its coordinator otherwise retries with Flower's exponential back-off and joins
  up to tens of seconds after the coordinator is up.
- a message's objects are pulled as soon as the message is seen, often while the
  coordinator is still uploading them; an object not there yet is asked for again after
  20 ms rather than after Flower's 1 s (`fedmed.common.object_pulls`, wrapping the
  connection's `pull_object`).
- after the SuperNode has stored a message and created its task it confirms the message
  to the coordinator (`confirm_message_received`, the connection's last function); the
  wrapper then marks the message confirmed (`confirmed_messages`: the executor runs only
  those) and wakes the site's executor through `task_signal`, so the task starts now
  instead of at the executor's next poll.
- the loop waits for the ClientApp's reply by checking its in-memory state every 0.5 s
  (`time.sleep(0.5)` in `_push_messages`). That wait never leaves the machine; it is
  shortened to `REPLY_CHECK_S` by giving the module a `time` whose `sleep` caps 0.5 s
  waits. This is the one place fedmed depends on a Flower internal rather than an
  interface: `check_flower_internals` states what it relies on, the launcher falls back
  to Flower's plain SuperNode (and says so) when it no longer holds, and
  tests/test_fleet_polling.py fails when a Flower upgrade changes it.
- the loop pushes, after each message it takes, the replies its state holds at that
  moment. When the coordinator is restarted while a site holds a message of the old run,
  the loop ignores that message (its run is no longer running) but leaves it in its state,
  the site's executor still answers it, and that stale reply is what the next push sends
  (and the coordinator drops): the reply to the new run's message then waits for the
  run's next message, after the round has timed out the site. `ReplyTracker` notes the
  message the loop took last; when a push ends without having sent its reply, the push
  is made again, which waits for that reply as the loop always does. The same
  Flower-internals check covers the loop's push call.
"""

from __future__ import annotations

import argparse
import inspect
import re
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from fedmed.common.backoff import LEAD, Backoff, first_wait  # noqa: F401 — LEAD: named in the docstring above

BUSY_FLOOR_S = 0.05
BUSY_CAP_S = 0.25
IDLE_S = 3.0
ACTIVE_WINDOW_S = 15.0
# A run whose sites are slow leaves long gaps between messages; a site stays "active" for
# this many times the longest gap it has seen (up to MAX_WINDOW_S) so it does not drop
# to the idle pace in the middle of a run.
GAP_FACTOR = 1.5
MAX_WINDOW_S = 300.0
REPLY_CHECK_S = 0.02
CONNECT_FLOOR_S = 0.1
CONNECT_CAP_S = 1.0
FLOWER_REPLY_WAIT_S = 0.5


class FleetPacing:
    """When to ask the coordinator again for this site's next message."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.clock, self.sleep = clock, sleep
        self.last_activity = clock()  # connecting counts: a run may be waiting for this site
        self.window = ACTIVE_WINDOW_S
        self.requests = 0
        self.waits: list[float] = []  # seconds each receive waited for its message

    def active(self) -> bool:
        return self.clock() - self.last_activity <= self.window

    def mark_activity(self) -> None:
        self.last_activity = self.clock()

    def receive(self, pull: Callable[[], object | None]):
        """Call `pull` until it returns a message; return it."""
        started = self.clock()
        busy = Backoff(BUSY_FLOOR_S, BUSY_CAP_S)
        if (lead := first_wait(self.waits)) is not None and self.active():
            self.sleep(lead)
        while True:
            self.requests += 1
            got = pull()
            if got is not None:
                gap = self.clock() - started
                self.waits = [*self.waits[-1:], gap]
                self.window = min(MAX_WINDOW_S, max(self.window, GAP_FACTOR * gap))
                self.mark_activity()
                return got
            self.sleep(busy.next() if self.active() else IDLE_S)


class _ReplyWaitClock:
    """What `start_client_internal` sees as its `time` module: Flower's own, except that
    its 0.5 s waits for the local ClientApp's reply check every `REPLY_CHECK_S`."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(REPLY_CHECK_S if seconds == FLOWER_REPLY_WAIT_S else seconds)


class ReplyTracker:
    """Which message the SuperNode's loop took last; its push is made again until that
    message's reply has been handed to `send`."""

    def __init__(self) -> None:
        self.awaiting: str | None = None

    def took(self, message_id: str) -> None:
        self.awaiting = message_id

    def push_until_answered(self, push: Callable[..., None]) -> Callable[..., None]:
        """`push` (the loop's `_push_messages`, which blocks until a reply is there and
        then sends the replies there are), made again while every reply it sent answered
        another message than the one the loop took last (a stale reply of a stopped run)."""

        def push_answered(state, object_store, send, push_object) -> None:
            handed: list[str] = []

            def send_noting(message, *args, **kwargs):
                handed.append(message.metadata.reply_to_message_id)
                return send(message, *args, **kwargs)

            while True:
                handed.clear()
                push(state=state, object_store=object_store, send=send_noting, push_object=push_object)
                if self.awaiting is None or self.awaiting in handed or not handed:
                    return

        push_answered.__wrapped__ = push  # type: ignore[attr-defined]
        return push_answered


class FlowerInternalsChanged(RuntimeError):
    """The installed Flower no longer matches what this module relies on."""


def check_flower_internals() -> None:
    """Raise FlowerInternalsChanged unless flwr's SuperNode loop still looks as read for
    flwr 1.42: it builds its connection by calling the module-level name
    `http_request_response` (an 8-tuple ending with confirm_message_received), sleeps 3 s
    only after an empty pull, waits for replies with `time.sleep(0.5)`, and pushes them by
    calling the module-level `_push_messages` with keyword arguments, dropping a reply
    whose run has stopped."""
    from flwr.supernode import fleet_http_connection
    from flwr.supernode import start_client_internal as loop

    problems = []
    if getattr(loop, "http_request_response", None) is not fleet_http_connection.http_request_response:
        problems.append("start_client_internal no longer imports http_request_response")
    connect = inspect.getsource(loop._init_connection)
    if "http_request_response(" not in connect:
        problems.append("_init_connection no longer calls http_request_response")
    main_loop = inspect.getsource(loop.start_client_internal)
    if "receive,\n            send,\n            get_run,\n            get_fab,\n            pull_object,\n" \
       "            push_object,\n            confirm_message_received,\n        ) = conn" not in main_loop:
        problems.append("the connection tuple's order changed")
    if "time.sleep(3)" not in main_loop:
        problems.append("the main loop no longer sleeps 3 s after an empty pull")
    if "_push_messages(\n                state=state,\n                object_store=store,\n" \
       "                send=send,\n                push_object=push_object,\n            )" not in main_loop:
        problems.append("the main loop no longer calls _push_messages(state=, object_store=, send=, push_object=)")
    pushing = inspect.getsource(getattr(loop._push_messages, "__wrapped__", loop._push_messages))
    if "except RunNotRunningException:" not in pushing or "reply_to_message_id" not in pushing:
        problems.append("_push_messages no longer drops a reply whose run has stopped")
    if pushing.count(f"time.sleep({FLOWER_REPLY_WAIT_S})") != 2:
        problems.append("_push_messages no longer waits for replies with time.sleep(0.5)")
    if set(re.findall(r"\btime\.(\w+)\(", inspect.getsource(loop))) != {"sleep"}:
        problems.append("start_client_internal uses more of `time` than sleep")
    if problems:
        raise FlowerInternalsChanged("; ".join(problems))


def install(wake: Path | None, pacing: FleetPacing | None = None) -> FleetPacing:
    """Pace the SuperNode of this process (see the module docstring)."""
    from flwr.supernode import start_client_internal as loop

    from fedmed.client.confirmed_messages import mark
    from fedmed.client.task_signal import notify, state_dir_of
    from fedmed.common.object_pulls import quick_retry

    check_flower_internals()
    pacing = pacing or FleetPacing()
    connect = loop.http_request_response
    replies = ReplyTracker()

    @contextmanager
    def paced_connection(*args, **kwargs):
        with connect(*args, **kwargs) as conn:
            node_id, receive, send, get_run, get_fab, pull_object, push_object, confirm = conn

            def paced_receive():
                got = pacing.receive(receive)
                if got is not None:
                    replies.took(got[0].metadata.message_id)
                return got

            def send_reply(*a, **kw):
                try:
                    return send(*a, **kw)
                finally:
                    pacing.mark_activity()

            def confirm_and_wake(run_id, message_id, *a, **kw):
                confirm(run_id, message_id, *a, **kw)
                if wake is not None:
                    mark(state_dir_of(wake), message_id)  # the executor runs only confirmed messages
                    notify(wake)

            yield (node_id, paced_receive, send_reply, get_run, get_fab, quick_retry(pull_object),
                   push_object, confirm_and_wake)

    loop.http_request_response = paced_connection
    loop._push_messages = replies.push_until_answered(loop._push_messages)
    loop.time = _ReplyWaitClock()
    return pacing


def wait_for_coordinator(address: str, timeout: float | None = None) -> bool:
    """Block until `address` (HOST:PORT) accepts a TCP connection; False on timeout."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    pace = Backoff(CONNECT_FLOOR_S, CONNECT_CAP_S)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                return True
        except OSError:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(pace.next())


def command(wake: Path) -> list[str]:
    """The command that starts the SuperNode through this module; Flower's
    `flower-supernode` flags follow it."""
    return [sys.executable, "-m", "fedmed.client.fleet_polling", "--wake", str(wake), "--"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="fedmed.client.fleet_polling",
                                     description="Flower's SuperNode with fedmed's request pacing")
    parser.add_argument("--wake", type=Path, default=None, help="the executor's wake-up pipe")
    args = parser.parse_args(argv[:split])
    try:
        install(args.wake)
    except FlowerInternalsChanged as exc:
        print(f"[fedmed site] this Flower's SuperNode differs from the one fedmed paces ({exc}); "
              "running it unpaced (3 s polls)", file=sys.stderr, flush=True)
    from flwr.supernode.cli import flower_supernode

    flower_args = argv[split + 1:]
    if "--superlink" in flower_args[:-1]:
        wait_for_coordinator(flower_args[flower_args.index("--superlink") + 1])
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
