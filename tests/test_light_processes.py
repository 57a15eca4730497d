"""Processes that neither train nor aggregate do not import torch: `fedmed --help`, the
`fedmed client` and `fedmed server start` launchers, the SuperNode launcher. torch costs
seconds of start-up and hundreds of MB in every process that imports it. The launchers,
which supervise a site or the coordinator for the whole run, hold neither Flower nor
pydicom: their checks run in short-lived children. A site's executor,
which trains, does so without torch's compiler (`torch._dynamo`, about 100 MB: what
`torch.optim` and torchvision load), with DP off without Opacus, and without pydicom:
a short-lived child reads the site's DICOM files into its image cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
{body}
heavy = sorted(m for m in {names} if m in sys.modules)
print(",".join(heavy))
"""
HEAVY = ("torch", "torchvision", "opacus", "matplotlib", "torch._dynamo")


def _heavy_modules(body: str, names: tuple[str, ...] = HEAVY) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(body=body, names=names)], capture_output=True,
                          text=True, timeout=120)
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
                                    "fedmed.client.fleet_polling", "fedmed.client.task_signal",
                                    "fedmed.server.app_executor"])
def test_launchers_import_no_torch(module):
    assert _heavy_modules(f"import {module}") == ""


def test_launchers_leave_flower_and_pydicom_to_their_children(synthetic_sites):
    """`fedmed client` runs its data check in a child (`preflight_in_child`), `fedmed server
    start` hashes the app bundle in one (`fedmed.common.app_bundle`) and reads the run
    folder without Flower's modules."""
    body = ("from pathlib import Path\n"
            "import fedmed.cli.main, fedmed.server.deployment, fedmed.server.strategy.update_checks\n"
            "from fedmed.client.supernode import ClientOptions, preflight_in_child\n"
            f"options = ClientOptions(site='A', data_dir=Path({str(synthetic_sites / 'A')!r}), server='')\n"
            "line = preflight_in_child(options, ('normal', 'abnormal'))\n"
            "assert 'labelled image(s) ready' in line, line\n")
    assert _heavy_modules(body, HEAVY + ("flwr", "pydicom")) == ""


def test_server_app_imports_no_torch():
    """The coordinator's ServerApp aggregates numpy arrays and writes checkpoints without
    torch (`fedmed.common.torch_file`); round 1's model is built in a short-lived child
    (`fedmed.server.starting_point`). Every strategy it can build is imported here."""
    body = ("import fedmed.server.app, fedmed.server.outputs, fedmed.server.starting_point\n"
            "import fedmed.server.strategy.registry, fedmed.server.strategy.fedavgm, "
            "fedmed.server.strategy.fedadam\n")
    assert _heavy_modules(body) == ""


