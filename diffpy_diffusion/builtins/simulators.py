"""Built-in plugin ``simulators``: the torch forward models behind ``diffpy-diffuse simulate``.

``xrd`` (powder pattern), ``pdf`` (G(r) of the periodic crystal, optionally damped by a
spherical particle envelope) and ``debye`` (Debye scattering of a sphere cut from the
crystal) are :func:`diffpy_diffusion.simulation.simulate` with ``kind`` fixed; the keyword
parameters are the ones documented there (``wavelength``, ``size_nm``, ``radiation``, ...).
"""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


def simulate_xrd(structure, x=None, **params: Any):
    """Powder diffraction pattern of ``structure`` (``simulate(structure, "xrd", x, **params)``)."""
    from ..simulation import simulate

    return simulate(structure, "xrd", x, **params)


def simulate_pdf(structure, x=None, **params: Any):
    """Reduced PDF G(r) in Å⁻² of ``structure`` (``simulate(structure, "pdf", x, **params)``)."""
    from ..simulation import simulate

    return simulate(structure, "pdf", x, **params)


def simulate_debye(structure, x=None, **params: Any):
    """Debye scattering of a sphere cut from ``structure`` (``simulate(structure, "debye", x, **params)``)."""
    from ..simulation import simulate

    return simulate(structure, "debye", x, **params)


@hookimpl
def register_simulators(register):
    """Register ``xrd``, ``pdf`` and ``debye``."""
    register("xrd", simulate_xrd)
    register("pdf", simulate_pdf)
    register("debye", simulate_debye)
