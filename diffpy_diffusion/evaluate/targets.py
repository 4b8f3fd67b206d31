"""Evaluation targets made by other routes than :func:`~diffpy_diffusion.evaluate.protocol.simulate_target`.

Two simulators of evaluation data, so that the model is not judged only on the forward model
it screens with:

- :func:`simulate_pdf_target` -- the G(r) of a spherical nanoparticle of the target's crystal:
  the atoms of a sphere cut from the crystal (:func:`~diffpy_diffusion.physics.debye.cut_sphere`),
  their pair sum (the Debye scattering equation in real space,
  :func:`~diffpy_diffusion.physics.debye.debye_gr`), band-limited to ``Qmax`` as a measured PDF is,
  plus noise band-limited the same way (issue 18's evaluation mode).
- :func:`simulate_pymatgen_target` -- a PXRD pattern from pymatgen's ``XRDCalculator`` peak list
  (its own structure factors and Lorentz-polarisation factor) broadened with Scherrer Gaussians,
  on the protocol's Q grid (issue 17's "patterns simulated by an independent code").

Both return an :class:`~diffpy_diffusion.types.Observation` ready for
:func:`diffpy_diffusion.pipeline.propose`.
"""

from __future__ import annotations

import math

import numpy as np

from ..physics.pdf import band_limit
from ..types import Observation
from .conventions import N_Q, NOISE, Q_MAX_GRID, TWO_THETA_MAX, UISO, WAVELENGTH

#: PDF evaluation conditions (issue 18): Qmax and Qdamp in Å⁻¹, as a typical rapid-acquisition
#: x-ray PDF (PDFgetX3 files of the acceptance suite have Qmax 25-27 Å⁻¹, Qdamp 0.03-0.06 Å⁻¹).
PDF_QMAX = 20.0
PDF_QDAMP = 0.04
#: r grid of the PDF targets (Å): 1-30 Å in steps of 0.01 Å, the PDFgetX3 default ``rstep``.
PDF_R_RANGE = (1.0, 30.0, 0.01)
#: Standard deviation of the noise added to G(r), as a fraction of max |G(r)| on the grid.  The
#: noise is white noise band-limited to Qmax (then rescaled to this standard deviation), so it is
#: correlated over ~π/Qmax like the noise of a G(r) transformed from measured F(Q).
PDF_NOISE = 5e-3
#: Particle diameter of the PDF targets when none is given (nm): issue 18's main acceptance size.
PDF_DEFAULT_SIZE_NM = 5.0
#: Scherrer constant of the independent PXRD simulator (spherical crystallites, FWHM definition).
SCHERRER_K = 0.9


def simulate_pdf_target(structure, size_nm: float = PDF_DEFAULT_SIZE_NM, *, seed: int = 0, qmax: float = PDF_QMAX,
                        qdamp: float = PDF_QDAMP, r_range: tuple[float, float, float] = PDF_R_RANGE,
                        noise: float = PDF_NOISE, uiso: float = UISO) -> Observation:
    """G(r) of a spherical nanoparticle of ``structure`` as a measured x-ray .gr would give it.

    Parameters
    ----------
    structure : pymatgen.core.Structure
        The crystal; the particle is the sphere of diameter ``size_nm`` centred on its first
        atom (:func:`~diffpy_diffusion.physics.debye.cut_sphere`).
    size_nm : float
        Particle diameter, nm.
    seed : int
        Seed of the noise.
    qmax, qdamp : float
        Termination and resolution damping, Å⁻¹ (``exp(-(qdamp·r)²/2)``, PDFgui's convention).
    r_range : (float, float, float)
        ``(rmin, rmax, rstep)`` of the returned grid, Å.
    noise : float
        Standard deviation of the (band-limited) noise as a fraction of max |G(r)| on the grid.
    uiso : float
        Isotropic displacement of every atom, Å².

    Returns
    -------
    Observation
        ``kind="pdf"``, x-ray, with ``qmax``, ``qdamp`` and ``size_nm`` set as a .gr header and
        the user would give them; ``meta`` records the atoms of the cluster and the settings.
    """
    import torch

    from ..physics.debye import cut_sphere, debye_gr

    rmin, rmax, dr = (float(v) for v in r_range)
    diameter = 10.0 * float(size_nm)  # Å
    pos, z = cut_sphere(structure, float(size_nm))
    # the cluster's G(r) reaches 0 at r = diameter: the band limit needs the whole of it, and a
    # margin of a few termination ripples (2π/Qmax ≈ 0.3 Å) keeps the periodic images apart
    r_end = max(rmax, diameter) + 5.0
    r_ext = np.arange(0.0, r_end + 0.5 * dr, dr)
    with torch.no_grad():
        g = debye_gr(pos, z, torch.as_tensor(r_ext, dtype=torch.float64), diameter=diameter, uiso=uiso,
                     radiation="xray", qdamp=qdamp).numpy()
    g = band_limit(g, dr, qmax)
    keep = (r_ext >= rmin - 1e-9) & (r_ext <= rmax + 1e-9)
    r, g = r_ext[keep], g[keep]
    gmax = float(np.max(np.abs(g))) or 1.0
    rng = np.random.default_rng(seed)
    white = band_limit(rng.normal(0.0, 1.0, size=r_ext.shape), dr, qmax)[keep]
    sigma = noise * gmax
    g = g + white * (sigma / (float(np.std(white)) or 1.0))
    comp = {el.symbol: float(n) for el, n in structure.composition.reduced_composition.items()}
    return Observation(kind="pdf", x=r, y=g, x_kind="r", composition=comp, radiation="xray",
                       size_nm=float(size_nm), qmax=float(qmax), qdamp=float(qdamp),
                       max_atoms=max(20, len(structure)),
                       meta={"simulated": "debye-cluster", "atoms": int(len(z)), "diameter_A": diameter,
                             "noise": noise, "noise_sigma": sigma, "uiso": uiso, "r_grid": [rmin, rmax, dr],
                             "qmax": float(qmax), "qdamp": float(qdamp), "radiation": "xray"})


