"""A Grid that collects the sites' replies as soon as they land.

Flower 1.42's deployment grid (`flwr/superlink/grid/http_grid.py`) pushes a phase's
messages and then asks the SuperLink for replies every 3 s, so every training and
evaluation phase ends up to 3 s after its last site answered. `FastGrid` wraps whatever
grid the ServerApp is handed and keeps everything of it (run, nodes, message IDs,
pushing, pulling) except the waiting: `send_and_receive` pushes through the wrapped grid
and then pulls with `Grid.pull_messages`, Flower's public way to collect replies, at a
short interval that starts at 20 ms, grows while nothing arrives (up to 0.1 s) and starts
over whenever a reply comes in. The pulls go to the coordinator's own SuperLink on
loopback, never over the network to a site. A phase of a kind (training, evaluation)
usually takes about as long as the ones before (round 1, whose sites decode their images,
aside): from the third phase of a kind on, the first pull waits `LEAD` of the shorter of
the last two phases of that kind (push to last reply), so that the SuperLink, which handles
every pull in Python on cores the sites train on, is not asked a dozen times while the
sites are still training.

A reply is visible before its site has finished uploading its objects, so a quick pull
often finds some not there yet, and Flower's grid then waits 1 s before asking again
(2 s, 4 s ...). `quicken_object_pulls` makes the grid ask again after 20 ms instead
(`fedmed.common.object_pulls`). The grid builds its object-pulling function inside
`pull_messages` through the module-level name `make_pull_object_fn_protobuf`
(`flwr/superlink/grid/http_grid.py`); that name is wrapped. It is a Flower internal:
`check_flower_internals` states what is relied on, and tests/test_fleet_polling.py fails
when a Flower upgrade changes it (the grid then keeps Flower's waits).

A phase's replies are pulled together, and a reply whose site died while uploading it
would hold the pull (Flower retries its objects for up to two hours): past the phase's
timeout, plus `GRACE_S` for an upload that is nearly done, that reply's pull fails and
becomes an error reply for that site alone. When the timeout comes, one last pull
collects the replies that have landed since the previous one.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedmed.common.backoff import LEAD, Backoff, first_wait  # noqa: F401 — LEAD: named in the docstring above
from fedmed.common.object_pulls import quick_retry

FLOOR_S = 0.02
CAP_S = 0.1
GRACE_S = 5.0
# When the object pulls of the grid's current `pull_messages` call give up (monotonic
# seconds; None: never). Read when Flower builds the call's pull function, in the
# calling thread; the pulls themselves run in Flower's worker threads.
_GIVE_UP_AT: contextvars.ContextVar[float | None] = contextvars.ContextVar("give_up_at", default=None)


@contextmanager
def _object_pulls_until(when: float | None) -> Iterator[None]:
    token = _GIVE_UP_AT.set(when)
    try:
        yield
    finally:
        _GIVE_UP_AT.reset(token)


class FastGrid(Grid):
    """`grid` with a `send_and_receive` that pulls replies at an adaptive interval."""

    def __init__(self, grid: Grid, floor: float = FLOOR_S, cap: float = CAP_S) -> None:
        self.inner = grid
        self.floor, self.cap = floor, cap
        self.pulls = 0  # requests made while waiting, for the benchmarks
        self.took: dict[str, list[float]] = {}  # message type -> seconds its phases took

    # Everything but the waiting is the wrapped grid's.
    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        """Push `messages`; return the replies that arrived before `timeout` seconds
        (all of them when `timeout` is None), as Flower's grids do."""
        messages = list(messages)
        kind = str(getattr(getattr(messages[0], "metadata", None), "message_type", "")) if messages else ""
        started = time.monotonic()
        waiting = {i for i in self.push_messages(messages) if i}
        deadline = None if timeout is None else started + timeout
        pace = Backoff(self.floor, self.cap)
        replies: list[Message] = []
        first = first_wait(self.took.get(kind, []))
        give_up_at = None if deadline is None else deadline + GRACE_S
        while waiting:
            wait = pace.next() if first is None else max(self.floor, first - (time.monotonic() - started))
            first = None
            last = False
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                last = wait <= 0
            time.sleep(max(wait, 0.0))
            self.pulls += 1
            with _object_pulls_until(give_up_at):
                arrived = list(self.pull_messages(sorted(waiting)))
            if arrived:
                replies += arrived
                waiting -= {m.metadata.reply_to_message_id for m in arrived}
                pace.reset()
            if last or (deadline is not None and time.monotonic() > give_up_at):
                break
        if not waiting:
            self.took.setdefault(kind, []).append(time.monotonic() - started)
        return replies

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class FlowerInternalsChanged(RuntimeError):
    """The installed Flower's grid no longer matches what `quicken_object_pulls` wraps."""


def check_flower_internals() -> None:
    """Raise FlowerInternalsChanged unless flwr's HttpGrid still builds its object
    pulls in `pull_messages` by calling the module-level `make_pull_object_fn_protobuf`."""
    import inspect

    from flwr.superlink.grid import http_grid
    from flwr.supercore.inflatable import inflatable_protobuf_utils

    problems = []
    if getattr(http_grid, "make_pull_object_fn_protobuf", None) not in (
            inflatable_protobuf_utils.make_pull_object_fn_protobuf, _quick_pull_fn):
        problems.append("http_grid no longer imports make_pull_object_fn_protobuf")
    if "pull_object_fn=make_pull_object_fn_protobuf(" not in inspect.getsource(http_grid.HttpGrid.pull_messages):
        problems.append("HttpGrid.pull_messages no longer builds its pulls with make_pull_object_fn_protobuf")
    if problems:
        raise FlowerInternalsChanged("; ".join(problems))


def _quick_pull_fn(*args, **kwargs):
    from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf

    return quick_retry(make_pull_object_fn_protobuf(*args, **kwargs), give_up_at=_GIVE_UP_AT.get())


def quicken_object_pulls() -> bool:
    """Make this process's Flower deployment grid ask again for a reply's objects 20 ms
    after finding one not uploaded yet; False (Flower's waits kept) when the installed
    Flower differs from the one checked."""
    from flwr.superlink.grid import http_grid

    try:
        check_flower_internals()
    except FlowerInternalsChanged as exc:
        print(f"[fedmed coordinator] Flower's grid differs from the one fedmed checked ({exc}); "
              "reply objects are pulled with Flower's own waits", flush=True)
        return False
    http_grid.make_pull_object_fn_protobuf = _quick_pull_fn
    return True
