"""Processes that neither train nor aggregate do not import torch: `fedmed --help`, the
`fedmed client` and `fedmed server start` launchers, the SuperNode launcher. torch costs
seconds of start-up and hundreds of MB in every process that imports it."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
{body}
heavy = sorted(m for m in ("torch", "torchvision", "opacus", "matplotlib") if m in sys.modules)
print(",".join(heavy))
"""


def _heavy_modules(body: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(body=body)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def test_fedmed_help_imports_no_torch():
    body = ("from typer.testing import CliRunner\n"
            "from fedmed.cli.main import app\n"
            "for args in (['--help'], ['client', '--help'], ['server', 'start', '--help']):\n"
            "    result = CliRunner().invoke(app, args)\n"
            "    assert result.exit_code == 0, result.output\n")
    assert _heavy_modules(body) == ""


@pytest.mark.parametrize("module", ["fedmed.client.supernode", "fedmed.server.deployment",
                                    "fedmed.client.fleet_polling", "fedmed.client.task_signal"])
def test_launchers_import_no_torch(module):
    assert _heavy_modules(f"import {module}") == ""


def test_server_app_imports_no_torch():
    """The coordinator's ServerApp aggregates numpy arrays and writes checkpoints without
    torch (`fedmed.common.torch_file`); round 1's model is built in a short-lived child
    (`fedmed.server.starting_point`). Every strategy it can build is imported here."""
    body = ("import fedmed.server.app, fedmed.server.outputs, fedmed.server.starting_point\n"
            "import fedmed.server.strategy.registry, fedmed.server.strategy.fedavgm, "
            "fedmed.server.strategy.fedadam\n")
    assert _heavy_modules(body) == ""