def scherrer_fwhm_deg(two_theta_deg, size_nm: float, wavelength: float = WAVELENGTH, k: float = SCHERRER_K):
    """Scherrer FWHM in degrees 2θ: ``K λ / (L cos θ)`` (radians), ``L`` = ``size_nm`` in Å."""
    theta = np.radians(np.asarray(two_theta_deg, dtype=float)) / 2
    return np.degrees(k * wavelength / (10.0 * float(size_nm) * np.cos(theta)))


def pymatgen_peaks(structure, *, wavelength: float = WAVELENGTH, two_theta_max: float = TWO_THETA_MAX,
                   uiso: float = UISO):
    """pymatgen's ``XRDCalculator`` peak list: (2θ in degrees, intensity scaled to a maximum of 100).

    The intensities are pymatgen's: |F|² with its atomic scattering factors, multiplicity and
    its Lorentz-polarisation factor; the Debye-Waller factor is ``B = 8π² Uiso`` per element.
    """
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    b = 8 * math.pi**2 * uiso
    dw = {el.symbol: b for el in structure.composition.elements}
    pattern = XRDCalculator(wavelength=wavelength, debye_waller_factors=dw).get_pattern(
        structure, scaled=True, two_theta_range=(0, two_theta_max))
    return np.asarray(pattern.x, dtype=float), np.asarray(pattern.y, dtype=float)


def simulate_pymatgen_target(structure, size_nm: float, *, seed: int = 0, n_q: int = N_Q,
                             noise: float = NOISE) -> Observation:
    """The protocol's PXRD target made by pymatgen instead of our forward model.

    pymatgen's peaks (:func:`pymatgen_peaks`, 2θ ≤ 90°, Cu Kα 1.54184 Å) broadened with Gaussians of
    Scherrer FWHM (:func:`scherrer_fwhm_deg`, K = 0.9, L = ``size_nm``) in 2θ, sampled at the 2θ of
    the protocol's Q grid, scaled to a maximum of 1 plus the protocol's noise (same seed and σ as
    :func:`~diffpy_diffusion.evaluate.protocol.simulate_target`).
    """
    q = np.linspace(0.0, Q_MAX_GRID, n_q)
    q_cut = 4 * math.pi * math.sin(math.radians(TWO_THETA_MAX / 2)) / WAVELENGTH
    keep = (q > 0) & (q <= q_cut)
    two_theta = np.degrees(2 * np.arcsin(np.clip(q * WAVELENGTH / (4 * math.pi), 0.0, 1.0)))
    tt, inten = pymatgen_peaks(structure)
    fwhm = scherrer_fwhm_deg(tt, size_nm)
    sig = fwhm / (2 * math.sqrt(2 * math.log(2)))
    # integrated intensity I_k spread as a unit-area Gaussian in 2θ
    prof = inten[None, :] / (sig[None, :] * math.sqrt(2 * math.pi)) * np.exp(
        -0.5 * ((two_theta[:, None] - tt[None, :]) / sig[None, :]) ** 2)
    y = prof.sum(1) if len(tt) else np.zeros_like(q)
    y = y / (float(y[keep].max()) or 1.0)
    rng = np.random.default_rng(seed)
    y = y + rng.normal(0.0, noise, size=y.shape)
    comp = {el.symbol: float(n) for el, n in structure.composition.reduced_composition.items()}
    return Observation(kind="xrd", x=q[keep], y=y[keep], x_kind="q", composition=comp, wavelength=WAVELENGTH,
                       size_nm=float(size_nm), max_atoms=max(20, len(structure)),
                       meta={"simulated": "pymatgen-scherrer", "noise": noise, "uiso": UISO, "scherrer_k": SCHERRER_K,
                             "q_grid": [0.0, Q_MAX_GRID, n_q], "peaks": int(len(tt))})
