"""The ranking rule that combines the fit to the data with the CHGNet energy.

Rule (on by default with the plugin installed; ``DIFFPY_DIFFUSION_ENERGY=scores`` keeps the
energies but ranks by the fit alone, ``--no-energy`` / ``DIFFPY_DIFFUSION_ENERGY=off`` skips
the plugin):

    A candidate more than :data:`ENERGY_WINDOW_EV` eV/atom above the lowest-energy candidate of
    its composition is ranked after every candidate within the window, unless its fit figure
    (refined Rw, or screening Rwp for unrefined candidates) is better by more than
    :data:`RW_MARGIN`.

Equivalently, within the refined candidates (and separately within the unrefined ones, which
the core always lists after the refined) the order is that of ``score + RW_MARGIN`` for
candidates outside the window and ``score`` inside it, ties kept in the core's order.
Candidates without an energy (an element CHGNet does not cover, a failed prediction) count as
inside the window: they keep their fit-only rank.

Both constants come from a measurement on non-evaluation structures (rows 1000-1005 of
``mp20/test.csv.gz``; the evaluation uses the first rows), made by
``plugins/diffpy-diffusion-chgnet/benchmarks/measure_rule.py`` and written up in
``docs/energy.rst``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: eV/atom above the lowest-energy candidate of the same composition beyond which a candidate is
#: "implausible".  Screened candidates matching the truth reached 0.72 eV/atom above the best of
#: their list, wrong ones 0.76 in the median, 40 % beyond 1 (docs/energy.rst).
ENERGY_WINDOW_EV = 1.0
#: Fit-figure margin (Rw/Rwp as a fraction, 0.01 = 1 percentage point) by which an implausible
#: candidate must beat a plausible one to stay ahead.  Wrong candidates that screened better than
#: the matching one of their list did so by 0.010-0.017 (docs/energy.rst).
RW_MARGIN = 0.02


def energy_above_best(energies: Sequence[float], formulas: Sequence[str]) -> list[float]:
    """Each energy minus the lowest finite energy of the same composition (eV/atom); NaN stays NaN.

    Parameters
    ----------
    energies : sequence of float
        Energy per atom (eV/atom), NaN where unknown.
    formulas : sequence of str
        Reduced formula of each candidate (candidates are compared only within a composition).
    """
    best: dict[str, float] = {}
    for e, f in zip(energies, formulas):
        if math.isfinite(e):
            best[f] = min(best.get(f, math.inf), e)
    return [e - best[f] if math.isfinite(e) and f in best else math.nan for e, f in zip(energies, formulas)]


def is_implausible(e_above: float, window: float = ENERGY_WINDOW_EV) -> bool:
    """True when ``e_above`` (eV/atom) is known and more than ``window`` above the best."""
    return math.isfinite(e_above) and e_above > window


def _merge(plausible: list[int], implausible: list[int], fit: Sequence[float], margin: float) -> list[int]:
    """Merge two index lists (each in the core's order): an implausible candidate goes first only
    when its fit beats the next plausible one's by more than ``margin``."""
    out: list[int] = []
    i = j = 0
    while i < len(plausible) and j < len(implausible):
        fp, fi = fit[plausible[i]], fit[implausible[j]]
        if math.isfinite(fi) and math.isfinite(fp) and fi + margin < fp:
            out.append(implausible[j])
            j += 1
        else:
            out.append(plausible[i])
            i += 1
    return out + plausible[i:] + implausible[j:]


def energy_order(fit: Sequence[float | None], refined: Sequence[bool], e_above: Sequence[float], *,
                 window: float = ENERGY_WINDOW_EV, margin: float = RW_MARGIN) -> list[int]:
    """The rule applied to a list the core has already ranked; returns the new order as indices.

    Parameters
    ----------
    fit : sequence of float or None
        Each candidate's fit figure (refined Rw for refined candidates, screening Rwp otherwise;
        a fraction, lower is better); None or NaN: unknown.
    refined : sequence of bool
        Whether the candidate was refined.  The core lists refined candidates first; the rule
        keeps that and works within each group.
    e_above : sequence of float
        eV/atom above the best candidate of the same composition (:func:`energy_above_best`).
    window, margin : float
        :data:`ENERGY_WINDOW_EV` (eV/atom) and :data:`RW_MARGIN` (fraction).

    Returns
    -------
    list of int
        A permutation of ``range(len(fit))``; the identity when no candidate is implausible.
    """
    n = len(fit)
    if not (len(refined) == len(e_above) == n):
        raise ValueError(f"energy_order: {n} fit values, {len(refined)} refined flags, {len(e_above)} energies")
    f = [math.nan if v is None else float(v) for v in fit]
    flags = [bool(r) for r in refined]
    # the core lists refined candidates first; should it ever interleave them, one group
    groups = (True, False) if flags == sorted(flags, reverse=True) else (None,)
    order: list[int] = []
    for group in groups:
        idx = [i for i in range(n) if group is None or flags[i] is group]
        low = [i for i in idx if not is_implausible(e_above[i], window)]
        high = [i for i in idx if is_implausible(e_above[i], window)]
        order += _merge(low, high, f, margin)
    return order
