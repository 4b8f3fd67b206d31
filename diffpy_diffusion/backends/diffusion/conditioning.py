"""Conditioning: a canonical pattern representation, its on-the-fly simulation, and its encoder.

**Canonical representation.**  Any PXRD pattern (2θ at any wavelength, or Q) is mapped to a
fixed grid Q = 0 … 8.15 Å⁻¹ (PXRDnet's range, :data:`Q_GRID_POINTS` points), linearly
interpolated, zero outside the measured range, baseline-shifted to min 0 and divided by its
maximum.  Two channels go to the encoder: y and √y (the square root lifts weak peaks).
An optional third channel holds a PDF G(r) on r = 0 … 20 Å (normalised by its max |G|); it is
zero when there is none.  (The shipped weights were trained on PXRD only, so a PDF observation
is sampled with the pattern condition dropped and relies on physics guidance.)

**Training patterns** are made on the fly from each structure's precomputed reflection list
(``data.reflections``: Q and Σ|F|² per Q bin): random crystallite size 1–20 nm (Scherrer
FWHM_Q = 2πK/L, K = 0.9), instrument width, pseudo-Voigt mixing, Debye–Waller damping exp(−U Q²),
Lorentz–polarisation for a random wavelength, zero shift in 2θ, a random measured range,
smooth background and noise.  All in torch on the training device.

**Encoder**: a 1-D CNN over the grid → a vector; with probability ``p_uncond`` in training the
vector is replaced by a learned "no pattern" embedding (classifier-free guidance).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

Q_GRID_MAX = 8.15  # Å⁻¹
Q_GRID_POINTS = 512
R_GRID_MAX = 20.0  # Å
N_CHANNELS = 3  # y, sqrt(y), G(r)


def q_grid(device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The canonical Q grid, Å⁻¹."""
    return torch.linspace(0.0, Q_GRID_MAX, Q_GRID_POINTS, device=device, dtype=dtype)


def _normalise(y: np.ndarray) -> np.ndarray:
    y = np.nan_to_num(np.asarray(y, float))
    y = y - y.min()
    mx = y.max()
    return y / mx if mx > 0 else y


def canonical_pattern(observation) -> np.ndarray:
    """Map an :class:`~diffpy_diffusion.types.Observation` to the encoder input (N_CHANNELS, M).

    PXRD: Q = 4π sin θ / λ (from 2θ and the Kα1 wavelength) → Q grid, normalised, y and √y.
    PDF: G(r) resampled on 0–20 Å into channel 2 (the XRD channels stay zero).
    """
    out = np.zeros((N_CHANNELS, Q_GRID_POINTS), dtype=np.float32)
    if observation.kind == "xrd":
        q = observation.q()
        order = np.argsort(q)
        q, y = q[order], np.asarray(observation.y, float)[order]
        grid = np.linspace(0, Q_GRID_MAX, Q_GRID_POINTS)
        yy = np.interp(grid, q, _normalise(y), left=0.0, right=0.0)
        yy[(grid < q.min()) | (grid > q.max())] = 0.0
        yy = _normalise(yy)
        out[0] = yy
        out[1] = np.sqrt(yy)
    else:
        r = np.asarray(observation.x, float)
        g = np.asarray(observation.y, float)
        grid = np.linspace(0, R_GRID_MAX, Q_GRID_POINTS)
        gg = np.interp(grid, r, g, left=0.0, right=0.0)
        mx = np.abs(gg).max()
        out[2] = gg / mx if mx > 0 else gg
    return out


