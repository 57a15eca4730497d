"""A broken (or malicious) site for the fault tests: a `fedmed client` started with this
folder on PYTHONPATH sends NaN in every weight it returns.

Python imports `sitecustomize` at start-up in every process of the site (the client,
its SuperNode and its executor inherit the environment); the shared hook in `site_hooks/` waits for
fedmed's ClientApp module to load and wraps the function that packs a train reply.
Nothing in fedmed itself knows about it: the coordinator sees what a real faulty site
would send.
"""

from __future__ import annotations

import math

from patch_on_import import patch_on_import

TARGET = "fedmed.client.app"


def _poison(module) -> None:
    pack = module._train_reply

    def nan_train_reply(site, status, reason, metrics, arrays=None):
        if arrays is not None:
            import torch
            from flwr.app import ArrayRecord

            state = arrays.to_torch_state_dict()
            arrays = ArrayRecord({k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                                  for k, v in state.items()})
        return pack(site, status, reason, metrics, arrays)

    module._train_reply = nan_train_reply


patch_on_import(TARGET, _poison)
