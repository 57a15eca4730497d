"""How long to wait before asking again: short right after something happened, longer
the longer nothing does, never longer than a cap.

Both sides of a federation wait for the other in Flower's deployment by asking: the
coordinator asks its SuperLink for the sites' replies, a site asks the coordinator for
its next message. A fixed interval is either slow (Flower's 3 s) or, at a hundred sites,
a needless load (a few milliseconds). An answer usually follows soon after the last one
(the other sites of a round finish about together), so the wait starts at `floor` and
grows by `factor` after every empty answer up to `cap`; `reset` starts it over.

A wait of a kind (a round's training phase, a site's wait for its next message) usually
lasts about as long as the ones before, so the first ask can hold off for most of it
(`first_wait`): the coordinator's SuperLink answers every ask in Python, on cores the
sites may train on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# Share of the shorter of the last two waits of a kind that the first ask holds off for:
# below 1, so an answer a little earlier than last time is not missed by much; a later
# one is asked for as before.
LEAD = 0.7


def first_wait(history: Sequence[float]) -> float | None:
    """How long the first ask should hold off, from the seconds the earlier waits of the
    same kind took: `LEAD` of the shorter of the last two; None (ask at once) before
    there are two (round 1's waits include the sites' image decoding)."""
    return LEAD * min(history[-2:]) if len(history) >= 2 else None


@dataclass
class Backoff:
    floor: float
    cap: float
    factor: float = 1.5
    _next: float = field(init=False, repr=False, default=0.0)

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.cap or self.factor < 1:
            raise ValueError(f"backoff: expected 0 < floor <= cap and factor >= 1, got {self}")
        self._next = self.floor

    def next(self) -> float:
        """The wait before the next ask; each call lengthens the one after."""
        wait = self._next
        self._next = min(self.cap, self._next * self.factor)
        return wait

    def reset(self) -> None:
        self._next = self.floor
