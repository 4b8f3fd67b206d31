"""Optional CHGNet relaxation of raw proposals before screening (``--relax``).

FIRE (ASE) on positions and cell (``FrechetCellFilter``) with CHGNet forces and stress, at
most :data:`RELAX_STEPS` steps or until the largest force is below :data:`RELAX_FMAX`.  The
cell volume is bounded: once it leaves ``V0 (1 ± MAX_VOLUME_CHANGE)`` the cell is scaled back
to the bound and only the positions relax for the remaining steps, because the volume is for
the diffraction data to decide (the screen fits the lattice afterwards), not for a PBE-trained
potential, which misplaces it by a few per cent and can blow up a crowded raw proposal.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings

from .energy import EnergyModel, shared_model, uncovered_elements

#: FIRE steps at most (a few hundred: raw proposals need tens to a few hundred to settle).
RELAX_STEPS = 300
#: Convergence: largest force component in eV/Å (CHGNet's StructOptimizer default).
RELAX_FMAX = 0.1
#: Allowed relative change of the cell volume (±20 %: the screen's coarse lattice scan covers
#: ±10 % in length, about ±30 % in volume, so a bounded relaxation stays within its reach).
MAX_VOLUME_CHANGE = 0.2


def relax_structure(structure, model: EnergyModel | None = None, *, steps: int = RELAX_STEPS,
                    fmax: float = RELAX_FMAX, max_volume_change: float = MAX_VOLUME_CHANGE):
    """Relax one pymatgen ``Structure`` with CHGNet; returns ``(relaxed_structure, info)``.

    Parameters
    ----------
    structure : pymatgen.core.Structure
    model : EnergyModel, optional
        Default: the process-wide :func:`~diffpy_diffusion_chgnet.energy.shared_model`.
    steps : int
        FIRE steps at most (cell and positions, then positions only once the volume bound is hit).
    fmax : float
        Force convergence threshold, eV/Å.
    max_volume_change : float
        Relative bound on the volume change, e.g. 0.2 for ±20 %.

    Returns
    -------
    structure : pymatgen.core.Structure
    info : dict
        ``steps`` taken, ``converged``, ``volume_ratio`` (final/initial), ``volume_bounded``,
        ``energy_ev_per_atom`` before and after, ``seconds``.

    Raises
    ------
    ValueError
        An element CHGNet does not cover.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    missing = uncovered_elements(structure)
    if missing:
        raise ValueError(f"element(s) {', '.join(missing)} not covered by CHGNet")
    model = model or shared_model()
    t0 = time.perf_counter()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    with contextlib.redirect_stdout(io.StringIO()):  # the calculator prints its device
        atoms.calc = CHGNetCalculator(model=model.model, use_device=model.device, on_isolated_atoms="ignore")
    v0 = atoms.get_volume()
    lo, hi = v0 * (1.0 - max_volume_change), v0 * (1.0 + max_volume_change)
    taken, bounded, converged = 0, False, False
    with model.thread_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e0 = float(atoms.get_potential_energy()) / len(atoms)
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        for step_converged in opt.irun(fmax=fmax, steps=steps):
            converged, taken = bool(step_converged), opt.nsteps
            v = atoms.get_volume()
            if not lo <= v <= hi:
                target = min(max(v, lo), hi)
                atoms.set_cell(atoms.cell[:] * (target / v) ** (1.0 / 3.0), scale_atoms=True)
                bounded = True
                break
        if bounded and taken < steps:
            opt = FIRE(atoms, logfile=None)  # positions only, in the bounded cell
            for step_converged in opt.irun(fmax=fmax, steps=steps - taken):
                converged = bool(step_converged)
            taken += opt.nsteps
        e1 = float(atoms.get_potential_energy()) / len(atoms)
    out = AseAtomsAdaptor.get_structure(atoms)
    out = out.__class__(out.lattice, structure.species, out.frac_coords, site_properties=structure.site_properties)
    info = {"steps": int(taken), "converged": bool(converged), "volume_ratio": round(float(atoms.get_volume() / v0), 4),
            "volume_bounded": bounded, "energy_before_ev_per_atom": e0, "energy_ev_per_atom": e1,
            "seconds": round(time.perf_counter() - t0, 3)}
    return out, info


def relax_proposals(proposals, *, steps: int = RELAX_STEPS, fmax: float = RELAX_FMAX,
                    max_volume_change: float = MAX_VOLUME_CHANGE, model: EnergyModel | None = None):
    """Relax raw proposals; returns new proposals in the same order (inputs untouched).

    A proposal that cannot be relaxed (an element CHGNet does not cover, a CHGNet failure, a
    non-finite result) is returned unchanged, with one warning per distinct reason.  Each
    relaxed proposal's ``provenance["relax"]`` holds :func:`relax_structure`'s ``info``.
    """
    out, reasons = [], {}
    for p in proposals:
        q = p.copy()
        try:
            s, info = relax_structure(p.structure, model, steps=steps, fmax=fmax,
                                      max_volume_change=max_volume_change)
            if not math.isfinite(info["energy_ev_per_atom"]):
                raise ValueError("non-finite energy after relaxation")
            q.structure = s
            q.provenance["relax"] = info
        except Exception as exc:  # noqa: BLE001 - the proposal goes on unrelaxed
            why = " ".join(str(exc).split()) or type(exc).__name__
            reasons.setdefault(why, []).append(p.structure.composition.reduced_formula)
        out.append(q)
    for why, formulas in reasons.items():
        warnings.warn(f"chgnet: {len(formulas)} proposal(s) ({formulas[0]}) not relaxed, kept as proposed: {why}",
                      stacklevel=2)
    return out
