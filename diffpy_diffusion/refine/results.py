"""What a refinement returns, and the figures of merit it is judged by.

:class:`RefinementResult` is what :func:`~diffpy_diffusion.refine.refine_structure`
(srfit engine) and :func:`~diffpy_diffusion.refine.pdffit2_engine.refine_pdffit2`
produce; :func:`rw_factor` is the weighted R of both (Rw for a PDF, Rwp for a
PXRD pattern) and :func:`parameter_esds` the standard uncertainties from the
Jacobian at the solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RefinementResult", "rw_factor", "observation_sigma", "parameter_esds"]


def observation_sigma(observation) -> np.ndarray | None:
    """The σ used to weight residuals: ``observation.sigma`` when positive and finite, else None (unit weights)."""
    s = observation.sigma
    if s is None:
        return None
    s = np.asarray(s, dtype=float)
    if s.shape != observation.y.shape or not np.all(np.isfinite(s)) or np.any(s <= 0):
        return None
    return s


def rw_factor(y_obs: np.ndarray, y_calc: np.ndarray, sigma: np.ndarray | None = None) -> float:
    """Weighted R factor (fraction): sqrt(Σ w (yo − yc)² / Σ w yo²), w = 1/σ² (or 1).

    This is PDFgui's/srfit's Rw for a PDF and the Rietveld Rwp for a PXRD pattern.
    """
    yo = np.asarray(y_obs, float)
    yc = np.asarray(y_calc, float)
    w = np.ones_like(yo) if sigma is None else 1.0 / np.asarray(sigma, float) ** 2
    den = float(np.sum(w * yo**2))
    return float(math.sqrt(np.sum(w * (yo - yc) ** 2) / den)) if den > 0 else float("inf")


def parameter_esds(jacobian: np.ndarray, reduced_chi2: float) -> np.ndarray:
    """Standard uncertainties of the refined variables: sqrt(diag((JᵀJ)⁻¹) · χ²_red).

    Parameters
    ----------
    jacobian : numpy.ndarray, shape (n_points, n_vars)
        Jacobian of the weighted residual at the solution.
    reduced_chi2 : float
        χ² / (points − variables); scaling by it makes the esd reflect the actual
        misfit when the data carry no (or wrong) σ, as srfit and PDFgui do.

    Returns
    -------
    numpy.ndarray, shape (n_vars,)
        (JᵀJ is pseudo-inverted, so a degenerate variable gets a finite value,
        not an error.)
    """
    J = np.asarray(jacobian, float)
    cov = np.linalg.pinv(J.T @ J)
    # max(.., 1e-300): a perfect fit (χ² = 0) still gives esd 0, never NaN from sqrt(0 * inf)
    return np.sqrt(np.clip(np.diag(cov), 0, None) * max(reduced_chi2, 1e-300))


@dataclass
class RefinementResult:
    """What a refinement produced.

    Attributes
    ----------
    structure : pymatgen.core.Structure
        Refined structure (conventional cell), site property ``uiso`` in Å².
    diffpy_structure : diffpy.structure.Structure
        The same as a diffpy structure (what srfit refined).
    rw : float
        Weighted R (Rw for PDF, Rwp for PXRD), a fraction.
    chi2 : float
        Σ ((yo − yc)/σ)² (unit σ when the data carry none).
    reduced_chi2 : float
        chi2 / (points − free parameters).
    params : dict
        Name -> {"value": v, "esd": e} for every refined variable (esd scaled by √reduced χ²).
    x, y_obs, y_calc : numpy.ndarray
        Abscissa, data and fitted profile.
    spacegroup : str
        Hermann–Mauguin symbol of the symmetry the fit was constrained to.
    spacegroup_number : int
    kind : {"xrd", "pdf"}
    engine : {"srfit", "pdffit2"}
    nfev : int
        Profile evaluations (a batched Jacobian counts once).
    wall_s : float
    stages : list
        Per stage: tags freed, Rw after it, evaluations.
    converged : bool
    message : str
    recipe : diffpy.srfit.fitbase.FitRecipe or None
        The recipe itself (srfit engine), for further scripting.
    extra_phases : list of dict
        Extra (impurity) phases refined alongside (PXRD): ``name`` (the variable prefix),
        ``formula``, ``spacegroup``, ``structure`` (refined, pymatgen), ``scale``, ``size_nm``.
    instrument : dict
        PXRD: the profile at the end of the fit, refined or fixed (U, V, W, X, Y, eta, axial_deg,
        zero_deg, displacement_deg, size_nm, wavelengths, ``peak_shape``, ``instrument_file``: True
        when an instrument file held it); empty for a PDF.
    unexplained_peaks : list of dict
        PXRD: the strongest peaks of the difference curve that no phase explains
        (:func:`~diffpy_diffusion.refine.peaks.unexplained_peaks`): ``two_theta_deg`` (or ``q_invA``),
        ``d_A``, ``rel_intensity`` (fraction of the strongest observed peak above background).
    """

    structure: Any
    diffpy_structure: Any
    rw: float
    chi2: float
    reduced_chi2: float
    params: dict[str, dict[str, float]]
    x: np.ndarray
    y_obs: np.ndarray
    y_calc: np.ndarray
    spacegroup: str
    spacegroup_number: int = 1
    kind: str = "xrd"
    engine: str = "srfit"
    nfev: int = 0
    wall_s: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)
    converged: bool = True
    message: str = ""
    recipe: Any = None
    extra_phases: list[dict[str, Any]] = field(default_factory=list)
    instrument: dict[str, Any] = field(default_factory=dict)
    unexplained_peaks: list[dict[str, float]] = field(default_factory=list)

    @property
    def rwp(self) -> float:
        """Alias of :attr:`rw` (the PXRD name)."""
        return self.rw

    @property
    def y_diff(self) -> np.ndarray:
        return self.y_obs - self.y_calc

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays)."""
        return {
            "rw": self.rw,
            "chi2": self.chi2,
            "reduced_chi2": self.reduced_chi2,
            "spacegroup": self.spacegroup,
            "spacegroup_number": self.spacegroup_number,
            "kind": self.kind,
            "engine": self.engine,
            "params": self.params,
            "nfev": self.nfev,
            "wall_s": self.wall_s,
            "converged": self.converged,
            "message": self.message,
            "stages": self.stages,
            "extra_phases": [{k: v for k, v in ph.items() if k != "structure"} for ph in self.extra_phases],
            "instrument": self.instrument,
            "unexplained_peaks": self.unexplained_peaks,
        }
