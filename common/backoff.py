"""How long to wait before asking again: short right after something happened, longer
the longer nothing does, never longer than a cap.

Both sides of a federation wait for the other in Flower's deployment by asking: the
coordinator asks its SuperLink for the sites' replies, a site asks the coordinator for
its next message. A fixed interval is either slow (Flower's 3 s) or, at a hundred sites,
a needless load (a few milliseconds). An answer usually follows soon after the last one
(the other sites of a round finish about together), so the wait starts at `floor` and
grows by `factor` after every empty answer up to `cap`; `reset` starts it over.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
