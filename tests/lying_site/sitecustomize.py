"""A malicious site for the attack tests: a `fedmed client` started with this folder on
PYTHONPATH lies about how many examples each reply stands for.

The counts it claims come from FEDMED_TEST_LIES (comma-separated, e.g. "1e9,nan,0"),
one per reply in the order the site sends them (its executor runs one task at a
time); the last is repeated. The update itself is honest training. As for
`poisoned_site/`, the shared hook in `site_hooks/` waits for fedmed's ClientApp module to load and wraps what
builds a reply's MetricRecord, so nothing in fedmed knows about it.
"""

from __future__ import annotations

import os

from patch_on_import import patch_on_import

TARGET = "fedmed.client.app"


def _lie(module) -> None:
    lies = [float(v) for v in os.environ.get("FEDMED_TEST_LIES", "1e9").split(",")]
    real = module.MetricRecord

    def lying_record(values=None, *args, **kwargs):
        values = dict(values or {})
        if "num-examples" in values:
            value = lies.pop(0) if len(lies) > 1 else lies[0]
            values["num-examples"] = int(value) if value.is_integer() and abs(value) < 2 ** 62 else value
        return real(values, *args, **kwargs)

    module.MetricRecord = lying_record


patch_on_import(TARGET, _lie)
