"""The ``pdf_calculator`` hook implemented with diffpy.srreal.

Answers ``None`` when diffpy.srreal is not importable, so the built-in torch
calculator stays in charge.
"""

from __future__ import annotations

import numpy as np

from diffpy_diffusion.hookspecs import hookimpl

__all__ = ["srreal_available", "SrrealPDFCalculator", "pdf_calculator"]


def srreal_available() -> bool:
    """True when diffpy.srreal's PDF calculators can be imported."""
    try:
        import diffpy.srreal.pdfcalculator  # noqa: F401
    except Exception:
        return False
    return True


def _as_diffpy(structure):
    if hasattr(structure, "frac_coords"):  # pymatgen
        from diffpy_diffusion.refine.symmetry import to_diffpy

        return to_diffpy(structure)
    return structure


def _spherical_cf(r: np.ndarray, psize: float) -> np.ndarray:
    """Characteristic function of a sphere of diameter ``psize`` Å (srfit's sphericalCF)."""
    x = np.asarray(r, float) / psize
    return np.where(x < 1, 1 - 1.5 * x + 0.5 * x**3, 0.0)


class SrrealPDFCalculator:
    """``calculator(structure, r, **params) -> G(r)`` using srreal.

    Parameters
    ----------
    kind : {"pdf", "debye"}
        ``PDFCalculator`` (periodic) or ``DebyePDFCalculator`` (finite cluster).
    """

    def __init__(self, kind: str = "pdf"):
        self.kind = kind

    def __call__(self, structure, r, *, qmax=None, qmin=0.0, qdamp=0.0, qbroad=0.0, delta1=0.0, delta2=0.0,
                 scale=1.0, spdiameter=None, radiation="xray"):
        from diffpy.srreal.pdfcalculator import DebyePDFCalculator, PDFCalculator

        r = np.asarray(r, float)
        calc = PDFCalculator() if self.kind == "pdf" else DebyePDFCalculator()
        calc.setScatteringFactorTableByType("N" if radiation == "neutron" else "X")
        step = float(np.min(np.diff(r))) if len(r) > 1 else 0.01
        calc.rmin = float(r.min())
        calc.rmax = float(r.max()) + 0.5 * step
        calc.rstep = step
        if qmax:
            calc.qmax = float(qmax)
        calc.qmin = float(qmin or 0.0)
        calc.qdamp = float(qdamp)
        calc.qbroad = float(qbroad)
        calc.delta1 = float(delta1)
        calc.delta2 = float(delta2)
        calc.scale = float(scale)
        r0, g0 = calc(_as_diffpy(structure))
        g = np.interp(r, r0, g0)
        if spdiameter:
            g = g * _spherical_cf(r, float(spdiameter))
        return g

    def srfit_generator(self, name: str = "pdf"):
        """srfit's own ``PDFGenerator`` (or ``DebyePDFGenerator``) for hand-written recipes."""
        if self.kind == "pdf":
            from diffpy.srfit.pdf import PDFGenerator

            return PDFGenerator(name)
        from diffpy.srfit.pdf import DebyePDFGenerator

        return DebyePDFGenerator(name)


@hookimpl
def pdf_calculator(kind):
    """srreal's calculator for ``kind`` "pdf" or "debye"; None without srreal."""
    if kind not in ("pdf", "debye") or not srreal_available():
        return None
    return SrrealPDFCalculator(kind)
