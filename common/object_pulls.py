"""Asking again soon for a message's object that is still being uploaded.

A Flower message travels as a tree of objects (the message, its records, each array and
each array's chunks), and the receiver pulls them one by one
(`flwr/supercore/inflatable/inflatable_utils.py: pull_objects`). The message itself
becomes visible before its sender has finished uploading the objects, so a receiver that
looks for messages often — fedmed's sites and coordinator do — usually asks for the
first objects while they are still on their way. Flower answers "not available yet"
(`ObjectUnavailableError`) and its pull waits 1 s before asking again, then 2 s, 4 s ...
Measured on loopback, that 1 s wait was part of every message of every round, at the
sites and at the coordinator.

`quick_retry` wraps the function that pulls one object: an object not available yet is
asked for again after 20 ms, growing to 0.25 s, for up to `QUICK_WINDOW_S`; only after
that does the "not available" reach Flower's pull, which then backs off as it always
does (an uploader that stalled is not hammered). A few more requests per message, each
of them a few hundred bytes on the coordinator's own loopback or the site's
connection, against a second of every round.

`give_up_at` bounds the wait for a message whose sender stopped uploading (a site killed
mid-reply): Flower's pull keeps asking for up to two hours
(`flwr/supercore/constant.py: PULL_MAX_TIME`), and the coordinator's grid pulls a phase's
replies together, so one such message held back every other site's reply of the phase
until the round timed out and lost them. Past `give_up_at` the object's pull fails
(`ObjectPullError`), which Flower's grid turns into an error reply for that message
alone.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

from fedmed.common.backoff import Backoff

FLOOR_S = 0.02
CAP_S = 0.25
QUICK_WINDOW_S = 5.0

T = TypeVar("T")


def quick_retry(pull: Callable[..., T], clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep, give_up_at: float | None = None) -> Callable[..., T]:
    """`pull`, asking again at a short, growing interval while it raises
    `ObjectUnavailableError`, for up to QUICK_WINDOW_S; then the error is raised. An
    object still unavailable at `give_up_at` (a `clock` time) raises `ObjectPullError`."""

    def pull_soon(*args, **kwargs) -> T:
        pace, deadline = Backoff(FLOOR_S, CAP_S), clock() + QUICK_WINDOW_S
        while True:
            try:
                return pull(*args, **kwargs)
            except ObjectUnavailableError:
                wait = pace.next()
                if give_up_at is not None and clock() + wait > give_up_at:
                    # Flower's pulls name the object last: (object_id) or (run_id, object_id).
                    raise ObjectPullError(str(args[-1]) if args else "?",
                                          "its sender did not finish uploading it in time") from None
                if clock() + wait > deadline:
                    raise
                sleep(wait)

    return pull_soon
