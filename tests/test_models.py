"""Both models build for any input size and take a training step."""

import pytest
import torch

from fedmed.common.models import build_model


@pytest.mark.parametrize("name", ["cnn", "dpcnn", "resnet18"])
@pytest.mark.parametrize("size", [28, 64])
def test_model_takes_a_training_step(name, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, image_size=size)
    x = torch.randn(4, 1, size, size)
    y = torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    # Two steps: a zero-initialised head (dpcnn) passes no gradient back on the first.
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
    with pytest.raises(ValueError, match="model: expected one of cnn, dpcnn, resnet18, got 'vgg'"):
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
