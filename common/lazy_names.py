"""A package's names loaded from their submodules on first use.

Some packages hold names whose submodules import heavy libraries: the site's image
pipeline (pydicom and its plugins), the coordinator's strategies (Flower's ServerApp). A
long-lived process that needs only the light names (a site's executor reading its image
cache, `fedmed server start` reading update limits) must be able to import them alone. A
package lists where each name lives and installs `lazy_names` as its module-level
`__getattr__` (PEP 562), which imports the submodule only when the name is first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, homes: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A `__getattr__` for `package` that imports `homes[name]` on first use and keeps the
    value in `namespace` (the package's globals), so later lookups skip it."""
    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        namespace[name] = value
        return value

    return __getattr__
