"""The srfit side of the one-liners: srfit Profile -> Observation, structure -> recipe phase.

:func:`diffpy_diffusion.propose_structure` and :func:`diffpy_diffusion.seed_recipe`
(module :mod:`diffpy_diffusion.oneline`, above the pipeline) use these; they
need no proposal machinery themselves, so they live in the refine layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DiffpyDiffusionError

__all__ = ["observation_from_profile", "as_observation", "add_phase"]


def _is_profile(obj) -> bool:
    return hasattr(obj, "xobs") and hasattr(obj, "yobs")


def observation_from_profile(profile, *, composition=None, kind: str | None = None, x_kind: str | None = None,
                             **fields):
    """An :class:`~diffpy_diffusion.types.Observation` from an srfit ``Profile``.

    Uses the observed arrays (``xobs``, ``yobs``, ``dyobs``; srfit's placeholder
    dy of ones means "no uncertainties") and the metadata srfit's parsers store:
    ``qmax``, ``qmin``, ``qdamp``, ``qbroad``, ``stype`` ("X"/"N"), and for PXRD
    ``wavelength``/``x_kind`` when a script put them there.  ``kind`` defaults to
    "pdf" unless the metadata names a wavelength or an x_kind.
    """
    from ..types import Observation

    meta = dict(getattr(profile, "meta", {}) or {})
    x = np.asarray(profile.xobs, float)
    y = np.asarray(profile.yobs, float)
    dy = getattr(profile, "dyobs", None)
    dy = None if dy is None else np.asarray(dy, float)
    if dy is not None and (dy.shape != y.shape or np.allclose(dy, 1.0) or np.any(dy <= 0)):
        dy = None
    x_kind = x_kind or meta.get("x_kind")
    if kind is None:
        kind = "xrd" if (x_kind in ("2theta", "q") or meta.get("wavelength")) else "pdf"
    if x_kind is None:
        x_kind = "r" if kind == "pdf" else "2theta"
    stype = str(meta.get("stype", "X")).upper()[:1]
    kw: dict[str, Any] = dict(
        kind=kind,
        x=x,
        y=y,
        x_kind=x_kind,
        composition=composition or {},
        sigma=dy,
        radiation="neutron" if stype == "N" else "xray",
        meta={"srfit_meta": {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}},
    )
    for key in ("qmax", "qdamp", "qbroad", "wavelength"):  # qmin: PDFgui ignores it too
        if meta.get(key) is not None:
            kw[key] = float(meta[key])
    kw.update(fields)
    return Observation(**kw)


def as_observation(data, composition=None, **kw):
    """An Observation from an Observation, an srfit ``Profile`` or a ``FitContribution``.

    ``composition`` (str or dict) and ``kw`` (Observation fields) are set on the
    result; an Observation passed in is updated in place.

    Raises
    ------
    DiffpyDiffusionError
        ``data`` is none of these.
    """
    from ..types import Observation

    if isinstance(data, Observation):
        if composition:
            from ..types import parse_composition

            data.composition = parse_composition(composition) if isinstance(composition, str) else dict(composition)
        for k, v in kw.items():
            setattr(data, k, v)
        return data
    if _is_profile(data):
        return observation_from_profile(data, composition=composition, **kw)
    prof = getattr(data, "profile", None)  # a FitContribution
    if prof is not None and _is_profile(prof):
        return observation_from_profile(prof, composition=composition, **kw)
    raise DiffpyDiffusionError(
        f"expected an Observation, an srfit Profile or a FitContribution, got {type(data).__name__}"
    )


def add_phase(recipe, contribution, structure, *, name: str = "phase", generator=None,
              spacegroup_tol: float = 0.01, refine_adp: bool = True):
    """Add ``structure`` as a space-group-constrained phase to ``contribution`` in ``recipe``.

    When ``contribution`` already holds a structure-less generator (an srfit
    ``PDFGenerator`` or ours), its ``setStructure`` is used; otherwise a
    :class:`~diffpy_diffusion.refine.generators.TorchPDFGenerator` named
    ``name + "_pdf"`` is added and multiplied into the equation.
    Variables: ``{name}_scale``, lattice, free coordinates, ``{name}_Uiso_<El>``,
    ``{name}_delta2``, ``{name}_qdamp`` (fixed unless the profile has no qdamp).

    Returns
    -------
    generator
    """
    from diffpy.srfit.structure import constrainAsSpaceGroup

    from .compat import add_profile_generator, process_metadata, set_equation
    from .generators import TorchPDFGenerator
    from .symmetry import element_of, symmetrize, to_diffpy, to_pymatgen

    if not hasattr(structure, "frac_coords"):
        structure = to_pymatgen(structure)
    sym = symmetrize(structure, tol=spacegroup_tol)
    stru = to_diffpy(sym.structure)
    gens = list(getattr(contribution, "_generators", {}).values())
    if generator is None:
        for g in gens:
            if hasattr(g, "setStructure") and getattr(g, "_phase", None) is None:
                generator = g
                break
    if generator is None:
        generator = TorchPDFGenerator(f"{name}_pdf")
        add_profile_generator(contribution, generator)
        # srfit equations are strings; the new generator term is added to what is there.
        eq = None
        try:
            eq = contribution.getEquation()
        except Exception:
            pass
        set_equation(contribution, f"{eq} + {generator.name}" if eq and gens else generator.name)
        if contribution.profile is not None:
            generator.meta.update(contribution.profile.meta)
            process_metadata(generator)
    generator.setStructure(stru, name)
    phase = generator._phase
    sgp = constrainAsSpaceGroup(phase, sym.spacegroup, constrainadps=False)
    for p in sgp.latpars:
        recipe.addVar(p, name=f"{name}_{p.name}", tag="lat")
    for p in sgp.xyzpars:
        recipe.addVar(p, name=f"{name}_{p.name}", tag="xyz")
    if refine_adp:
        els: dict[str, list] = {}
        for s in phase.getScatterers():
            els.setdefault(element_of(s.element), []).append(s)
        for el, scats in els.items():
            var = recipe.newVar(f"{name}_Uiso_{el}", value=float(scats[0].Uiso.getValue()) or 0.005, tag="adp")
            for s in scats:
                recipe.constrain(s.Uiso, var)
    for pname in ("scale", "delta2", "qdamp"):
        par = getattr(generator, pname, None)
        if par is None:
            continue
        if pname == "qdamp" and contribution.profile is not None and contribution.profile.meta.get("qdamp"):
            continue
        recipe.addVar(par, name=f"{name}_{pname}", tag=pname)
    return generator
