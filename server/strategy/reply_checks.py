"""Checks on what a reply says about itself: the example count FedAvg weights it by.

FedAvg averages updates weighted by the `num-examples` each site reports, and nothing
in Flower checks that number. A site that claims 10^9 examples takes the global model
over with a perfectly ordinary update; a NaN poisons every weight and crashes whatever
turns the count into an integer. A reply whose count fails these checks is treated
like a bad update: left out of the round, its site named in the coordinator's output
and in the audit log.

A count must be:

1. a number, finite, a whole number and at least 1 (`count_problem`);
2. for training replies, no larger than the count the site *declared* this run: the
   first count the coordinator accepted from it. A site's training split is fixed by its
   data and seed, so an honest count never grows within a run; the declarations are part
   of the strategy's state and survive `--resume`. Evaluation replies are not held to a
   declaration: with DP on, a site's evaluation count is read off its noised score
   histograms and moves from round to round by design (`client/privacy/disclosure.py`);
   it weighs only the reported means, never the model;
3. no larger than `max_example_ratio` (default 100, `--max-example-ratio`) times the
   median count of the *other* sites answering the same round. This is what stops a
   site that lies from its very first reply. The default leaves room for real
   differences in size between hospitals (a regional centre and a small clinic); it
   bounds a liar's weight, it does not remove it: with equal honest sites, one site
   can still claim up to 100 times their size. Lower it where the sites' sizes are
   known to be similar. An evaluation count is measured against the other sites'
   declared *training* counts (when they have declared): their noised evaluation counts
   can come out near 0 at small DP sites, and a median of 2.5 once turned a large honest
   site's 515 into a refusal.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_EXAMPLE_RATIO = 100.0


def count_problem(value: Any) -> str | None:
    """None for a usable example count, else a short reason code."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "num-examples-not-a-number"
    if not math.isfinite(value):
        return "num-examples-not-finite"
    if value != int(value):
        return "num-examples-not-an-integer"
    if value < 1:
        return "num-examples-not-positive"
    return None


@dataclass
class DeclaredCounts:
    """Each site's declared example count for one kind of reply, and the checks against
    it and against the other sites of the same round."""

    max_example_ratio: float = DEFAULT_MAX_EXAMPLE_RATIO
    declared: dict[str, int] = field(default_factory=dict)
    # False for evaluation replies, whose honest counts are noised (see rule 2).
    holds_to_declaration: bool = True
    # Evaluation replies: the training declarations that set the scale of rule 3.
    scale: "DeclaredCounts | None" = None

    def screen(self, counts: dict[str, Any]) -> dict[str, str]:
        """{site: reason} for the counts refused among one round's {site: count}; the
        accepted ones become declarations where the site had none yet."""
        refused = {site: problem for site, value in counts.items() if (problem := count_problem(value))}
        valid = {site: int(value) for site, value in counts.items() if site not in refused}
        for site, n in valid.items():
            limit = self.declared.get(site) if self.holds_to_declaration else None
            if limit is not None and n > limit:
                refused[site] = f"num-examples-above-declared:{n}>{limit}"
                continue
            others = self._others(site, valid)
            if others and n > self.max_example_ratio * statistics.median(others):
                refused[site] = (f"num-examples-out-of-proportion:{n}>{self.max_example_ratio:g}"
                                 f"x{statistics.median(others):g}")
        for site, n in valid.items():
            if site not in refused and self.holds_to_declaration:
                self.declared.setdefault(site, n)
        return refused

    def _others(self, site: str, valid: dict[str, int]) -> list[int]:
        """The counts rule 3 compares `site`'s with: the other sites' declared training
        counts for an evaluation reply when there are any, else the round's other counts."""
        declared = [m for other, m in (self.scale.declared if self.scale else {}).items() if other != site]
        return declared or [m for other, m in valid.items() if other != site]

    def to_dict(self) -> dict[str, int]:
        return dict(self.declared)

    def load(self, declared: dict[str, Any] | None) -> None:
        for site, n in (declared or {}).items():
            if count_problem(n) is None:
                self.declared.setdefault(str(site), int(n))
