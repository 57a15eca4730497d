"""`fedmed pretrain --data` on a folder of labelled folders (public data from several scanners)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.client.pretrain import pretrain
from fedmed.common.checkpoint import load_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.settings import ImageSettings


def test_a_folder_of_sites_pretrains_on_their_union(synthetic_sites: Path, tmp_path: Path):
    config = FederationConfig(epochs=1, batch_size=16, image=ImageSettings(size=32))
    whole = pretrain(config, tmp_path / "all.pt", data_dir=synthetic_sites)
    one = pretrain(config, tmp_path / "a.pt", data_dir=synthetic_sites / "A")
    # Each site is split by patient on its own, so the union holds every site's images.
    assert whole.train_images + whole.val_images == 90
    assert one.train_images + one.val_images == 30
    assert load_checkpoint(whole.path)["pretrained"]["data"] == synthetic_sites.name


def test_pretrain_defaults_to_the_federations_model(synthetic_sites: Path, tmp_path: Path):
    out = tmp_path / "start.pt"
    result = CliRunner().invoke(app, ["pretrain", "--data", str(synthetic_sites / "B"), "--epochs", "1",
                                      "--image-size", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out)["model"] == FederationConfig().model
