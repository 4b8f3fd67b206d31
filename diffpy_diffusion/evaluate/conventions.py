"""The simulated measurement of the PXRD evaluation (PXRDnet's conventions, Guo et al. 2025).

Shared by :mod:`~diffpy_diffusion.evaluate.protocol` (our simulator) and
:mod:`~diffpy_diffusion.evaluate.targets` (the independent one), so both make the same measurement.
"""

from __future__ import annotations

#: Cu Kα as one line, Å.
WAVELENGTH = 1.54184
#: Largest 2θ recorded, degrees.
TWO_THETA_MAX = 90.0
#: The pattern grid: ``N_Q`` points over 0-``Q_MAX_GRID`` Å⁻¹.
Q_MAX_GRID = 8.15
N_Q = 1024
#: Gaussian noise, σ as a fraction of the maximum intensity.
NOISE = 1e-3
#: Isotropic displacement of every atom, Å².
UISO = 0.005
