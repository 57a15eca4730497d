"""Section 2: what DP-SGD costs per training step, from `benchmarks.dp_cost`.

`dp_cost` times plain and DP steps of the same model on the same batches, interleaved,
in a fresh interpreter per configuration; its DP/plain *ratio* is the number to read (the
milliseconds depend on how busy the machine was). This module only runs it and keeps
its rows.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

from fedmed.client.privacy.dp_sgd import best_mode

from benchmarks import dp_cost


def run(smoke: bool) -> dict[str, Any]:
    """{"rows": dp_cost's rows, "fedmed_mode": {model: mode}, "args": [...]}"""
    # The smoke size measures the small CNN in the one mode fedmed trains it with; the
    # full size each model in the mode fedmed chose for it and in Opacus' default (hooks).
    # The sweep over every mode behind that choice is `python -m benchmarks.dp_cost`
    # (ResNet-18 at 64x64 in functorch mode alone takes most of an hour on 2 cores).
    args = (["--smoke", "--modes", best_mode("cnn")] if smoke else
            ["--models", "cnn:28", "cnn:64", "resnet18:28", "--modes", "ghost", "hooks",
             "--steps", "8", "--warmup", "2", "--threads", "1"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = dp_cost.main(args)
    print(printed.getvalue(), file=sys.stderr, end="")
    return {
        "rows": rows,
        "args": args,
        "fedmed_mode": {model: best_mode(model) for model in sorted({r["model"] for r in rows})},
        "source": "python -m benchmarks.dp_cost " + " ".join(args),
    }
