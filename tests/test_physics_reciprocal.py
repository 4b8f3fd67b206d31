"""G(r) -> F(Q) -> powder intensity: checked against pymatgen's XRDCalculator and an analytic transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffpy_diffusion.physics.reciprocal import fq_from_gr, mean_scattering_factor, powder_intensity_from_gr


def test_fq_of_a_gaussian_pdf_peak_is_its_analytic_sine_transform():
    # G(r) = exp(-(r - r0)^2 / 2s^2): F(Q) = ∫ G sin(Qr) dr = s sqrt(2π) exp(-Q²s²/2) sin(Q r0) (s ≪ r0)
    r = np.arange(0.0, 20.0, 0.005)
    r0, s = 5.0, 0.1
    g = np.exp(-((r - r0) ** 2) / (2 * s * s))
    q = np.linspace(0.5, 15, 300)
    f = fq_from_gr(r, g, q, window="none").numpy()
    ref = s * math.sqrt(2 * math.pi) * np.exp(-(q * s) ** 2 / 2) * np.sin(q * r0)
    assert np.abs(f - ref).max() < 1e-6


def test_powder_intensity_from_a_crystal_pdf_has_the_bragg_peaks_of_pymatgen():
    """Si: peaks at pymatgen's Q, heights ∝ pymatgen's intensities divided by its LP factor."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from pymatgen.core import Lattice, Structure
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.pdf import pdf_gr

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]])
    uiso = 0.005
    r = np.arange(0.01, 60.0, 0.01)
    g = pdf_gr(CrystalBatch.from_structures([si], uiso=uiso), torch.tensor(r), qmax=30.0)[0].numpy()
    q = np.linspace(1.0, 6.0, 2001)
    inten = powder_intensity_from_gr(r, g, q, [14], [1]).numpy()
    # the uncorrelated (Laue/TDS) part of S(Q) - 1 is a smooth negative baseline: take it off
    win = int(0.5 / (q[1] - q[0]))
    inten = inten - uniform_filter1d(minimum_filter1d(inten, win), win)

    lam = 0.7093
    pat = XRDCalculator(wavelength=lam, debye_waller_factors={"Si": 8 * math.pi**2 * uiso}).get_pattern(
        si, scaled=False, two_theta_range=(5, 60))
    th = np.radians(pat.x / 2)
    qk = 4 * math.pi * np.sin(th) / lam
    lp = (1 + np.cos(2 * th) ** 2) / (np.sin(th) ** 2 * np.cos(th))
    keep = qk < 5.9
    qk, ref = qk[keep], (pat.y / lp)[keep]
    assert len(qk) == 6  # 111 220 311 400 331 422
    heights, positions = [], []
    for qq in qk:
        near = np.abs(q - qq) < 0.08
        heights.append(inten[near].max())
        positions.append(q[near][np.argmax(inten[near])])
    assert np.abs(np.array(positions) - qk).max() < 0.005
    heights = np.array(heights) / max(heights)
    np.testing.assert_allclose(heights, ref / ref.max(), atol=0.03)


def test_mean_scattering_factor_and_bad_input():
    q = torch.tensor([0.0])
    f = mean_scattering_factor([11, 17], [1, 1], q)
    assert float(f[0]) == pytest.approx((11 + 17) / 2, abs=0.2)  # f0(0) ≈ Z
    with pytest.raises(ValueError, match="composition"):
        mean_scattering_factor([], [], q)
    with pytest.raises(ValueError, match="increasing"):
        fq_from_gr([2.0, 1.0], [0.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="window"):
        fq_from_gr([1.0, 2.0], [0.0, 0.0], [1.0], window="hann")
