"""The plugin's hook implementations: CHGNet energies as scores, the energy-aware ranking, relaxation.

- :func:`rerank` (hook ``rerank``): adds ``energy_ev_per_atom`` and ``energy_above_best`` (eV/atom,
  relative to the lowest-energy candidate of the same composition) to every candidate's scores.
- :func:`rank_candidates` (hook ``rank_candidates``): the energy-aware order of the final candidates
  (:mod:`diffpy_diffusion_chgnet.ranking`).
- :func:`relax_proposals` (hook ``relax_proposals``, only with ``propose --relax``): CHGNet FIRE
  relaxation of the raw proposals before screening.

The core calls ``rerank`` and then ``rank_candidates`` once per run, after refinement, on the
final candidates (docs/energy.rst, "Wiring"), so the energies are those of the structures reported.

``DIFFPY_DIFFUSION_ENERGY`` selects what the plugin does: ``rank`` (default: scores and the
ranking rule of :mod:`diffpy_diffusion_chgnet.ranking`), ``scores`` (scores only, ranking by
the fit alone) or ``off`` (nothing; what ``diffpy-diffuse propose/evaluate --no-energy`` sets).
``DIFFPY_DIFFUSION_DISABLE_PLUGINS=chgnet`` unloads the plugin altogether.

Import-time cost matters (``diffpy-diffuse --help`` imports every plugin): torch and chgnet are
imported only when a hook runs.
"""

from __future__ import annotations

import math
import os
import warnings

from diffpy_diffusion import hookimpl

from .ranking import energy_above_best, energy_order

ENV_MODE = "DIFFPY_DIFFUSION_ENERGY"
MODES = ("rank", "scores", "off")
#: Score names the plugin adds (eV/atom).
ENERGY_SCORE = "energy_ev_per_atom"
ABOVE_SCORE = "energy_above_best"

_warned_missing = False


def mode() -> str:
    """``$DIFFPY_DIFFUSION_ENERGY`` (``rank``, ``scores`` or ``off``); ``rank`` when unset."""
    raw = os.environ.get(ENV_MODE, "").strip().lower() or "rank"
    if raw not in MODES:
        warnings.warn(f"chgnet: {ENV_MODE}={raw!r} is not one of {', '.join(MODES)}; using 'rank'", stacklevel=2)
        return "rank"
    return raw


def _model_or_none():
    """The shared energy model, or None (one warning per process) when chgnet is not installed."""
    global _warned_missing
    from .energy import chgnet_available, shared_model

    if chgnet_available():
        return shared_model()
    if not _warned_missing:
        warnings.warn("chgnet: the chgnet package is not installed (pip install -c constraints.txt "
                      "'diffpy-diffusion[chgnet]'); no energies", stacklevel=3)
        _warned_missing = True
    return None


def score_energies(proposals) -> dict[str, list[float]] | None:
    """CHGNet energy per atom and energy above the best of the same composition for each proposal.

    Parameters
    ----------
    proposals : list of Proposal

    Returns
    -------
    dict or None
        ``{"energy_ev_per_atom": [...], "energy_above_best": [...]}`` in eV/atom, NaN where CHGNet
        could not score a candidate (one warning line per reason, naming the candidates' list
        positions: those candidates keep their fit-only rank); None when chgnet is missing.
    """
    model = _model_or_none()
    if model is None or not proposals:
        return None
    structures = [p.structure for p in proposals]
    energies, errors = model.energies(structures)
    failed: dict[str, list[int]] = {}
    for i, why in enumerate(errors):
        if why:
            failed.setdefault(why, []).append(i + 1)
    for why, where in failed.items():
        formula = structures[where[0] - 1].composition.reduced_formula
        warnings.warn(f"chgnet: no energy for candidate(s) {', '.join(map(str, where))} ({formula}): {why}; "
                      "fit-only rank kept", stacklevel=2)
    above = energy_above_best(energies, [s.composition.reduced_formula for s in structures])
    return {ENERGY_SCORE: energies, ABOVE_SCORE: above}


@hookimpl
def rerank(observation, proposals):
    """Add ``energy_ev_per_atom`` and ``energy_above_best`` (eV/atom) to every candidate (see the hookspec)."""
    if mode() == "off":
        return None
    return score_energies(proposals)


def _fit(p) -> tuple[float | None, bool]:
    """(fit figure, refined): the figure the core ranked the candidate on.

    The refined Rw, except when the core ranked on the screening figure because the data could
    not decide (``provenance["ranked_on"] == "parsimony"``, small crystallites): then the
    screening Rwp of every candidate, refined or not, in one group.
    """
    if p.provenance.get("ranked_on") == "parsimony":
        rwp = p.scores.get("screen_rwp")
        return (None if rwp is None else float(rwp)), False
    rw = p.scores.get("rw")
    if rw is not None and math.isfinite(rw):
        return float(rw), True
    rwp = p.scores.get("screen_rwp")
    return (None if rwp is None else float(rwp)), False


@hookimpl
def rank_candidates(observation, proposals):
    """Order the core's ranked candidates by the energy-aware rule; the new order as indices, or None.

    Energies are those of the structures as given (the core calls this after refinement, right
    after ``rerank`` on the same list, so the cache makes them free), written back into ``scores``
    so that the table and ``results.json`` show the energies of the structures they list.

    Parameters
    ----------
    observation : Observation
        Unused (the rule needs only the candidates).
    proposals : list of Proposal
        Ranked by the core: refined ones by Rw first, then unrefined ones.

    Returns
    -------
    list of int or None
        A permutation of ``range(len(proposals))``; None with ``DIFFPY_DIFFUSION_ENERGY`` set to
        ``scores`` or ``off``, without chgnet, or when no energy could be computed.
    """
    m = mode()
    if m == "off":
        return None
    scores = score_energies(proposals)
    if scores is None:
        return None
    for k, values in scores.items():
        for p, v in zip(proposals, values):
            p.scores[k] = float(v)
    if m != "rank":
        return None
    fit, refined = zip(*(_fit(p) for p in proposals))
    return energy_order(list(fit), list(refined), scores[ABOVE_SCORE])


@hookimpl
def relax_proposals(observation, proposals):
    """Relax raw proposals with CHGNet (FIRE, bounded cell volume) before screening.

    Returns new proposals in the same order (:func:`diffpy_diffusion_chgnet.relax.relax_proposals`),
    or None with ``DIFFPY_DIFFUSION_ENERGY=off`` or without chgnet.
    """
    if mode() == "off" or _model_or_none() is None:
        return None
    from .relax import relax_proposals as relax

    return relax(proposals)
