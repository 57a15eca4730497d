"""Every model builds for any input size and take a training step."""

import pytest
import torch

from fedmed.common.models import build_model


@pytest.mark.parametrize("name", ["cnn", "dpcnn", "resnet18", "scatternet"])
@pytest.mark.parametrize("size", [28, 64])
def test_model_takes_a_training_step(name, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, image_size=size)
    x = torch.randn(4, 1, size, size)
    y = torch.tensor([0, 1, 0, 1])
    # The scatternet's linear head on ~4 k unit-variance features separates four images
    # in one step of 0.1 and saturates, leaving no gradient for the second: a smaller step.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001 if name == "scatternet" else 0.1)
    before = [p.detach().clone() for p in model.parameters()]
    # Two steps: a zero-initialised head (dpcnn, scatternet) passes no gradient back on the first.
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed == len(before)


def test_resnet_has_no_batchnorm_and_no_inplace_ops():
    model = build_model("resnet18", 3, 64)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "BatchNorm2d" not in kinds and "GroupNorm" in kinds
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_unknown_model_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="model: expected one of cnn, dpcnn, resnet18, scatternet, got 'vgg'"):
        build_model("vgg", 2, 64)


def test_dpcnn_is_small_starts_neutral_and_ignores_overall_brightness():
    model = build_model("dpcnn", 2, 28)
    assert sum(p.numel() for p in model.parameters()) < 50_000
    x = torch.randn(3, 1, 28, 28)
    # A zero-initialised head: every image starts at P = ½, no random ranking to undo.
    torch.testing.assert_close(torch.softmax(model(x), 1), torch.full((3, 2), 0.5))
    torch.nn.init.normal_(model.head.weight)
    # Each image is standardised on its own: a scanner's brightness or gain changes nothing.
    torch.testing.assert_close(model(2.0 * x + 0.7), model(x), atol=1e-4, rtol=1e-4)
    assert build_model("dpcnn", 3, 48)(torch.randn(2, 1, 48, 48)).shape == (2, 3)


def test_scatternet_trains_few_weights_starts_neutral_and_keeps_only_them_in_checkpoints():
    model = build_model("scatternet", 2, 28)
    # GroupNorm over 81 maps and a linear layer on 81 × 7 × 7 features.
    assert sum(p.numel() for p in model.parameters()) == 2 * 81 + 81 * 7 * 7 * 2 + 2
    # The fixed filters are not weights: nothing to average, checkpoint or freeze.
    assert set(model.state_dict()) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(torch.softmax(model(x), 1), torch.full((3, 2), 0.5))
    torch.nn.init.normal_(model.head.weight)
    # Each image is standardised on its own: a scanner's brightness or gain changes nothing.
    # (up to the small constant that keeps a flat image finite: 1e-3 of the logits' scale)
    logits = model(x)
    assert (model(3.0 * x + 0.2) - logits).abs().max() <= 1e-3 * logits.abs().max()
    restored = build_model("scatternet", 2, 28)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored(x), model(x))


def test_scatternet_head_keeps_its_size_on_larger_images():
    # The maps are averaged down to 7×7 (a fixed step, no weights): DP-SGD's noise grows
    # with the head's size, and a 64×64 head of 41 k weights was driven to one class.
    for side in (32, 64, 128):
        model = build_model("scatternet", 2, side)
        assert sum(p.numel() for p in model.parameters()) == 2 * 81 + 81 * 7 * 7 * 2 + 2
        assert set(model.state_dict()) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
        assert model(torch.rand(2, 1, side, side)).shape == (2, 2)


def test_scatternet_freezing_rules_find_its_head():
    from fedmed.common.freezing import apply_freeze

    model = build_model("scatternet", 2, 28)
    assert apply_freeze(model, "body") == 81 * 7 * 7 * 2 + 2
    assert apply_freeze(model, "all-but-last-block") == 2 * 81 + 81 * 7 * 7 * 2 + 2


@pytest.mark.parametrize("name", ["cnn", "dpcnn", "resnet18", "scatternet"])
def test_scores_do_not_depend_on_the_prediction_batch(name):
    """A site scores its validation split `PREDICT_BATCH` images at a time to keep its peak
    memory low; the scores, and so every figure it releases, are those of one large batch."""
    import numpy as np

    from fedmed.client.training import PREDICT_BATCH, predict_proba

    torch.manual_seed(0)
    model = build_model(name, num_classes=2, image_size=28)
    x = np.random.default_rng(0).normal(size=(100, 1, 28, 28)).astype(np.float32)
    cpu = torch.device("cpu")
    assert np.array_equal(predict_proba(model, x, cpu, batch_size=PREDICT_BATCH),
                          predict_proba(model, x, cpu, batch_size=256))
