"""What a site's load left out, and why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SkipReport:
    """Files (and labels.csv rows) a site's load left out.

    counts: reason -> number of files. Reasons are fixed phrases free of header values
        and paths, so these counts may be summarised beyond the site.
    files: (relative path, reason) per skipped file, or ("labels.csv row N", reason) for
        a row of labels.csv. For the site admin's local report only: paths may name
        patients, so this list is never logged or sent.
    """

    counts: dict[str, int] = field(default_factory=dict)
    files: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.files.append((where, reason))

    def extend(self, other: "SkipReport") -> None:
        for where, reason in other.files:
            self.add(where, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
