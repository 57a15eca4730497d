"""Both models build for any input size and take a training step."""

import pytest
import torch

from fedmed.common.models import build_model


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
@pytest.mark.parametrize("size", [28, 64])
def test_model_takes_a_training_step(name, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, image_size=size)
    x = torch.randn(4, 1, size, size)
    y = torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
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
    with pytest.raises(ValueError, match="model: expected one of cnn, resnet18, got 'vgg'"):
        build_model("vgg", 2, 64)
