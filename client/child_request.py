"""One request to a short-lived child process of the site, and its answer.

The site keeps heavy libraries (pydicom, for a folder's scan and decode) out of its
long-lived processes by running that work in a child: `python -m MODULE` reads one JSON
request on stdin and prints its JSON answer as its last line of output; whatever else it
prints (progress, warnings) goes to the site's console as usual.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def ask_child(module: str, request: dict[str, Any]) -> tuple[dict[str, Any] | None, int]:
    """Run `python -m module` with `request`; its answer (None when its last line is not
    JSON, e.g. it crashed) and its exit code."""
    done = subprocess.run([sys.executable, "-m", module], input=json.dumps(request), stdout=subprocess.PIPE,
                          text=True)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = None
    return (answer if isinstance(answer, dict) else None), done.returncode
