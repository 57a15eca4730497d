"""A fixed 2-D scattering transform: image features that need no training and no data.

The scattering transform (Mallat 2012, "Group Invariant Scattering"; Bruna & Mallat 2013,
"Invariant Scattering Convolution Networks") cascades Morlet wavelet filters and complex
moduli, then averages with a Gaussian low-pass filter:

    S0 = x ⋆ φ_J
    S1[j1, θ1] = |x ⋆ ψ_{j1,θ1}| ⋆ φ_J
    S2[j1, θ1, j2, θ2] = ||x ⋆ ψ_{j1,θ1}| ⋆ ψ_{j2,θ2}| ⋆ φ_J     (j2 > j1)

each sampled every 2^J pixels. With J scales and L orientations that is
1 + J·L + L²·J(J−1)/2 maps (81 for J = 2, L = 8). Its filters are fixed by (J, L) alone, so
the features depend on no site's data and cost no privacy budget; Tramèr & Boneh 2021
("Differentially Private Learning Needs Better Features") found that a linear model or a
small CNN on them learns far better under DP-SGD than a CNN trained end to end, because
only the few weights after them pay DP-SGD's noise.

The filters follow the usual Morlet parameters of the scattering literature (width
0.8·2^j, centre frequency 3π/4 / 2^j, an elongation of 4/L across the oscillation).
Convolutions are products in the Fourier domain on the image padded by reflection (so
borders do not wrap around), then cropped back.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import torch
from torch import nn

_SIGMA0 = 0.8
_XI0 = 3 * math.pi / 4


def scattering_channels(J: int, L: int) -> int:
    """How many maps `Scattering2D(J, L)` returns per image."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Coordinates centred on pixel 0 with wrap-around, so that a filter built on them is
    # already in the FFT's origin-first layout.
    r = torch.arange(size, dtype=torch.float64)
    r = torch.where(r > size // 2, r - size, r)
    return torch.meshgrid(r, r, indexing="ij")


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A complex Gabor filter in space: a Gaussian envelope, elongated by 1/`slant` along
    the direction orthogonal to `theta`, times a plane wave of frequency `xi` along `theta`."""
    u, v = _grid(size)
    along = u * math.cos(theta) + v * math.sin(theta)
    across = -u * math.sin(theta) + v * math.cos(theta)
    envelope = torch.exp(-(along ** 2 + (slant * across) ** 2) / (2 * sigma ** 2))
    envelope = envelope * slant / (2 * math.pi * sigma ** 2)
    return envelope * torch.exp(1j * xi * along)


def _morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A Gabor filter minus the multiple of its envelope that makes its mean zero: a
    wavelet (it sees no constant image)."""
    wave = _gabor(size, sigma, theta, xi, slant)
    envelope = _gabor(size, sigma, theta, 0.0, slant)
    return wave - (wave.sum() / envelope.sum()) * envelope


def filter_bank(size: int, J: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ψ, φ) in the Fourier domain on a `size`×`size` grid: ψ of shape (J, L, size, size),
    complex; φ of shape (size, size), real, with unit sum in space."""
    psi = torch.empty(J, L, size, size, dtype=torch.complex128)
    for j in range(J):
        for ell in range(L):
            theta = math.pi * ell / L
            psi[j, ell] = torch.fft.fft2(_morlet(size, _SIGMA0 * 2 ** j, theta, _XI0 / 2 ** j, 4.0 / L))
    phi = _gabor(size, _SIGMA0 * 2 ** J, 0.0, 0.0, 1.0).real
    phi = torch.fft.fft2(phi / phi.sum()).real
    return psi, phi


def _fold(spectrum: torch.Tensor, k: int) -> torch.Tensor:
    """The spectrum of the signal subsampled every `k` pixels: the spectrum's k×k blocks
    summed (periodised) and divided by k², so the inverse FFT on the smaller grid is the
    subsampled signal itself, at a k²-th of the cost of transforming back at full size."""
    *lead, s, _ = spectrum.shape
    # Summed as real pairs: torch's complex reductions are several times slower.
    blocks = torch.view_as_real(spectrum).reshape(*lead, k, s // k, k, s // k, 2)
    return torch.view_as_complex(blocks.sum(dim=(-5, -3)).div_(k * k).contiguous())


class Scattering2D(nn.Module):
    """The scattering transform of one-channel images of side `image_size`, to
    `scattering_channels(J, L)` maps of side ⌈image_size / 2^J⌉. No trainable weights: the
    filters are buffers left out of the state dict, so checkpoints and averaging see
    only the layers after it.

    The second-order maps are formed every 2^(J−1) pixels and every map is averaged
    straight onto the output grid, by periodising spectra (`_fold`): the outputs are those
    of the full-resolution cascade sampled on the 2^J grid, with the second order's
    modulus taken on the finer grid it needs (as in the scattering literature's
    implementations, e.g. Andreux et al. 2020, "Kymatio")."""

    def __init__(self, image_size: int, J: int = 2, L: int = 8) -> None:
        super().__init__()
        if J != 2:
            raise ValueError(f"scattering: only J = 2 is implemented, got J = {J}")
        if image_size < 2 * 2 ** J:
            raise ValueError(f"scattering: expected images of side at least {2 * 2 ** J}, got {image_size}")
        self.J, self.L, self.image_size = J, L, image_size
        step = 2 ** J
        self.side = math.ceil(image_size / step)
        # Reflection padding of about 2 widths of φ (less on small images: a reflection
        # must be shorter than the image). The left/top padding puts the output samples
        # (every 2^J pixels from the middle of the first block) on the coarse grid; the
        # right/bottom one makes the padded side divide by 2^J.
        left = max(k for k in range(step // 2, max(image_size - 1, step // 2) + 1, step)
                   if k <= max(step // 2, min(image_size - 1, math.ceil(2 * _SIGMA0 * step))))
        right = left + (-(image_size + 2 * left)) % step
        if right >= image_size:
            right -= step
        self.pad = (left, right)
        self.offset = (left + step // 2) // step   # first output sample on the coarsest grid
        size = image_size + left + right
        assert size % step == 0 and self.offset + self.side <= size // step
        psi, phi = filter_bank(size, J, L)
        # φ for maps already subsampled by 2: the spatial filter sampled every 2 pixels.
        phi_space = torch.fft.ifft2(phi.to(torch.complex128)).real[::2, ::2]
        phi_half = torch.fft.fft2(phi_space / phi_space.sum()).real
        self.register_buffer("psi", psi.to(torch.complex64), persistent=False)
        self.register_buffer("phi", phi.to(torch.float32), persistent=False)
        self.register_buffer("phi_half", phi_half.to(torch.float32), persistent=False)

    @property
    def channels(self) -> int:
        return scattering_channels(self.J, self.L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"scattering: expected images of shape (N, 1, H, W), got {tuple(x.shape)}")
        with torch.no_grad():
            return _MEMO.transform(self, x)

    def _average(self, u_hat: torch.Tensor, phi: torch.Tensor, k: int) -> torch.Tensor:
        """Low-pass the maps whose spectra are `u_hat` and sample them on the output grid."""
        out = torch.fft.ifft2(_fold(u_hat * phi, k)).real
        o = self.offset
        return out[..., o:o + self.side, o:o + self.side]

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        n, (left, right) = x.shape[0], self.pad
        padded = nn.functional.pad(x.float(), (left, right, left, right), mode="reflect")[:, 0]
        x_hat = torch.fft.fft2(padded)                                              # (N, S, S)
        s0 = self._average(x_hat, self.phi, 4).unsqueeze(1)
        u1_hat = torch.fft.fft2(torch.fft.ifft2(x_hat[:, None, None] * self.psi).abs())  # (N, J, L, S, S)
        s1 = self._average(u1_hat, self.phi, 4).reshape(n, -1, self.side, self.side)
        # Second order, j1 = 0 -> j2 = 1: |U1 ⋆ ψ_1| is formed every 2 pixels.
        u2 = torch.fft.ifft2(_fold(u1_hat[:, 0, :, None] * self.psi[None, None, 1], 2)).abs()  # (N, L, L, S/2, S/2)
        s2 = self._average(torch.fft.fft2(u2), self.phi_half, 2).reshape(n, -1, self.side, self.side)
        return torch.cat([s0, s1, s2], dim=1)


class _Memo:
    """The maps of recently seen images, in this process's memory only.

    The transform is fixed, so an image's maps never change; a site trains on the same
    images every epoch and every round (each round builds a fresh model), so after the
    first pass the front end costs a hash per image instead of a few dozen FFTs. Keyed by
    a digest of the image's bytes and the transform's settings; at most `MAX_BYTES` of
    maps (16 kB an image at 28×28), least recently used first out. Nothing here is
    written anywhere or leaves the process.
    """

    MAX_BYTES = 256 * 2 ** 20
    CHUNK_BYTES = 32 * 2 ** 20   # the largest intermediate of one batch of the transform

    def __init__(self) -> None:
        self._maps: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def clear(self) -> None:
        self._maps.clear()

    def transform(self, module: Scattering2D, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return module._transform(x)
        images = x.detach().float().cpu().contiguous().numpy()
        tag = f"{module.J}:{module.L}:{module.image_size}:".encode()
        keys = [hashlib.blake2b(tag + image.tobytes(), digest_size=16).digest() for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._maps]
        size = module.image_size + sum(module.pad)
        # The second order's L² complex maps per image dominate the working memory.
        chunk = max(1, self.CHUNK_BYTES // (8 * module.L * module.L * size * size))
        out: dict[int, torch.Tensor] = {}
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            for i, maps in zip(part, module._transform(x[part]).cpu()):
                out[i] = maps.clone()  # not a view that keeps its whole batch alive
        for i, key in enumerate(keys):
            if i in out:
                self._maps[key] = out[i]
            else:
                out[i] = self._maps[key]
                self._maps.move_to_end(key)
        per_image = out[0].numel() * out[0].element_size()
        while len(self._maps) * per_image > self.MAX_BYTES:
            self._maps.popitem(last=False)
        return torch.stack([out[i] for i in range(len(keys))]).to(x.device)


_MEMO = _Memo()
