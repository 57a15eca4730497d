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
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from fedmed.common.backoff import Backoff

FLOOR_S = 0.02
CAP_S = 0.25
QUICK_WINDOW_S = 5.0

T = TypeVar("T")


def quick_retry(pull: Callable[..., T], clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> Callable[..., T]:
    """`pull`, asking again at a short, growing interval while it raises
    `ObjectUnavailableError`, for up to QUICK_WINDOW_S; then the error is raised."""

    def pull_soon(*args, **kwargs) -> T:
        pace, deadline = Backoff(FLOOR_S, CAP_S), clock() + QUICK_WINDOW_S
        while True:
            try:
                return pull(*args, **kwargs)
            except ObjectUnavailableError:
                wait = pace.next()
                if clock() + wait > deadline:
                    raise
                sleep(wait)

    return pull_soon
