"""Benchmark protocols and metrics (match rate, RMS displacement, Rwp, speed).

See :mod:`diffpy_diffusion.evaluate.protocol`; ``diffpy-diffuse evaluate`` calls
:func:`run_evaluation`.
"""

from .protocol import KS, MATCH, match, run_evaluation, simulate_target, summarize

__all__ = ["run_evaluation", "simulate_target", "match", "summarize", "MATCH", "KS"]
