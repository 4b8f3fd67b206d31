"""Powder patterns on a uniform Q grid from peak lists: the cheap renderers of learned models.

A diffusion model is trained on, and guided with, patterns on one fixed Q grid
(Å⁻¹).  These functions put Bragg peaks -- from :func:`.xrd.reflections` or a
cached list of (Q, Σ|F|²) -- on such a grid, with the physics of :mod:`.xrd`
(Lorentz-polarisation :func:`.xrd.lorentz_polarization`, Debye–Waller
:func:`.xrd.debye_waller`, Scherrer width :func:`.xrd.size_fwhm_q`, pseudo-Voigt
:func:`.xrd.pseudo_voigt`) and one simplification that keeps them cheap: every
peak of a pattern has the same pseudo-Voigt, whose FWHM is the size width and an
instrument width (both in Q) added in quadrature -- exact for two Gaussians, an
approximation of the Voigt otherwise; the accurate profile is
:func:`.xrd.xrd_profile`.

* :func:`powder_pattern_q`: a padded peak list per pattern, per-pattern
  wavelength, zero shift, Uiso, size, widths; a dense (B, K, M) evaluation, for
  the K ≤ a few hundred merged peaks of training data.
* :func:`sticks_pattern_q`: a flat peak list (any length, differentiable in Q
  and intensity) deposited on the grid and convolved with one truncated
  pseudo-Voigt kernel: O(R + B·M·kernel), for the thousands of unmerged
  reflections of a crystal whose lattice and coordinates carry gradients.
"""

from __future__ import annotations

import math

import torch

from . import xrd

_FOUR_PI = 4.0 * math.pi
#: Area of a peak-height-1 Lorentzian / its FWHM (π/2) and of a peak-height-1 Gaussian / its FWHM.
_L_AREA = math.pi / 2
_G_AREA = 0.5 * math.sqrt(math.pi / math.log(2))


def pv_area_fraction(eta_height) -> torch.Tensor:
    """Lorentzian area fraction of the pseudo-Voigt ``η_h L̂ + (1 − η_h) Ĝ`` mixed at peak height.

    ``L̂`` and ``Ĝ`` are a Lorentzian and a Gaussian of the same FWHM and of
    height 1; the mixture is proportional to the unit-area pseudo-Voigt of
    :func:`.xrd.pseudo_voigt` with the returned ``η``.

    Parameters
    ----------
    eta_height : float or torch.Tensor
        Lorentzian fraction of the peak height, 0 … 1.
    """
    e = torch.as_tensor(eta_height)
    return e * _L_AREA / (e * _L_AREA + (1 - e) * _G_AREA)


def combined_fwhm_q(size_nm, inst_fwhm_q=0.0, *, shape_factor: float = 0.9) -> torch.Tensor:
    """Peak FWHM in Q (Å⁻¹): Scherrer size width and instrument width added in quadrature.

    Parameters
    ----------
    size_nm : float or torch.Tensor
        Crystallite size, nm (:func:`.xrd.size_fwhm_q`).
    inst_fwhm_q : float or torch.Tensor
        Instrument FWHM in Q, Å⁻¹ (Q-independent here).
    shape_factor : float
        Scherrer constant K.
    """
    fw = xrd.size_fwhm_q(size_nm, shape_factor)
    return torch.sqrt(fw * fw + torch.as_tensor(inst_fwhm_q, dtype=fw.dtype, device=fw.device) ** 2)


