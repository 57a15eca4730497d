"""Transfer learning: `--init-from` (a fedmed model or torchvision ResNet-18 weights),
`--freeze`, and `fedmed pretrain`. Frozen weights are neither trained nor noised by a
site's DP-SGD, and a wrong starting model is refused in one line before anything starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18 as tv_resnet18
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.client.evaluation import evaluate_model
from fedmed.client.pretrain import pretrain
from fedmed.client.privacy.dp_sgd import make_private_training
from fedmed.client.training import make_optimizer
from fedmed.common.checkpoint import load_checkpoint, save_checkpoint
from fedmed.common.federation import FederationConfig
from fedmed.common.freezing import apply_freeze, frozen_names, trainable_count, trainable_prefixes
from fedmed.common.models import build_model
from fedmed.common.settings import ImageSettings
from fedmed.common.starting_model import load_starting_model, transfer_meta
from fedmed.server.deployment import DeploymentError, ServerOptions, start_server

CNN = FederationConfig(image=ImageSettings(size=16), seed=1)


def _saved(path: Path, config: FederationConfig, seed: int = 5) -> Path:
    torch.manual_seed(seed)
    model = build_model(config.model, len(config.classes), config.image.size)
    return save_checkpoint(path, model.state_dict(), config, server_round=3)


# --- which weights train ----------------------------------------------------------------

def test_freeze_modes_pick_the_head_and_the_last_block():
    cnn = build_model("cnn", 2, 16)
    assert trainable_prefixes(cnn, "body") == ("classifier.4",)
    assert trainable_prefixes(cnn, "all-but-last-block") == ("classifier", "classifier.4")
    assert trainable_count(cnn, "body") == 128 * 2 + 2
    assert trainable_count(cnn, "none") == sum(p.numel() for p in cnn.parameters())
    resnet = build_model("resnet18", 2, 28)
    assert trainable_prefixes(resnet, "body") == ("fc",)
    assert trainable_prefixes(resnet, "all-but-last-block") == ("layer4", "fc")
    assert apply_freeze(resnet, "all-but-last-block") == trainable_count(resnet, "all-but-last-block")
    trains = {n for n, p in resnet.named_parameters() if p.requires_grad}
    assert trains and all(n.startswith(("layer4.", "fc.")) for n in trains)
    assert "layer3.1.conv2.weight" in frozen_names(resnet, "body")
    with pytest.raises(ValueError, match="--freeze: expected one of"):
        trainable_prefixes(cnn, "everything")


def test_dp_sgd_neither_trains_nor_noises_frozen_weights():
    torch.manual_seed(0)
    model = build_model("cnn", 2, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = apply_freeze(model, "body")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 1, 16, 16)).astype(np.float32), rng.integers(0, 2, 40)
    training = make_private_training(model, make_optimizer(model, CNN), x, y, batch_size=10,
                                     noise_multiplier=5.0, max_grad_norm=1.0, seed=0, model_name="cnn")
    assert sum(p.numel() for p in training.optimizer.params) == trained  # Opacus sees the head only
    training.train(1)
    after = training.state_dict()
    for key, value in before.items():
        if key.startswith("classifier.4."):
            assert not torch.equal(after[key], value), key
        else:
            assert torch.equal(after[key], value), key


# --- starting models --------------------------------------------------------------------

def test_a_fedmed_model_starts_a_matching_federation_only(tmp_path: Path):
    path = _saved(tmp_path / "m.pt", CNN)
    start = load_starting_model(path, CNN)
    saved = load_checkpoint(path)["state_dict"]
    assert start.source == "fedmed" and start.fresh == ()
    assert all(torch.equal(start.state_dict[k], v) for k, v in saved.items())
    for other, hint in ((CNN.with_(model="resnet18"), f"--model {CNN.model}"),
                        (CNN.with_(classes=("a", "b")), "--classes normal,abnormal"),
                        (CNN.with_(image=ImageSettings(size=32)), "--image-size 16")):
        with pytest.raises(ValueError, match=hint) as info:
            load_starting_model(path, other)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ValueError, match="no such file"):
        load_starting_model(tmp_path / "none.pt", CNN)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a model file"):
        load_starting_model(tmp_path / "junk.pt", CNN)
    with pytest.raises(ValueError, match="changed since"):
        load_starting_model(path, CNN, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="needs --init-from"):
        transfer_meta(None, "body", CNN)
    assert transfer_meta(path, "body", CNN)["freeze"] == "body"


def test_torchvision_resnet18_weights_adapt_to_one_channel_groupnorm(tmp_path: Path):
    torch.manual_seed(0)
    source = tv_resnet18(weights=None).state_dict()  # the format of torchvision's weight files
    path = tmp_path / "resnet18.pth"
    torch.save(source, path)
    config = CNN.with_(model="resnet18", image=ImageSettings(size=64))
    start = load_starting_model(path, config)
    assert start.source == "torchvision" and start.fresh == ("fc",)
    sd = start.state_dict
    assert torch.allclose(sd["conv1.weight"], source["conv1.weight"].sum(dim=1, keepdim=True))
    for key in ("layer1.0.bn1.weight", "layer2.0.downsample.1.bias", "layer4.1.conv2.weight"):
        assert torch.equal(sd[key], source[key]), key
    build_model("resnet18", 2, 64).load_state_dict(sd)  # a complete, loadable start
    small = load_starting_model(path, config.with_(image=ImageSettings(size=28)))
    assert small.fresh == ("conv1", "fc")  # the 3×3 stem of small images starts fresh
    with pytest.raises(ValueError, match="resnet18 only"):
        load_starting_model(path, CNN)
    torch.save({"layer4.1.conv2.weight": torch.zeros(3), "x": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not torchvision resnet18 weights"):
        load_starting_model(tmp_path / "other.pth", config)


def test_cli_refuses_a_mismatched_start_in_one_line(synthetic_sites: Path, tmp_path: Path):
    path = _saved(tmp_path / "m.pt", CNN)  # 16-pixel images; simulate's DICOM default is 64
    result = CliRunner().invoke(app, ["simulate", "--data", str(synthetic_sites), "--out", str(tmp_path / "run"),
                                      "--init-from", str(path)])
    assert result.exit_code == 2 and "--image-size 16" in result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    options = ServerOptions(out_dir=tmp_path / "srv", config=CNN.with_(classes=("x", "y")), insecure=True,
                            init_from=path)
    with pytest.raises(DeploymentError, match="--classes normal,abnormal"):
        start_server(options, emit=lambda line: None)
    assert not (tmp_path / "srv" / "superlink.log").exists()  # refused before anything started


# --- pretrain ---------------------------------------------------------------------------

def _npz(path: Path, n: int = 60, side: int = 16) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = (rng.random(n) < 0.5).astype(np.int64)
        images = rng.integers(0, 100, size=(n, side, side)).astype(np.uint8)
        images[labels == 1, 4:12, 4:12] += 120  # a bright square marks class 1
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    np.savez(path, **arrays)
    return path


def test_pretrain_writes_a_starting_model_with_a_threshold(tmp_path: Path):
    npz = _npz(tmp_path / "public.npz")
    seen = []
    result = pretrain(CNN.with_(epochs=4, batch_size=16, lr=3e-3), tmp_path / "pre.pt", npz=npz,
                      train_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (16, 16)  # 4 epochs × 4 batches
    payload = load_checkpoint(result.path)
    assert payload["round"] == 0 and payload["pretrained"]["data"] == "public.npz"
    assert result.val_auc > 0.9 and 0 <= payload["threshold"] <= 1
    assert evaluate_model(result.path, npz=npz).auc.auc > 0.9
    assert load_starting_model(result.path, CNN).source == "fedmed"
    cli = CliRunner().invoke(app, ["pretrain", "--npz", str(npz), "--epochs", "1", "--out", str(tmp_path / "c.pt")])
    assert cli.exit_code == 0, cli.output
    assert "--init-from" in cli.output and (tmp_path / "c.pt").exists()


# --- end to end: a pretrained start learns in fewer rounds ------------------------------

def _blobs(path: Path, n: int, seed: int, side: int = 28) -> Path:
    """MedMNIST-format synthetic images: noise, and in class 1 a faint blob somewhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    arrays = {}
    for split, k in (("train", n), ("val", n // 4), ("test", n // 4)):
        labels = np.arange(k) % 2
        images = rng.normal(100, 30, size=(k, side, side))
        cy, cx = rng.integers(8, side - 8, size=(2, k))
        blob = 45 * np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 18.0)
        images += blob * labels[:, None, None]
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_a_pretrained_start_reaches_the_target_auc_in_fewer_rounds(tmp_path: Path):
    """Pretrained on separate (public) images, frozen but for the head, a DP federation
    is at AUC ≥ 0.9 after its first round; from random weights it is not."""
    from fedmed.server.outputs import read_metrics
    from fedmed.simulations.runner import simulate
    from fedmed.simulations.sites import npz_sites

    public, federated = _blobs(tmp_path / "public.npz", 400, seed=1), _blobs(tmp_path / "sites.npz", 320, seed=2)
    config = FederationConfig(rounds=1, min_sites=2, batch_size=32, image=ImageSettings(size=28), seed=3)
    start = pretrain(config.with_(epochs=2), tmp_path / "public.pt", npz=public)
    assert start.val_auc > 0.9
    target, aucs = 0.9, {}
    for name, meta in (("random", {}), ("pretrained", transfer_meta(start.path, "body", config))):
        out = tmp_path / name
        sites = npz_sites(federated, 2, "iid", 0, tmp_path / f"state-{name}")  # DP on (the default)
        assert simulate(sites, config, out, meta=meta)["status"] == "completed"
        aucs[name] = read_metrics(out)[0]["aggregate"]["auc"]
    assert aucs["pretrained"] >= target > aucs["random"], aucs
    final = load_checkpoint(tmp_path / "pretrained" / "model-final.pt")["state_dict"]
    body = load_checkpoint(start.path)["state_dict"]
    # Frozen at every site (averaging equal weights may move them by a rounding error).
    for key in ("features.0.weight", "features.3.weight", "classifier.1.weight"):
        assert torch.allclose(final[key], body[key], rtol=0, atol=1e-6), key
    assert (final["classifier.4.weight"] - body["classifier.4.weight"]).abs().max() > 1e-4


def test_the_coordinator_refuses_an_update_that_moves_a_frozen_weight():
    from flwr.app import ArrayRecord

    from fedmed.server.strategy.update_checks import UpdateLimits, check_update

    torch.manual_seed(0)
    model = build_model("cnn", 2, 16)
    limits = UpdateLimits(frozen=tuple(frozen_names(model, "body")))
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    honest = {k: v.clone() for k, v in sent.items()}
    honest["classifier.4.weight"] += 0.1
    assert check_update(ArrayRecord(honest), ArrayRecord(sent), limits) is None
    tampered = {k: v.clone() for k, v in honest.items()}
    tampered["features.0.weight"][0, 0, 0, 0] += 1e-3
    assert check_update(ArrayRecord(tampered), ArrayRecord(sent), limits) == "frozen-changed:features.0.weight"
    assert UpdateLimits.from_dict(limits.to_dict()) == UpdateLimits()
