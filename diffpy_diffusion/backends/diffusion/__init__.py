"""The default neural backend ``diffusion``: a pattern-conditioned crystal diffusion model.

Modules: :mod:`.model` (denoiser), :mod:`.process` (joint lattice/torus diffusion),
:mod:`.conditioning` (canonical pattern + encoder), :mod:`.guidance` (physics guidance),
:mod:`.data` (training pool), :mod:`.train`, :mod:`.checkpoint`, :mod:`.backend` (sampler).
Importing this package is cheap: torch and pymatgen load only when the backend is used.
"""

from __future__ import annotations

from ...hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_backends(register):
    """Register the ``diffusion`` backend (factory imports torch lazily)."""
    from .backend import DiffusionBackend

    register("diffusion", DiffusionBackend)