def simulate_training_patterns(refl_q, refl_i, refl_mask, generator=None, *, size_nm_range=(1.0, 20.0)):
    """Random realistic patterns (B, N_CHANNELS, M) from reflection lists, in torch.

    Parameters
    ----------
    refl_q : Tensor (B, K)
        Reflection positions Q, Å⁻¹ (padding anywhere, masked).
    refl_i : Tensor (B, K)
        Σ|F|² per reflection (no LP, no Debye–Waller), any scale.
    refl_mask : Tensor (B, K) bool
    """
    dev = refl_q.device
    B = refl_q.shape[0]

    def U(lo, hi, shape=(B,)):
        return lo + (hi - lo) * torch.rand(shape, device=dev, generator=generator)

    grid = q_grid(dev)
    # wavelength: 60 % lab Cu, 15 % Mo, 10 % Co, 15 % synchrotron 0.1–0.8 Å
    u = torch.rand(B, device=dev, generator=generator)
    lam = torch.where(u < 0.6, torch.full_like(u, 1.5406), torch.where(u < 0.75, torch.full_like(u, 0.7093),
                      torch.where(u < 0.85, torch.full_like(u, 1.789), U(0.1, 0.8))))
    # 2θ range measured; Q limits of the pattern
    tth_max = U(60.0, 150.0)
    qmax = (4 * math.pi * torch.sin(torch.deg2rad(tth_max) / 2) / lam).clamp(max=Q_GRID_MAX)
    qmin = U(0.0, 1.2)
    # zero shift in 2θ moves every reflection: Q' = 4π sin((2θ + δ)/2)/λ
    s = (refl_q * lam[:, None] / (4 * math.pi)).clamp(max=1.0)
    tth = 2 * torch.asin(s)
    dz = torch.deg2rad(U(-0.15, 0.15))[:, None] * (torch.rand(B, 1, device=dev, generator=generator) < 0.7)
    tth_s = (tth + dz).clamp(1e-4, math.pi - 1e-4)
    q = 4 * math.pi * torch.sin(tth_s / 2) / lam[:, None]
    valid = refl_mask & (s < 0.999)
    # intensities: Debye–Waller, Lorentz–polarisation (on for 80 %)
    uiso = U(0.002, 0.03)
    inten = refl_i * torch.exp(-uiso[:, None] * refl_q**2)
    th = tth_s / 2
    lp = (1 + torch.cos(2 * th) ** 2) / (torch.sin(th) ** 2 * torch.cos(th)).clamp(min=1e-4)
    use_lp = (torch.rand(B, 1, device=dev, generator=generator) < 0.8).float()
    inten = inten * (use_lp * lp + (1 - use_lp)) * valid
    # profile: Scherrer size (log-uniform 1–20 nm) ⊕ instrument, pseudo-Voigt
    lo, hi = size_nm_range
    size_A = 10.0 * torch.exp(U(math.log(lo), math.log(hi)))
    fw_size = 2 * math.pi * 0.9 / size_A
    fw_inst = U(0.005, 0.04)
    fwhm = (fw_size**2 + fw_inst**2).sqrt()[:, None, None]  # (B,1,1)
    eta = U(0.0, 1.0)[:, None, None]
    dq = grid[None, None, :] - q[:, :, None]  # (B,K,M)
    g = torch.exp(-4 * math.log(2) * dq**2 / fwhm**2)
    lor = 1 / (1 + 4 * dq**2 / fwhm**2)
    prof = (eta * lor + (1 - eta) * g) / fwhm  # area-normalised up to a constant
    y = torch.einsum("bk,bkm->bm", inten, prof)
    y = y / y.amax(1, keepdim=True).clamp(min=1e-12)
    # background: smooth decaying + broad hump, up to 30 % of max
    bg = U(0, 0.15)[:, None] * torch.exp(-grid[None] / U(0.5, 4.0)[:, None]) + U(0, 0.15)[:, None] * torch.exp(
        -((grid[None] - U(1.0, 3.0)[:, None]) ** 2) / U(0.2, 1.5)[:, None]
    ) + U(0, 0.05)[:, None]
    bg = bg * (torch.rand(B, 1, device=dev, generator=generator) < 0.7)
    noise = U(0.0, 0.03)[:, None] * torch.randn(y.shape, device=dev, generator=generator) * (y + bg + 0.05).sqrt()
    y = y + bg + noise
    inside = (grid[None] >= qmin[:, None]) & (grid[None] <= qmax[:, None])
    y = torch.where(inside, y, torch.zeros_like(y))
    ymin = torch.where(inside, y, torch.full_like(y, float("inf"))).amin(1, keepdim=True)
    y = torch.where(inside, y - ymin, torch.zeros_like(y)).clamp(min=0)
    y = y / y.amax(1, keepdim=True).clamp(min=1e-12)
    return torch.stack([y, y.sqrt(), torch.zeros_like(y)], dim=1)


class PatternEncoder(nn.Module):
    """1-D CNN: (B, N_CHANNELS, 512) → (B, out_dim); 6 stride-2 stages then a linear head."""

    def __init__(self, out_dim: int = 256, width: int = 64):
        super().__init__()
        chans = [N_CHANNELS, width // 2, width, width, 2 * width, 2 * width, 2 * width]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(cin, cout, 5, stride=2, padding=2), nn.GroupNorm(8, cout), nn.SiLU()]
        self.conv = nn.Sequential(*layers)
        n_out = Q_GRID_POINTS // 2 ** (len(chans) - 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * n_out, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.null = nn.Parameter(torch.zeros(out_dim))  # the "no pattern" condition

    def forward(self, pattern: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Encode; rows where ``drop`` is True get the learned null embedding."""
        c = self.head(self.conv(pattern))
        if drop is not None:
            c = torch.where(drop[:, None], self.null.to(c.dtype).expand_as(c), c)
        return c
