"""From a measured G(r) back to reciprocal space: F(Q) and the powder intensity it implies.

The reduced PDF and the reduced structure function are a sine-transform pair
(Egami & Billinge, *Underneath the Bragg Peaks*, 2nd ed., eqs. 3.1 and 3.4)::

    G(r) = (2/π) ∫ F(Q) sin(Qr) dQ          F(Q) = ∫ G(r) sin(Qr) dr,   F(Q) = Q [S(Q) − 1].

For a powder, a Bragg reflection of multiplicity m and structure factor F_hkl appears in
S(Q) − 1 with weight ∝ m |F_hkl|² / (⟨f⟩² Q²) (ibid., section 3.1: S(Q) is normalised by ⟨f⟩²,
and powder averaging spreads a reciprocal-lattice point over a shell of area 4πQ²).  So

    I(Q) = Q · F(Q) · ⟨f(Q)⟩²

is, peak for peak, Σ m |F_hkl|² times a peak shape: the powder pattern *without* the
Lorentz-polarisation factor, broadened by the finite r range of the data (and by qdamp, the
particle size and Uiso exactly as the G(r) was).  The diffusion backend conditions its
pattern encoder on this (:func:`powder_intensity_from_gr`) when the observation is a PDF.

The finite r range truncates the transform; a Lorch window (Lorch, J. Phys. C 2 (1969) 229)
trades the truncation ripples for a little more broadening.
"""

from __future__ import annotations

import math

import torch

from .scattering import scattering_factor


def fq_from_gr(r, g, q, *, window: str = "lorch") -> torch.Tensor:
    """F(Q) = ∫ G(r) sin(Qr) W(r) dr on the grid ``q`` (trapezoid rule on the data's r grid).

    Parameters
    ----------
    r : array-like, shape (N,)
        Increasing r grid, Å (need not be uniform).
    g : array-like, shape (N,)
        G(r), Å⁻².
    q : array-like, shape (M,)
        Q grid, Å⁻¹.
    window : {"lorch", "none"}
        ``"lorch"``: W(r) = sinc(π r / r_max), which removes most of the truncation ripples.

    Returns
    -------
    torch.Tensor, shape (M,)
        F(Q), Å⁻¹ (float64).
    """
    r = torch.as_tensor(r, dtype=torch.float64)
    g = torch.as_tensor(g, dtype=torch.float64)
    q = torch.as_tensor(q, dtype=torch.float64)
    if r.ndim != 1 or r.shape != g.shape or len(r) < 2:
        raise ValueError(f"r and G(r) must be 1-D arrays of the same length >= 2, got {tuple(r.shape)} and "
                         f"{tuple(g.shape)}")
    if not bool((torch.diff(r) > 0).all()):
        raise ValueError("r must be strictly increasing")
    if window == "lorch":
        x = math.pi * r / r[-1]
        w = torch.where(x.abs() < 1e-12, torch.ones_like(x), torch.sin(x) / x.where(x.abs() >= 1e-12,
                                                                                   torch.ones_like(x)))
    elif window == "none":
        w = torch.ones_like(r)
    else:
        raise ValueError(f"window: must be 'lorch' or 'none', got {window!r}")
    dr = torch.diff(r)
    trap = torch.zeros_like(r)
    trap[:-1] += dr / 2
    trap[1:] += dr / 2
    return torch.sin(q[:, None] * r[None, :]) @ (g * w * trap)


def mean_scattering_factor(numbers, counts, q, radiation: str = "xray") -> torch.Tensor:
    """⟨f(Q)⟩ = Σ c_i f_i(Q) / Σ c_i over a composition (electrons, or fm for neutrons).

    Parameters
    ----------
    numbers : sequence of int
        Atomic numbers of the elements.
    counts : sequence of float
        Atoms of each element (any normalisation).
    q : array-like, shape (M,)
    radiation : {"xray", "neutron"}
    """
    q = torch.as_tensor(q, dtype=torch.float64)
    z = torch.as_tensor(list(numbers), dtype=torch.long)
    c = torch.as_tensor(list(counts), dtype=torch.float64)
    if len(z) == 0 or len(z) != len(c) or float(c.sum()) <= 0:
        raise ValueError("a composition with at least one element and positive counts is needed")
    f = scattering_factor(z, q, radiation).to(torch.float64)  # (E, M)
    return (c[:, None] * f).sum(0) / c.sum()


def powder_intensity_from_gr(r, g, q, numbers, counts, *, radiation: str = "xray",
                             window: str = "lorch") -> torch.Tensor:
    """The Lorentz-polarisation-free powder intensity I(Q) = Q F(Q) ⟨f(Q)⟩² implied by a G(r).

    Bragg peaks of the result sit where the powder pattern's do, with the intensities
    Σ m |F_hkl|² (times the Debye–Waller factor the G(r) carries); see the module docstring.
    Negative values (the diffuse and truncation parts between peaks) are kept: the caller
    decides how to baseline them.

    Parameters
    ----------
    r, g : array-like, shape (N,)
        The PDF (Å, Å⁻²).
    q : array-like, shape (M,)
        Q grid, Å⁻¹.
    numbers, counts : sequences
        Composition: atomic numbers and atom counts.
    radiation : {"xray", "neutron"}
    window : {"lorch", "none"}

    Returns
    -------
    torch.Tensor, shape (M,)
        Arbitrary units (float64).
    """
    q_t = torch.as_tensor(q, dtype=torch.float64)
    f = mean_scattering_factor(numbers, counts, q_t, radiation)
    return q_t * fq_from_gr(r, g, q_t, window=window) * f**2
