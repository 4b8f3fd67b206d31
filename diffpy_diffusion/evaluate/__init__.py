"""Benchmark protocols and metrics (match rate, RMS displacement, Rwp, speed).

See :mod:`diffpy_diffusion.evaluate.protocol`; ``diffpy-diffuse evaluate`` calls
:func:`run_evaluation`.  :mod:`diffpy_diffusion.evaluate.targets` makes the PDF targets and the
PXRD targets of an independent simulator (pymatgen).
"""

from .protocol import KS, MATCH, make_target, match, run_evaluation, simulate_target, summarize
from .targets import simulate_pdf_target, simulate_pymatgen_target

__all__ = ["run_evaluation", "simulate_target", "simulate_pdf_target", "simulate_pymatgen_target", "make_target",
           "match", "summarize", "MATCH", "KS"]
