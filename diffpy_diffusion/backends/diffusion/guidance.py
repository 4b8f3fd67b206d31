"""Physics guidance: pull the last part of the reverse process toward the observed pattern.

At a late reverse step the current sample is nearly a crystal.  We simulate its PXRD pattern
on the canonical Q grid with the same profile model the network was trained with
(:mod:`.conditioning`), fit the scale in closed form (s = ⟨y_obs, y_calc⟩ / ⟨y_calc, y_calc⟩
over the measured range), and take the gradient of the normalised misfit

    χ = Σ (y_obs − s·y_calc)² / Σ y_obs²

with respect to the fractional coordinates and the (normalised) lattice; the sampler adds
``−step · ∇χ`` (gradient normalised per crystal) to its update.  Reflections are enumerated
in torch from the current lattice, structure factors use the form-factor table of
:func:`data.xray_form_factor_table` (pymatgen's XRDCalculator coefficients), so every step is
differentiable.  PDF observations are guided with :func:`physics.pdf.pdf_gr` when available.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .conditioning import Q_GRID_MAX, Q_GRID_POINTS, q_grid

_FF_DQ = 0.01


class FormFactorTable:
    """f(Z, Q) on a 0–8.3 Å⁻¹ table, linearly interpolated (differentiable in Q)."""

    def __init__(self, species):
        from .data import xray_form_factor_table

        self.species = np.asarray(sorted(set(int(z) for z in species)))
        q = np.arange(0, 8.3 + _FF_DQ, _FF_DQ)
        self.table = torch.as_tensor(xray_form_factor_table(self.species, q), dtype=torch.float32)  # (S, T)

    def index(self, numbers: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.searchsorted(self.species, numbers.cpu().numpy()), device=numbers.device)

    def __call__(self, sidx: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Form factors of species indices ``sidx`` (B,N) at Q (B,K) -> (B,K,N)."""
        x = (q / _FF_DQ).clamp(0, self.table.shape[1] - 2)
        i0 = x.floor().long().detach()
        w = x - i0
        tab = self.table[sidx]  # (B,N,T)
        idx = i0[:, None, :].expand(-1, tab.shape[1], -1)
        f0 = torch.gather(tab, 2, idx)
        f1 = torch.gather(tab, 2, idx + 1)
        return (f0 + (f1 - f0) * w[:, None, :]).transpose(1, 2)


def hkl_set(lattice: torch.Tensor, q_max: float) -> torch.Tensor:
    """Integer (h, k, l) covering |G| ≤ q_max for every lattice in the batch, one half-space (Friedel)."""
    with torch.no_grad():
        hmax = torch.floor(q_max * lattice.norm(dim=-1) / (2 * math.pi)).amax(0).long().clamp(max=12).tolist()
    r = [torch.arange(-m, m + 1) for m in hmax]
    hkl = torch.stack(torch.meshgrid(*r, indexing="ij"), -1).reshape(-1, 3)
    # keep one of each Friedel pair (first nonzero index positive); weight 2 below
    first = torch.where(hkl[:, 0] != 0, hkl[:, 0], torch.where(hkl[:, 1] != 0, hkl[:, 1], hkl[:, 2]))
    return hkl[first > 0].to(lattice.dtype)


