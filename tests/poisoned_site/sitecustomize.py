"""A broken (or malicious) site for the fault tests: a `fedmed client` started with this
folder on PYTHONPATH sends NaN in every weight it returns.

Python imports `sitecustomize` at start-up in every process of the site (the client,
its SuperNode and its executor inherit the environment); the hook below waits for
fedmed's ClientApp module to load and wraps the function that packs a train reply.
Nothing in fedmed itself knows about it: the coordinator sees what a real faulty site
would send.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import math
import sys

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


class _PoisonOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _poison(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PoisonOnImport())
