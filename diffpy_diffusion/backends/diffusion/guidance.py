"""Physics guidance: pull the last part of the reverse process toward the observed pattern.

At a late reverse step the current sample is nearly a crystal.  We simulate its PXRD pattern
on the canonical Q grid with the same profile model the network was trained with
(:mod:`.conditioning`), fit the scale in closed form (s = ⟨y_obs, y_calc⟩ / ⟨y_calc, y_calc⟩
over the measured range), and take the gradient of the normalised misfit

    χ = Σ (y_obs − s·y_calc)² / Σ y_obs²

with respect to the fractional coordinates and the (normalised) lattice; the sampler adds
``−step · ∇χ`` (gradient normalised per crystal) to its update.  Reflections are enumerated
by :func:`physics.xrd.reflections` from the current lattice (pymatgen's XRDCalculator form-factor
coefficients, as the training reflection lists) and put on the grid by
:func:`physics.canonical.sticks_pattern_q`, so every step is differentiable.  PDF observations
are guided with :func:`physics.pdf.pdf_gr` when available.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...physics.canonical import combined_fwhm_q, pv_area_fraction, sticks_pattern_q
from ...physics.crystal import CrystalBatch
from ...physics.scattering import xray_form_factor
from ...physics.xrd import lorentz_polarization, reflections
from .conditioning import Q_GRID_MAX, Q_GRID_POINTS, TRAIN_LP_MAX, q_grid

#: Cap on the Lorentz-polarisation factor (as in training, :data:`.conditioning.TRAIN_LP_MAX`).
_LP_MAX = TRAIN_LP_MAX
#: Reflections beyond 2θ ≈ 175° (sin θ = 0.999) get the LP factor of that angle, which stays finite.
_MAX_SIN_THETA = 0.999


def simulate_canonical(lattice, frac, numbers, mask, *, q_max: float, size_nm: float = 10.0,
                       wavelength: float | None = 1.5406, uiso: float = 0.01, eta: float = 0.5,
                       inst_fwhm: float = 0.02) -> torch.Tensor:
    """PXRD on the canonical Q grid (B, M), max-normalised, differentiable in lattice (Å) and frac.

    Parameters
    ----------
    lattice : Tensor (B, 3, 3)
        Lattice vectors as rows, Å.
    frac : Tensor (B, N, 3)
        Fractional coordinates.
    numbers, mask : Tensor (B, N)
        Atomic numbers and real-atom mask.
    q_max : float
        Largest Q of the reflections, Å⁻¹.
    size_nm, inst_fwhm : float
        Crystallite size (nm) and instrument FWHM in Q (Å⁻¹).
    wavelength : float or None
        Å, for the Lorentz-polarisation factor (None: none).
    uiso : float
        Debye–Waller Uiso of every atom, Å².
    eta : float
        Lorentzian fraction of the peak height (the training convention, see
        :func:`physics.canonical.pv_area_fraction`).
    """
    batch = CrystalBatch.from_padded(lattice, frac, numbers, mask, uiso=uiso)
    # pymatgen's form-factor table, as the training reflection lists; not merged when autograd is on
    refl = reflections(batch, q_max, table="pymatgen")
    inten = refl.intensity
    if wavelength:
        s = (refl.q * wavelength / (4 * math.pi)).clamp(max=_MAX_SIN_THETA)
        inten = inten * lorentz_polarization(torch.asin(s)).clamp(max=_LP_MAX)
    fw = float(combined_fwhm_q(size_nm, inst_fwhm))
    grid = q_grid(lattice.device, inten.dtype)
    y = sticks_pattern_q(refl.q, inten, refl.crystal, refl.num_crystals, grid, fwhm=fw,
                         eta=float(pv_area_fraction(eta)))
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
        # fail here, not in the middle of sampling, for an element without form-factor coefficients
        xray_form_factor(torch.as_tensor(sorted(set(int(z) for z in species))), torch.zeros(1), table="pymatgen")

    def __call__(self, lattice: torch.Tensor, frac: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor):
        lat = lattice.detach().float().requires_grad_(True)
        fr = frac.detach().float().requires_grad_(True)
        with torch.enable_grad():
            y = simulate_canonical(lat, fr, numbers, mask, q_max=self.q_max, size_nm=self.size_nm,
                                   wavelength=self.wavelength)
            chi = misfit(y, self.y_obs, self.inside)
            # a cell too small to have a reflection up to q_max leaves frac out of the graph: zero gradient
            g_l, g_f = torch.autograd.grad(chi.sum(), (lat, fr), allow_unused=True)
        g_l = torch.zeros_like(lat) if g_l is None else g_l
        g_f = torch.zeros_like(fr) if g_f is None else g_f
        return chi.detach(), torch.nan_to_num(g_f), torch.nan_to_num(g_l)


def canonical_q_range(observation) -> tuple[float, float]:
    """The Q range (Å⁻¹) the observation covers on the canonical grid."""
    q = observation.q()
    return float(max(q.min(), 0.0)), float(min(q.max(), Q_GRID_MAX))


__all__ = ["PhysicsGuide", "simulate_canonical", "misfit", "canonical_q_range", "Q_GRID_POINTS"]