def simulate_canonical(lattice, frac, sidx, mask, fft: FormFactorTable, *, q_max: float, size_nm: float = 10.0,
                       wavelength: float | None = 1.5406, uiso: float = 0.01, eta: float = 0.5,
                       inst_fwhm: float = 0.02) -> torch.Tensor:
    """PXRD on the canonical Q grid (B, M), max-normalised, differentiable in lattice (Å) and frac."""
    dev = lattice.device
    hkl = hkl_set(lattice, q_max).to(dev)
    recip = 2 * math.pi * torch.linalg.inv(lattice).transpose(1, 2)  # rows b_i
    g = torch.einsum("kj,bji->bki", hkl, recip)  # (B,K,3)
    q = g.norm(dim=-1)  # (B,K)
    keep = (q <= q_max) & (q > 1e-6)
    qc = q.clamp(max=Q_GRID_MAX + 0.1)
    f = fft(sidx, qc) * mask[:, None, :]  # (B,K,N)
    phase = 2 * math.pi * torch.einsum("kj,bnj->bkn", hkl, frac)
    re = (f * torch.cos(phase)).sum(-1)
    im = (f * torch.sin(phase)).sum(-1)
    inten = 2 * (re**2 + im**2) * torch.exp(-uiso * qc**2) * keep
    if wavelength:
        s = (qc * wavelength / (4 * math.pi)).clamp(max=0.999)
        th = torch.asin(s)
        inten = inten * (1 + torch.cos(2 * th) ** 2) / (torch.sin(th) ** 2 * torch.cos(th)).clamp(min=1e-4)
    fw = math.sqrt((2 * math.pi * 0.9 / (10 * size_nm)) ** 2 + inst_fwhm**2)
    # sticks onto the grid by linear interpolation (differentiable in Q), then one conv with the profile:
    # O(B·K + B·M·kernel) instead of a dense (B, K, M) profile
    M = Q_GRID_POINTS
    dqg = Q_GRID_MAX / (M - 1)
    pos = (qc / dqg).clamp(0, M - 1.001)
    i0 = pos.floor().long().detach()
    w = pos - i0
    sticks = torch.zeros(lattice.shape[0], M + 1, device=dev, dtype=inten.dtype)
    sticks = sticks.scatter_add(1, i0, inten * (1 - w)).scatter_add(1, i0 + 1, inten * w)[:, :M]
    half = int(min(M - 1, math.ceil(4 * fw / dqg)))
    x = torch.arange(-half, half + 1, device=dev, dtype=inten.dtype) * dqg
    kern = eta / (1 + 4 * x**2 / fw**2) + (1 - eta) * torch.exp(-4 * math.log(2) * x**2 / fw**2)
    y = torch.nn.functional.conv1d(sticks[:, None], kern[None, None], padding=half)[:, 0]
    return y / y.amax(1, keepdim=True).clamp(min=1e-12).detach()


def misfit(y_calc: torch.Tensor, y_obs: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """χ per crystal with the scale solved in closed form (least squares)."""
    yc = y_calc * inside
    yo = (y_obs * inside).expand_as(yc)
    s = (yc * yo).sum(-1) / (yc * yc).sum(-1).clamp(min=1e-12)
    return ((yo - s[:, None] * yc) ** 2).sum(-1) / (yo**2).sum(-1).clamp(min=1e-12)


class PhysicsGuide:
    """Callable used by the sampler: returns ∇χ w.r.t. (frac, lattice in Å) and χ itself."""

    def __init__(self, y_obs: np.ndarray, species, *, size_nm: float | None, wavelength: float | None,
                 q_range: tuple[float, float]):
        self.y_obs = torch.as_tensor(y_obs, dtype=torch.float32)[None]
        grid = q_grid()
        self.inside = ((grid >= q_range[0]) & (grid <= q_range[1])).float()[None]
        self.q_max = float(min(q_range[1], Q_GRID_MAX))
        self.size_nm = float(size_nm) if size_nm else 10.0
        self.wavelength = wavelength
        self.fft = FormFactorTable(list(species))

    def __call__(self, lattice: torch.Tensor, frac: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor):
        lat = lattice.detach().float().requires_grad_(True)
        fr = frac.detach().float().requires_grad_(True)
        with torch.enable_grad():
            y = simulate_canonical(lat, fr, self.fft.index(numbers), mask.float(), self.fft, q_max=self.q_max,
                                   size_nm=self.size_nm, wavelength=self.wavelength)
            chi = misfit(y, self.y_obs, self.inside)
            g_l, g_f = torch.autograd.grad(chi.sum(), (lat, fr))
        return chi.detach(), torch.nan_to_num(g_f), torch.nan_to_num(g_l)


def canonical_q_range(observation) -> tuple[float, float]:
    """The Q range (Å⁻¹) the observation covers on the canonical grid."""
    q = observation.q()
    return float(max(q.min(), 0.0)), float(min(q.max(), Q_GRID_MAX))


__all__ = ["PhysicsGuide", "simulate_canonical", "misfit", "canonical_q_range", "Q_GRID_POINTS"]