def _column(v, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Scalar or (B,) value -> (B, 1) tensor of ``like``'s dtype and device."""
    t = torch.as_tensor(v, device=like.device)
    if t.dtype != torch.bool:
        t = t.to(like.dtype)
    return t.reshape(-1, 1).expand(batch, 1)


def powder_pattern_q(
    q: torch.Tensor,
    intensity: torch.Tensor,
    grid: torch.Tensor,
    *,
    wavelength,
    size_nm,
    inst_fwhm_q=0.0,
    eta=0.5,
    mask: torch.Tensor | None = None,
    zero_shift_deg=0.0,
    uiso=0.0,
    lorentz_polarization=True,
    lp_max: float | None = None,
    shape_factor: float = 0.9,
    max_sin_theta: float = 0.999,
) -> torch.Tensor:
    """Patterns of B padded peak lists on a Q grid, one set of measurement settings per pattern.

    Every scalar-or-(B,) setting is per pattern.  Peak ``k`` of pattern ``b`` at
    ``q[b, k]`` is seen at the 2θ that ``wavelength[b]`` gives it plus the zero
    shift, i.e. at ``Q' = 4π sin((2θ + δ)/2)/λ``; its intensity is multiplied by
    the Debye–Waller factor at ``q`` and the Lorentz-polarisation factor at θ
    (the zero shift offsets the 2θ scale, not the scattering: as
    :func:`.xrd.xrd_profile`), and it is drawn as a unit-area pseudo-Voigt of
    FWHM :func:`combined_fwhm_q`.

    Parameters
    ----------
    q : torch.Tensor, shape (B, K)
        Peak positions Q, Å⁻¹ (padding anywhere, see ``mask``).
    intensity : torch.Tensor, shape (B, K)
        Σ|F|² of each peak (no LP, no Debye–Waller), any scale.
    grid : torch.Tensor, shape (M,)
        Q grid, Å⁻¹.
    wavelength : float or (B,) tensor
        Å.
    size_nm : float or (B,) tensor
        Crystallite size (Scherrer, constant ``shape_factor``), nm.
    inst_fwhm_q : float or (B,) tensor
        Instrument FWHM in Q, Å⁻¹.
    eta : float or (B,) tensor
        Lorentzian area fraction of the pseudo-Voigt.
    mask : torch.Tensor, shape (B, K), bool, optional
        Real peaks (default: all).
    zero_shift_deg : float or (B,) tensor
        Zero shift δ in degrees 2θ.
    uiso : float or (B,) tensor
        Isotropic displacement parameter of every atom, Å².
    lorentz_polarization : bool or (B,) bool tensor
        Apply the Lorentz-polarisation factor (per pattern).
    lp_max : float, optional
        Cap on the Lorentz-polarisation factor, which diverges at 2θ → 0 (a
        peak moved there by a short wavelength or a zero shift would otherwise
        dominate the pattern).
    shape_factor : float
        Scherrer constant K.
    max_sin_theta : float
        Peaks with sin θ ≥ this at their wavelength are dropped (2θ → 180°,
        where the Lorentz-polarisation factor diverges too).

    Returns
    -------
    torch.Tensor, shape (B, M)
        Intensity per Å⁻¹ (unit-area peaks times their intensities).
    """
    B = q.shape[0]
    lam = _column(wavelength, B, q)
    s = (q * lam / _FOUR_PI).clamp(max=1.0)
    theta = torch.asin(s)
    # observed 2θ after the zero shift, kept inside (0, π) so that Q' stays on the Ewald sphere
    two_theta = (2 * theta + torch.deg2rad(_column(zero_shift_deg, B, q))).clamp(1e-4, math.pi - 1e-4)
    q_obs = _FOUR_PI * torch.sin(two_theta / 2) / lam
    valid = s < max_sin_theta
    if mask is not None:
        valid = valid & mask
    inten = intensity * xrd.debye_waller(q, _column(uiso, B, q))
    use_lp = _column(lorentz_polarization, B, q)
    if bool(use_lp.any()):
        lp = xrd.lorentz_polarization(theta.clamp(min=5e-5))  # at the true angle; θ > 0 keeps it finite
        if lp_max is not None:
            lp = lp.clamp(max=lp_max)
        inten = inten * torch.where(use_lp.bool(), lp, torch.ones_like(lp))
    inten = torch.where(valid, inten, torch.zeros_like(inten))
    fwhm = combined_fwhm_q(_column(size_nm, B, q), _column(inst_fwhm_q, B, q), shape_factor=shape_factor)
    prof = xrd.pseudo_voigt(grid[None, None, :] - q_obs[:, :, None], fwhm[:, :, None], _column(eta, B, q)[:, :, None])
    return torch.bmm(inten[:, None, :], prof)[:, 0]


def sticks_pattern_q(
    q: torch.Tensor,
    intensity: torch.Tensor,
    crystal: torch.Tensor,
    num_crystals: int,
    grid: torch.Tensor,
    *,
    fwhm: float,
    eta: float,
    window: float = 4.0,
) -> torch.Tensor:
    """Patterns of a flat peak list on a uniform Q grid, every peak the same pseudo-Voigt.

    Each peak is deposited on its two neighbouring grid points (linear weights,
    differentiable in ``q``), then the stick patterns are convolved with the
    unit-area pseudo-Voigt sampled on the grid within ± ``window`` FWHM.
    Peaks outside the grid are dropped.

    Parameters
    ----------
    q, intensity : torch.Tensor, shape (R,)
        Peak positions (Å⁻¹) and intensities (LP and Debye–Waller included).
    crystal : torch.LongTensor, shape (R,)
        Pattern index of each peak, 0 … ``num_crystals`` − 1.
    num_crystals : int
    grid : torch.Tensor, shape (M,)
        Uniform Q grid, Å⁻¹.
    fwhm : float
        FWHM in Q, Å⁻¹ (:func:`combined_fwhm_q`).
    eta : float
        Lorentzian area fraction.
    window : float
        Kernel half-width in units of the FWHM (truncates Lorentzian tails).

    Returns
    -------
    torch.Tensor, shape (num_crystals, M)
        Intensity per Å⁻¹.
    """
    M = grid.numel()
    dq = float(grid[1] - grid[0])
    pos = (q - float(grid[0])) / dq
    inside = (pos >= 0) & (pos <= M - 1)
    pos = pos.clamp(0, M - 1.001)  # keeps i0 + 1 on the grid
    i0 = pos.floor().long().detach()
    w = pos - i0
    inten = torch.where(inside, intensity, torch.zeros_like(intensity))
    flat = crystal * M + i0
    sticks = intensity.new_zeros(num_crystals * M)
    sticks = sticks.index_add(0, flat, inten * (1 - w)).index_add(0, flat + 1, inten * w)
    half = int(min(M - 1, math.ceil(window * float(fwhm) / dq)))
    x = torch.arange(-half, half + 1, device=q.device, dtype=intensity.dtype) * dq
    kern = xrd.pseudo_voigt(x, float(fwhm), float(eta))
    return torch.nn.functional.conv1d(sticks.view(num_crystals, 1, M), kern.flip(0)[None, None], padding=half)[:, 0]


__all__ = ["combined_fwhm_q", "powder_pattern_q", "pv_area_fraction", "sticks_pattern_q"]
