"""The noise-to-signal check a site's DP plan makes before training
(`fedmed.client.privacy.noise_check`)."""

from __future__ import annotations

import math

import pytest

from fedmed.client.privacy.noise_check import NOISE_WARNING_RATIO, noise_to_signal, trainable_parameters
from fedmed.common.models import build_model


def test_ratio_is_sigma_sqrt_d_over_the_expected_batch():
    check = noise_to_signal(2.0, 0.1, 1000, 10_000)
    assert check.expected_batch == pytest.approx(100)
    assert check.ratio == pytest.approx(2.0 * math.sqrt(10_000) / 100)
    assert check.learns and check.warning() is None


def test_a_small_site_with_a_large_model_is_warned_with_the_remedies():
    # The benchmark's smallest non-IID site at epsilon 3 with the original CNN on 28x28.
    d = trainable_parameters(build_model("cnn", 2, 28))
    check = noise_to_signal(5.41, 1.0, 55, d)
    assert check.ratio > NOISE_WARNING_RATIO
    line = check.warning()
    assert line is not None and "\n" not in line
    for remedy in ("fewer rounds", "larger epsilon", "more training images", "smaller model"):
        assert remedy in line


def test_the_dp_model_at_a_hospital_sized_site_is_not_warned():
    d = trainable_parameters(build_model("dpcnn", 2, 28))
    assert noise_to_signal(1.65, 1 / 15, 3694, d).warning() is None
