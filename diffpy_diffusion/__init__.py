"""diffpy-diffusion: structure proposals for information-poor powder patterns.

The public API (imported lazily, so ``import diffpy_diffusion`` is cheap and
never imports torch):

- :func:`propose` -- observation -> ranked, refined :class:`Proposal` list
  (``diffpy_diffusion.pipeline.propose``);
- :func:`propose_structure` -- one line for SrFit scripts: profile or
  observation -> :class:`diffpy.structure.Structure`;
- :func:`seed_recipe` -- seed an existing SrFit recipe with a proposal;
- :func:`simulate` -- structure -> simulated :class:`Observation`;
- :data:`hookimpl` -- marker for plugin hook implementations;
- :class:`Observation`, :class:`Proposal` -- the data types;
- :func:`read_observation`, :func:`read_structure` -- file readers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    # name: candidate (module, attribute) pairs, first importable wins
    "propose": [("diffpy_diffusion.pipeline", "propose")],
    "propose_structure": [("diffpy_diffusion.oneline", "propose_structure"),
                          ("diffpy_diffusion.pipeline", "propose_structure")],
    "seed_recipe": [("diffpy_diffusion.oneline", "seed_recipe"),
                    ("diffpy_diffusion.pipeline", "seed_recipe")],
    "simulate": [("diffpy_diffusion.simulation", "simulate")],
    "hookimpl": [("diffpy_diffusion.hookspecs", "hookimpl")],
    "Observation": [("diffpy_diffusion.types", "Observation")],
    "Proposal": [("diffpy_diffusion.types", "Proposal")],
    "read_observation": [("diffpy_diffusion.io", "read_observation")],
    "read_structure": [("diffpy_diffusion.io", "read_structure")],
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    try:
        candidates = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'diffpy_diffusion' has no attribute {name!r}") from None
    for modname, attr in candidates:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                continue  # not in this installation: try the next candidate
            raise
        if hasattr(mod, attr):
            value = getattr(mod, attr)
            globals()[name] = value
            return value
    from .errors import NotAvailableError

    class NotAvailableAttributeError(NotAvailableError, AttributeError):
        """Missing optional part; an AttributeError too, so hasattr() works."""

    raise NotAvailableAttributeError(f"diffpy_diffusion.{name} is not available yet in this installation "
                            f"(looked in {', '.join(m for m, _ in candidates)})")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
