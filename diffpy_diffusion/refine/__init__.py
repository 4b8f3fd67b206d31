"""Refinement with diffpy.srfit (the only package that imports srfit) and pdffit2.

- :func:`refine_structure` — staged, space-group-constrained refinement of a
  proposal against a PXRD pattern or a PDF -> :class:`RefinementResult`
  (modules: ``staged`` drives ``recipe`` and ``optimize``; ``results`` holds
  the result and :func:`rw_factor`).
- :func:`build_recipe` — the srfit FitRecipe behind it, for scripting.
- :class:`XRDGenerator`, :class:`TorchPDFGenerator` — srfit ProfileGenerators
  backed by the torch physics (no srreal needed).
- :func:`add_phase`, :func:`observation_from_profile` — the srfit side of the
  one-liners :func:`diffpy_diffusion.propose_structure` and
  :func:`diffpy_diffusion.seed_recipe` (which sit above the pipeline, not here).
- :func:`write_stru`, :func:`pdffit2_script`, :func:`write_pdfgui_project` — PDFgui-style output.

Names are imported lazily so ``import diffpy_diffusion.refine`` stays cheap.

Typical use::

    from diffpy_diffusion.refine import refine_structure, write_refinement_files
    res = refine_structure(observation, proposal.structure)          # PXRD or PDF
    res.rw, res.params["a"], res.structure                           # Rwp/Rw, value+esd, pymatgen
    write_refinement_files(res, observation, "out", "rank01")        # .stru (+ pdffit2 script for PDF)

Strategy: spglib (``spacegroup_tol``) -> conventional cell -> srfit
``constrainAsSpaceGroup``; stages (cumulative) PXRD: scale+background (solved
linearly) -> lattice, size, zero -> coordinates -> Uiso per element; PDF:
scale -> lattice (+spdiameter when a size is known) -> coordinates -> Uiso,
delta2 (+qdamp when the data carry none).  Polar axes get one coordinate fixed.
Uncertainties: esd = sqrt(diag((JᵀJ)⁻¹) · χ²_red) from the final Jacobian.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "refine_structure": ".staged",
    "DEFAULT_STAGES": ".staged",
    "build_recipe": ".recipe",
    "RecipeBundle": ".recipe",
    "RefinementResult": ".results",
    "rw_factor": ".results",
    "observation_sigma": ".results",
    "XRDGenerator": ".generators",
    "TorchPDFGenerator": ".generators",
    "HookPDFGenerator": ".generators",
    "symmetrize": ".symmetry",
    "symmetry_tolerance": ".symmetry",
    "observation_from_profile": ".oneline",
    "add_phase": ".oneline",
    "write_stru": ".pdffit2_engine",
    "stru_text": ".pdffit2_engine",
    "pdffit2_plan": ".pdffit2_engine",
    "pdffit2_script": ".pdffit2_engine",
    "refine_pdffit2": ".pdffit2_engine",
    "write_pdfgui_project": ".pdffit2_engine",
    "write_refinement_files": ".pdffit2_engine",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    try:
        mod = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'diffpy_diffusion.refine' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
