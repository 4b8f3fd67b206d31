"""One line for existing SrFit users.

.. code-block:: python

    from diffpy_diffusion import propose_structure
    structure = propose_structure(profile, composition="Ni")   # diffpy.structure.Structure
    generator.setStructure(structure)                          # the rest of the script unchanged

    from diffpy_diffusion import seed_recipe
    seed_recipe(recipe, composition="CdSe")   # adds the best proposal's phase to the recipe

Both run :func:`diffpy_diffusion.pipeline.propose` (sample -> screen -> refine)
on the data already loaded in the Profile / FitContribution / FitRecipe, so
this module sits above the pipeline; the srfit side (Profile -> Observation,
structure -> constrained phase) is :mod:`diffpy_diffusion.refine.oneline`.
"""

from __future__ import annotations

from .errors import BackendError, DiffpyDiffusionError
from .refine.oneline import add_phase, as_observation

__all__ = ["propose_structure", "seed_recipe"]


def _best(observation, backend, n, top, seed, backend_options):
    from .pipeline import propose

    proposals = propose(
        observation, backend=backend, n=n, top=top, seed=seed, output_dir=None, progress=False,
        backend_options=backend_options,
    )
    if not proposals:
        raise BackendError(f"backend {backend!r} produced no structure for {observation.formula}")
    return proposals[0]


def propose_structure(
    profile_or_observation,
    composition=None,
    *,
    backend: str = "diffusion",
    n: int = 200,
    top: int = 5,
    seed: int = 0,
    backend_options: dict | None = None,
    return_proposal: bool = False,
    **observation_fields,
):
    """The best proposed (and refined) structure for the data, as a diffpy Structure.

    Parameters
    ----------
    profile_or_observation : Observation, srfit Profile or FitContribution
        The data.  From a Profile, qmax/qdamp/stype metadata are used.
    composition : str or dict
        e.g. ``"CdSe"``.
    backend, n, top, seed, backend_options
        Passed to :func:`diffpy_diffusion.pipeline.propose`.
    return_proposal : bool
        Also return the :class:`~diffpy_diffusion.types.Proposal` (scores, refined values).
    **observation_fields
        Extra Observation fields (``size_nm``, ``radiation``, ``wavelength`` ...).

    Returns
    -------
    diffpy.structure.Structure
        Ready for ``generator.setStructure(...)``.
    """
    from .refine.symmetry import symmetrize, to_diffpy

    obs = as_observation(profile_or_observation, composition, **observation_fields)
    if not obs.composition:
        raise DiffpyDiffusionError("propose_structure needs a composition, e.g. composition='Ni'")
    best = _best(obs, backend, n, top, seed, backend_options)
    # Standard conventional cell; its space group travels in stru.pdffit["spcgr"]
    # (written to .stru files, usable in constrainAsSpaceGroup).
    sym = symmetrize(best.structure, tol=0.01)
    stru = to_diffpy(sym.structure, spacegroup=sym.symbol)
    stru.title = f"{best.formula} proposed by diffpy-diffusion ({best.backend}), {sym.symbol}"
    return (stru, best) if return_proposal else stru


def seed_recipe(
    recipe,
    composition=None,
    *,
    contribution: str | None = None,
    backend: str = "diffusion",
    n: int = 200,
    top: int = 5,
    seed: int = 0,
    backend_options: dict | None = None,
    name: str = "phase",
    **observation_fields,
):
    """Propose a structure for the data of a recipe's contribution and add it as a phase.

    Parameters
    ----------
    recipe : diffpy.srfit.fitbase.FitRecipe
        Holding at least one FitContribution with a Profile (observed data).
    composition : str or dict
    contribution : str, optional
        Which contribution (default: the first).
    name : str
        Phase name (prefix of the new variables).

    Returns
    -------
    Proposal
        The proposal used (its structure is now the recipe's phase).
    """
    from .types import Proposal  # noqa: F401 - documented return type

    cons = getattr(recipe, "_contributions", {})
    if not cons:
        raise DiffpyDiffusionError("seed_recipe: the recipe has no FitContribution with data")
    con = cons[contribution] if contribution else next(iter(cons.values()))
    obs = as_observation(con, composition, **observation_fields)
    if not obs.composition:
        raise DiffpyDiffusionError("seed_recipe needs a composition, e.g. composition='Ni'")
    best = _best(obs, backend, n, top, seed, backend_options)
    add_phase(recipe, con, best.structure, name=name)
    from .plugins import notify_recipe_seeded

    notify_recipe_seeded(recipe, best)
    return best
