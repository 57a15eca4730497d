"""Augmentation at a site (`fedmed.client.augmentation`) and augmentation multiplicity in
DP-SGD: shapes and labels kept, a seed reproduces the views, flips only when asked, and
with K views a record's gradient is the mean of its views' gradients, clipped once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedmed.client.augmentation import (
    AugmentSettings,
    augment,
    average_views,
    intensity_jitter,
    random_affine,
    random_flip,
    repeat_views,
)
from fedmed.client.privacy.accounting import epsilon
from fedmed.client.privacy.dp_sgd import dp_step, make_private_training

from pld_reference import pld_epsilon  # noqa: E402 — tests/ is on sys.path under pytest

NONE = AugmentSettings(max_rotation=0, max_shift=0, max_zoom=0, max_brightness=0, max_contrast=0)


def _images(n=6, side=12, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 1, side, side)).astype(np.float32))


def _gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_and_dtype_are_kept_and_images_change():
    x = _images()
    out = augment(x, AugmentSettings(), _gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, x)
    assert augment(x[:0], AugmentSettings(), _gen()).shape == (0, 1, 12, 12)


def test_zero_strength_is_the_identity():
    x = _images()
    torch.testing.assert_close(augment(x, NONE, _gen()), x, atol=1e-5, rtol=1e-5)


def test_the_same_seed_gives_the_same_views_and_another_seed_others():
    x = _images()
    a = augment(x, AugmentSettings(), _gen(3))
    torch.testing.assert_close(augment(x, AugmentSettings(), _gen(3)), a)
    assert not torch.allclose(augment(x, AugmentSettings(), _gen(4)), a)


def test_transforms_are_small():
    # A few degrees and pixels: the image stays close to itself (label preserved).
    side = 28
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    smooth = torch.exp(-(xx ** 2 + yy ** 2) * 3).expand(8, 1, side, side).contiguous()
    moved = random_affine(smooth, AugmentSettings(), _gen())
    assert float((moved - smooth).abs().mean()) < 0.1
    jittered = intensity_jitter(smooth, AugmentSettings(), _gen())
    assert float((jittered - smooth).abs().max()) < 0.25


def test_flips_only_when_the_setting_allows():
    x = _images(n=32)
    no_flip = augment(x, NONE, _gen())
    torch.testing.assert_close(no_flip, x, atol=1e-5, rtol=1e-5)
    flipped = augment(x, AugmentSettings(**{**NONE.__dict__, "flips": True}), _gen())
    mirrored = [torch.allclose(flipped[i], x[i].flip(-1), atol=1e-5) for i in range(len(x))]
    kept = [torch.allclose(flipped[i], x[i], atol=1e-5) for i in range(len(x))]
    assert any(mirrored) and any(kept) and all(m or k for m, k in zip(mirrored, kept))
    assert random_flip(x[:0], _gen()).shape == x[:0].shape


def test_views_are_record_major_and_average_back():
    x = torch.arange(3.0).view(3, 1)
    assert repeat_views(x, 2).view(-1).tolist() == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(average_views(repeat_views(x, 4), 4), x)
    with pytest.raises(ValueError, match="views"):
        repeat_views(x, 0)
    with pytest.raises(ValueError, match="groups of 4"):
        average_views(torch.zeros(6, 2), 4)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))


def test_multiplicity_clips_the_mean_of_a_records_views():
    """Noise-free DP step with K views = Σ_records clip(mean over its K views of ∇ℓ)."""
    views, settings = 3, AugmentSettings(max_rotation=20, max_shift=0.2, max_brightness=0.5)
    model = _tiny()
    x = _images(n=5, side=4, seed=1)
    y = torch.tensor([0, 1, 1, 0, 1])
    params = list(model.parameters())
    seen = augment(repeat_views(x, views), settings, _gen(7))
    per_record = []
    for i in range(len(x)):
        grads = []
        for v in range(views):
            j = i * views + v
            loss = nn.functional.cross_entropy(model(seen[j:j + 1]), y[i:i + 1])
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        per_record.append(torch.stack(grads).mean(0))
    norms = torch.stack([g.norm() for g in per_record])
    clip = float(norms.median())
    expected = sum(min(1.0, clip / (float(n) + 1e-6)) * g for n, g in zip(norms, per_record))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    training = make_private_training(model, optimizer, x.numpy(), y.numpy(), batch_size=len(x),
                                     noise_multiplier=0.0, max_grad_norm=clip, seed=0, mode="hooks",
                                     augment=settings, views=views)
    dp_step(training, x, y, _gen(7))
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()]) * training.optimizer.expected_batch_size
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert (norms > clip).any()


def test_multiplicity_leaves_the_accounting_unchanged():
    x, y = _images(n=40, side=4).numpy(), np.arange(40) % 2
    first = _tiny()
    plain = make_private_training(first, torch.optim.SGD(first.parameters(), lr=0.1), x, y,
                                  batch_size=8, noise_multiplier=1.1, max_grad_norm=1.0, seed=0)
    model = _tiny()
    many = make_private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                                 batch_size=8, noise_multiplier=1.1, max_grad_norm=1.0, seed=0,
                                 augment=AugmentSettings(), views=4)
    assert many.mode != "ghost"
    assert many.schedule == plain.schedule
    result = many.train(epochs=2)
    assert result.steps == plain.schedule.steps_per_epoch * 2
    history = [many.schedule.history(2)]
    assert epsilon(history, 1e-5) == pytest.approx(pld_epsilon(history, 1e-5), rel=0.02)


def test_multiplicity_needs_settings():
    x, y = _images(n=4, side=4).numpy(), np.arange(4) % 2
    model = _tiny()
    with pytest.raises(ValueError, match="views"):
        make_private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, batch_size=2,
                              noise_multiplier=1.0, max_grad_norm=1.0, seed=0, views=2)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_patient_record_clips_the_mean_of_its_images(chunked, monkeypatch):
    """Records of M images (a patient's, P×M×… with labels P×M): a noise-free DP step is
    Σ_patients clip(mean over the patient's M images of ∇ℓ), as for views -- also when the
    step runs in chunks of records to bound the per-input gradients' memory."""
    from fedmed.client.privacy import dp_sgd

    if chunked:  # one record per chunk
        monkeypatch.setattr(dp_sgd, "MAX_PER_SAMPLE_VALUES", 1)
    model = _tiny()
    x = _images(n=12, side=4, seed=2).reshape(4, 3, 1, 4, 4)
    y = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 1, 0], [0, 0, 0]])
    params = list(model.parameters())
    per_patient = []
    for i in range(len(x)):
        grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            nn.functional.cross_entropy(model(x[i, m:m + 1]), y[i, m:m + 1]), params)]) for m in range(3)]
        per_patient.append(torch.stack(grads).mean(0))
    norms = torch.stack([g.norm() for g in per_patient])
    clip = float(norms.median())
    expected = sum(min(1.0, clip / (float(n) + 1e-6)) * g for n, g in zip(norms, per_patient))

    training = make_private_training(model, torch.optim.SGD(model.parameters(), lr=0.0), x.numpy(), y.numpy(),
                                     batch_size=len(x), noise_multiplier=0.0, max_grad_norm=clip, seed=0)
    assert training.mode != "ghost" and training.images_per_record == 3
    assert training.schedule.sample_rate == 1.0  # q over the 4 patients, not the 12 images
    dp_step(training, x, y)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()]) * training.optimizer.expected_batch_size
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert (norms > clip).any()
    assert training.train(epochs=1).steps == training.schedule.steps_per_epoch  # the loader yields patients
