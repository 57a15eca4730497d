"""The fixed scattering front end (`fedmed.common.scattering`): wavelets that see no
constant image, a low-pass of unit gain, the map count of J = 2, L = 8, and a memo that
returns exactly what the transform computes."""

from __future__ import annotations

import math

import pytest
import torch

from fedmed.common import scattering
from fedmed.common.scattering import Scattering2D, filter_bank, scattering_channels


def test_wavelets_have_zero_mean_and_the_low_pass_unit_gain():
    psi, phi = filter_bank(40, J=2, L=8)
    assert psi.shape == (2, 8, 40, 40)
    assert psi[:, :, 0, 0].abs().max() < 1e-9          # ψ̂(0) = Σ ψ = 0
    assert phi[0, 0] == pytest.approx(1.0)             # φ̂(0) = Σ φ = 1
    # Each wavelet is tuned to its orientation: its spectrum peaks in a different direction.
    peaks = {int(psi[0, ell].abs().argmax()) for ell in range(8)}
    assert len(peaks) == 8


def test_the_transform_gives_81_maps_at_a_quarter_of_the_side_for_any_side():
    assert scattering_channels(2, 8) == 81
    for side in (8, 13, 28, 64):
        maps = Scattering2D(side)(torch.rand(2, 1, side, side))
        assert maps.shape == (2, 81, math.ceil(side / 4), math.ceil(side / 4))
        assert torch.isfinite(maps).all()
    with pytest.raises(ValueError, match="side at least 8"):
        Scattering2D(6)


def test_a_constant_image_has_no_wavelet_energy_and_the_first_order_sees_orientation():
    s = Scattering2D(28)
    flat = s(torch.full((1, 1, 28, 28), 0.5))
    assert flat[0, 0].mean() == pytest.approx(0.5, abs=1e-5)
    assert flat[0, 1:].abs().max() < 1e-5
    rows = torch.arange(28.0).view(1, 1, 28, 1).expand(1, 1, 28, 28)
    stripes = torch.sin(rows * 3 * math.pi / 4)           # horizontal stripes
    first_order = s(stripes)[0, 1:9].mean(dim=(1, 2))     # j = 0, the 8 orientations
    # θ = 0 looks along the rows' index, where the stripes vary: the most energy there.
    assert int(first_order.argmax()) == 0


def test_the_memo_returns_the_transform_itself_and_tells_images_apart():
    s = Scattering2D(28)
    x = torch.rand(6, 1, 28, 28)
    scattering._MEMO.clear()
    fresh = s._transform(x)
    first = s(x)
    again = s(x.flip(0))
    torch.testing.assert_close(first, fresh)
    torch.testing.assert_close(again, fresh.flip(0))
    other = x.clone()
    other[0, 0, 0, 0] += 1e-3
    assert not torch.equal(s(other)[0], first[0])
    assert set(Scattering2D(28).state_dict()) == set()
