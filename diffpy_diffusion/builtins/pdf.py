"""Built-in plugin ``pdf``: the torch PDF calculator used inside srfit refinements.

Its :func:`pdf_calculator` hook answers ``kind="pdf"`` with :class:`TorchPDFCalculator`
and is marked ``trylast``: a plugin's answer (diffpy-diffusion-srreal's srreal calculator)
wins because the hook is ``firstresult``.  For ``kind="debye"`` it answers ``None``: the
finite-cluster model is the ``debye`` simulator, which nothing refines.
"""

from __future__ import annotations

import numpy as np

from ..hookspecs import hookimpl


class TorchPDFCalculator:
    """``calculator(structure, r, **params) -> G(r)`` with the torch model of :mod:`diffpy_diffusion.physics.pdf`.

    Parameters follow srreal/PDFgui: ``qmax``, ``qmin``, ``qdamp``, ``qbroad`` (Å⁻¹),
    ``delta1`` (Å), ``delta2`` (Å²), ``scale``, ``spdiameter`` (Å, None = bulk) and
    ``radiation`` (``"xray"``: weights Z, as pdffit2; ``"neutron"``: coherent lengths).
    Atoms without a displacement parameter get
    :data:`diffpy_diffusion.simulation.DEFAULT_UISO`.
    """

    name = "torch"

    def __call__(self, structure, r, *, qmax=None, qmin=0.0, qdamp=0.0, qbroad=0.0, delta1=0.0, delta2=0.0,
                 scale=1.0, spdiameter=None, radiation="xray") -> np.ndarray:
        """G(r) in Å⁻² on the grid ``r`` (Å) of a pymatgen or diffpy Structure."""
        from ..simulation import simulate

        params = {"qmin": float(qmin or 0.0), "qdamp": float(qdamp), "qbroad": float(qbroad),
                  "delta1": float(delta1), "delta2": float(delta2), "scale": float(scale)}
        if qmax:
            params["qmax"] = float(qmax)
        if spdiameter:
            params["spdiameter"] = float(spdiameter)
        return simulate(structure, "pdf", np.asarray(r, float), radiation=radiation, **params).y

    def profile_generator(self, name: str = "pdf"):
        """The srfit generator that evaluates this model for all finite-difference states in one batch.

        Refinement uses it instead of calling the calculator once per state
        (:class:`diffpy_diffusion.refine.generators.TorchPDFGenerator`).
        """
        from ..refine.generators import TorchPDFGenerator

        return TorchPDFGenerator(name)


@hookimpl(trylast=True)
def pdf_calculator(kind):
    """The torch calculator for ``kind="pdf"``; ``None`` otherwise."""
    return TorchPDFCalculator() if kind == "pdf" else None
