"""What the misbehaving sites of the attack and fault tests share: a hook that lets a
`sitecustomize` change a fedmed module right after it is loaded, in every process of a
site (the client, its SuperNode and its executor inherit PYTHONPATH), so that nothing in
fedmed knows about the misbehaviour and the coordinator sees what a real site would send.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Callable


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, target: str, patch: Callable) -> None:
        self.target, self.patch = target, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.target:
            return None
        # Find the real spec without finding ourselves again.
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            self.patch(module)

        spec.loader.exec_module = exec_module
        return spec


def patch_on_import(target: str, patch: Callable) -> None:
    """Call `patch(module)` once `target` (a dotted module name) has been executed."""
    sys.meta_path.insert(0, _PatchOnImport(target, patch))
