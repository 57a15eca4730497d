"""Record-level DP-SGD at a site (`fedmed.client.privacy.dp_sgd`): what is trained is what
the accountant is told, gradients are clipped per record, and a seed reproduces a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmed.client.privacy.dp_sgd import (
    MODES,
    best_mode,
    dp_schedule,
    dp_step,
    make_private_training,
)
from fedmed.common.models import MODEL_NAMES, build_model

# Small inputs keep every test step cheap; both models accept any square side ≥ 4.
SMALL_SIDE = {"cnn": 16, "dpcnn": 8, "resnet18": 8, "scatternet": 8}


@pytest.fixture(autouse=True)
def one_torch_thread():
    # On a small machine shared with other jobs, intra-op threads spin-waiting on each
    # other made one ResNet step several times slower than a single thread does.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _records(n: int, side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, side, side)).astype(np.float32), rng.integers(0, 2, size=n)


def _private(model: nn.Module, x, y, *, batch_size, noise=1.0, clip=1.0, seed=0, mode="hooks", lr=0.05):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return make_private_training(model, optimizer, x, y, batch_size=batch_size,
                                 noise_multiplier=noise, max_grad_norm=clip, seed=seed, mode=mode)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


def _no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


@pytest.mark.parametrize("name, records, steps", [("cnn", 6, 2), ("resnet18", 3, 1), ("scatternet", 6, 2)])
def test_dp_training_runs_and_returns_the_global_models_keys(name, records, steps):
    side = SMALL_SIDE[name]
    torch.manual_seed(0)
    global_model = build_model(name, 2, side)
    before = {k: v.clone() for k, v in global_model.state_dict().items()}
    x, y = _records(records, side)

    local = build_model(name, 2, side)
    local.load_state_dict(before)
    training = make_private_training(local, torch.optim.Adam(local.parameters(), lr=1e-2), x, y,
                                     batch_size=3, noise_multiplier=1.0, max_grad_norm=1.0,
                                     seed=0, model_name=name)
    assert training.mode == best_mode(name)
    result = training.train(epochs=1)

    assert result.steps == training.schedule.steps_per_epoch == steps
    weights = training.state_dict()
    assert list(weights) == list(before)
    assert all(weights[k].shape == before[k].shape for k in before)
    assert any(not torch.equal(weights[k], before[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in weights.values())
    global_model.load_state_dict(weights)  # the coordinator's strict load accepts them


def test_a_fix_that_renames_weights_is_refused():
    # Opacus replaces BatchNorm by GroupNorm, which has no running statistics: the
    # coordinator could not average such a site's weights with the others'.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x, y = _records(4, 8)
    with pytest.raises(ValueError, match="names or shapes"):
        _private(model, x, y, batch_size=2)


@pytest.mark.parametrize("mode", MODES)
def test_noise_free_step_is_the_sum_of_clipped_record_gradients(mode):
    model = _tiny()
    x, y = _records(6, 4, seed=1)
    xb, yb = torch.from_numpy(x), torch.from_numpy(y)
    params = list(model.parameters())
    per_record = []
    for i in range(len(xb)):
        loss = nn.functional.cross_entropy(model(xb[i:i + 1]), yb[i:i + 1])
        per_record.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    norms = torch.stack([g.norm() for g in per_record])
    clip = float(norms.median())  # half the records are clipped, half are not
    expected = sum(min(1.0, clip / (float(n) + 1e-6)) * g for n, g in zip(norms, per_record))

    training = _private(model, x, y, batch_size=len(x), noise=0.0, clip=clip, mode=mode, lr=0.0)
    dp_step(training, xb, yb)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    got = got * training.optimizer.expected_batch_size
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (norms > clip).any()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_with_a_large_clip_and_no_noise_the_step_is_the_plain_step(name):
    side = SMALL_SIDE[name]
    torch.manual_seed(0)
    plain = _no_dropout(build_model(name, 2, side))
    dp_model = _no_dropout(build_model(name, 2, side))
    dp_model.load_state_dict(plain.state_dict())
    x, y = _records(4, side)
    xb, yb = torch.from_numpy(x), torch.from_numpy(y)

    nn.functional.cross_entropy(plain(xb), yb).backward()
    training = _private(dp_model, x, y, batch_size=len(x), noise=0.0, clip=1e6,
                        mode=best_mode(name), lr=0.0)
    dp_step(training, xb, yb)
    for (key, p), q in zip(plain.named_parameters(), dp_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=key)


def test_one_record_moves_the_weights_by_at_most_the_clipping_norm():
    model = _tiny()
    start = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    x, y = _records(1, 4, seed=2)
    x *= 100.0  # a large gradient, far beyond the clip
    clip = 0.01
    training = _private(model, x, y, batch_size=1, noise=0.0, clip=clip, mode=best_mode("cnn"), lr=1.0)
    dp_step(training, torch.from_numpy(x), torch.from_numpy(y))
    moved = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - start
    assert 0.0 < float(moved.norm()) <= clip * (1 + 1e-4)


@pytest.mark.parametrize("n, batch", [(100, 64), (640, 64), (5952, 64), (7, 32)])
def test_schedule_is_what_the_loader_does(n, batch):
    schedule = dp_schedule(n, batch, noise_multiplier=1.1, max_grad_norm=0.5)
    steps = math.ceil(n / batch)
    assert schedule.steps_per_epoch == steps
    assert schedule.sample_rate == 1 / steps
    assert schedule.history(epochs=3) == (1.1, 1 / steps, 3 * steps)

    x, y = _records(n, 4)
    training = _private(_tiny(), x, y, batch_size=batch, noise=1.1, clip=0.5)
    assert training.schedule == schedule
    assert training.loader.sample_rate == schedule.sample_rate
    # 5952 / 64 = 93 batches, where Opacus' own int(1/q) would give 92.
    assert len(training.loader) == sum(1 for _ in training.loader) == steps


def test_schedule_rejects_impossible_settings():
    for args in [(0, 64, 1.0, 1.0), (10, 0, 1.0, 1.0), (10, 4, -1.0, 1.0), (10, 4, 1.0, 0.0)]:
        with pytest.raises(ValueError):
            dp_schedule(*args)


def test_empty_poisson_batches_still_take_a_noisy_step():
    x, y = _records(2, 4)
    for mode in MODES:
        training = _private(_tiny(), x, y, batch_size=1, seed=3, mode=mode)
        before = [p.detach().clone() for p in training.module.parameters()]
        empty = torch.zeros((0, 1, 4, 4)), torch.zeros((0,), dtype=torch.int64)
        assert dp_step(training, *empty) == 0.0
        after = list(training.module.parameters())
        assert all(not torch.equal(a, b) for a, b in zip(after, before)), mode
        assert training.train(epochs=4).steps == 8


def test_the_same_seed_reproduces_the_weights():
    side = SMALL_SIDE["cnn"]
    x, y = _records(12, side)

    def run(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("cnn", 2, side)  # with dropout: the seed must fix its masks too
        training = _private(model, x, y, batch_size=4, seed=seed, mode=best_mode("cnn"))
        training.train(epochs=2)
        return training.state_dict()

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_best_mode_is_a_measured_opacus_mode_for_every_model():
    for device_type in ("cpu", "cuda"):
        assert {best_mode(name, device_type) for name in MODEL_NAMES} <= set(MODES)
    with pytest.raises(ValueError, match="vit"):
        best_mode("vit")


def test_without_a_mode_the_models_measured_mode_is_used():
    x, y = _records(4, 8)
    cnn = build_model("cnn", 2, 8)
    assert _private(cnn, x, y, batch_size=2, mode=None).mode == best_mode("cnn", "cpu")
    assert _private(_tiny(), x[:, :, :4, :4], y, batch_size=2, mode=None).mode == "hooks"