# A site's training and evaluation rounds through fedmed's ClientApp, as its executor runs
# them: without DP (SGD with momentum, then Adam), then with DP-SGD in the mode fedmed
# picks for the `cnn` on the CPU (ghost clipping) and in hooks mode.
ROUNDS = """
import tempfile
from pathlib import Path
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedmed.client.app import make_client_app
from fedmed.client.privacy.policy import PrivacyPolicy
from fedmed.client.site import Site
from fedmed.client.sitedata import SiteData
from fedmed.client.sitedata.report import SkipReport
from fedmed.common.federation import FederationConfig
from fedmed.common.models import build_model
from fedmed.common.protocol import ARRAYS_KEY, FEDERATION_KEY, SITE_KEY
from fedmed.common.settings import ImageSettings

rng = np.random.default_rng(0)
data = SiteData(classes=("normal", "abnormal"),
                train_x=rng.normal(size=(48, 1, 16, 16)).astype(np.float32), train_y=np.arange(48) % 2,
                val_x=rng.normal(size=(16, 1, 16, 16)).astype(np.float32), val_y=np.arange(16) % 2,
                num_patients={{"train": 48, "val": 16}}, skipped=SkipReport(), fingerprint="probe")

def round_trip(site, config, run_id):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
    for kind in ("train", "evaluate"):
        model = build_model(config.model, len(config.classes), config.image.size)
        content = RecordDict({{ARRAYS_KEY: ArrayRecord(model.state_dict()),
                              "config": ConfigRecord({{FEDERATION_KEY: config.to_json(), "server-round": 1}})}})
        reply = make_client_app(lambda context: site)(Message(content=content, dst_node_id=1, message_type=kind),
                                                      Context(run_id, 1, {{}}, RecordDict(), {{}}))
        status = reply.content[SITE_KEY]["status"]
        assert status == "ok", (kind, dict(reply.content[SITE_KEY]))

state = Path(tempfile.mkdtemp())
for run_id, (optimizer, dp, mode) in enumerate({cases}, start=1):
    config = FederationConfig(rounds=1, epochs=1, batch_size=16, dp_batch_size=16, image=ImageSettings(size=16),
                              optimizer=optimizer, seed=1, lr=1e-3)
    if mode:
        import fedmed.client.privacy.dp_sgd as dp_sgd
        dp_sgd.MEASURED_BEST_MODE[("cnn", "cpu")] = mode
    policy = PrivacyPolicy(enabled=dp, epsilon=8.0)
    round_trip(Site(name="A", state_dir=state / str(run_id), load_data=lambda config: data, privacy=policy),
                config, run_id)
"""


@pytest.mark.parametrize("cases,expected", [
    ([("sgd", False, None), ("adam", False, None)], "torch"),
    ([("sgd", True, "ghost"), ("sgd", True, "hooks")], "opacus,torch"),
], ids=["no-dp", "dp-sgd"])
def test_training_round_leaves_out_the_compiler(cases, expected):
    """torch's own optimisers would import `torch._dynamo` on first use (see
    `fedmed.client.optimizers`); torchvision imports it when it is imported. A site that
    trains `cnn` therefore never loads it, and with DP off it never loads Opacus: a torch,
    Opacus or torchvision upgrade that changes this fails here."""
    assert _heavy_modules(ROUNDS.format(cases=cases)) == expected


# A DICOM site's rounds as its executor runs them: round 1 on a fresh state folder (a
# child scans the folder and fills the image cache), round 2 from the cache alone.
DICOM_ROUNDS = ROUNDS.split("state = Path(tempfile.mkdtemp())")[0] + """
from fedmed.client.site import dicom_site
config = FederationConfig(rounds=2, epochs=1, batch_size=16, image=ImageSettings(size=16), seed=1)
site = dicom_site("A", Path({data!r}), Path(tempfile.mkdtemp()), PrivacyPolicy(enabled=False))
round_trip(site, config, 1)
import fedmed.client.app as client_app
client_app._DATA_MEMO.clear()  # as a restarted executor: the next round reads the cache
round_trip(site, config, 2)
data = site.load_data(config)
assert data.skipped.counts.get("not a DICOM file") == 1, data.skipped.counts
"""


def test_a_dicom_site_trains_without_pydicom(synthetic_sites, tmp_path):
    """pydicom and its image plugins (about 12 MB) would stay in the executor for the
    whole run; the scan and decode run in a child (`fedmed.client.sitedata.fill`), whose
    bad-file reasons still reach the site's skip report."""
    import shutil

    data = tmp_path / "A"
    shutil.copytree(synthetic_sites / "A", data)
    (data / "notes.dcm").write_bytes(b"not a DICOM file")
    assert _heavy_modules(DICOM_ROUNDS.format(data=str(data)),
                          HEAVY + ("pydicom", "PIL", "fedmed.client.sitedata.scan")) == "torch"


def test_fedmeds_processes_get_one_malloc_arena(monkeypatch):
    """Every process the launchers start (SuperLink, SuperNode, executors) runs with one
    glibc malloc arena unless the operator set otherwise (`flower_env`)."""
    from fedmed.common.processes import flower_env

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert flower_env()["MALLOC_ARENA_MAX"] == "1"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert flower_env()["MALLOC_ARENA_MAX"] == "4"
