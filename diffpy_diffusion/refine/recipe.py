"""The srfit FitRecipe behind a refinement: an Observation and a structure constrained to its space group.

:func:`build_recipe` returns a :class:`RecipeBundle`: the recipe (an ordinary
:class:`diffpy.srfit.fitbase.FitRecipe` a user can inspect, extend or re-run)
plus what the staged driver in :mod:`.optimize` needs: variable bounds, the tag
of each variable, and the fit-range data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DiffpyDiffusionError, NotAvailableError
from .compat import add_profile_generator, set_equation, set_observed_profile, set_profile
from .results import observation_sigma
from .symmetry import SymmetrizedStructure, element_of, symmetrize, to_diffpy, to_pymatgen

__all__ = ["RecipeBundle", "build_recipe", "polar_axes"]


@dataclass
class RecipeBundle:
    """A FitRecipe plus the handles the staged driver needs."""

    recipe: Any
    contribution: Any
    generator: Any
    profile: Any
    sym: SymmetrizedStructure
    kind: str
    bounds: dict[str, tuple[float, float]]
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray | None
    tags: dict[str, list[str]]
    fast: bool = True  # generator supports compute_batch
    #: extra (impurity) phases: (name, SymmetrizedStructure) in the order of the generator's extra_phases
    extra: list = None  # type: ignore[assignment]


def polar_axes(spacegroup) -> set[str]:
    """Axes ("x", "y", "z") along which every operation of ``spacegroup`` leaves a shift invariant."""
    axes = set()
    for i, c in enumerate("xyz"):
        e = np.zeros(3)
        e[i] = 1.0
        if all(np.allclose(np.asarray(op.R, float) @ e, e) for op in spacegroup.symop_list):
            axes.add(c)
    return axes


def _check_coordinate_constraints(recipe, phase, sym, names: list[str], step: float = 0.0137) -> list[str]:
    """Free coordinates whose constraint equations do not keep the space group.

    Each is moved by ``step`` alone; spglib (symprec 1e-3) must still find at
    least as many operations as the group has.  Returns the offending names.
    """
    import spglib

    if not names or sym.number == 1:
        return []
    nops = len(sym.spacegroup.symop_list)
    recipe._prepare()
    stru = phase.stru
    numbers = [hash(element_of(a.element)) % 100000 for a in stru]

    def n_ops() -> int:
        cell = (np.array(stru.lattice.base), np.array(stru.xyz), numbers)
        ds = spglib.get_symmetry_dataset(cell, symprec=1e-3)
        return 0 if ds is None else len(ds.rotations)

    bad = []
    for name in names:
        var = getattr(recipe, name)
        v = var.getValue()
        var.setValue(v + step)
        for con in recipe._oconstraints:
            con.update()
        if n_ops() < nops:
            bad.append(name)
        var.setValue(v)
        for con in recipe._oconstraints:
            con.update()
    return bad


def _plugin_pdf_calculator(kind: str = "pdf"):
    """A PDF calculator from a plugin's ``pdf_calculator`` hook (e.g. srreal), or None."""
    from ..plugins import get_pdf_calculator

    return get_pdf_calculator(kind)


def build_recipe(
    observation,
    structure,
    *,
    spacegroup_tol: float = 0.01,
    use_symmetry: bool = True,
    nbkg: int = 6,
    calculator: str = "auto",
    xrange: tuple[float | None, float | None] | None = None,
    default_uiso: float = 0.005,
    phases: list | None = None,
    instrument: str = "basic",
    instrument_params=None,
) -> RecipeBundle:
    """An srfit FitRecipe for ``observation`` with ``structure`` constrained to its space group.

    Parameters
    ----------
    observation : Observation
        kind "xrd" (2θ or Q) or "pdf" (r).
    structure : pymatgen.core.Structure or diffpy.structure.Structure
    spacegroup_tol : float
        spglib tolerance (Å) used to find the symmetry to constrain to.
    use_symmetry : bool
        False refines every coordinate in P1.
    nbkg : int
        Chebyshev background terms (XRD).
    calculator : {"auto", "torch", "srreal", "pdffit2"}
        PDF calculator inside the srfit recipe: "auto" uses a plugin's
        ``pdf_calculator`` (srreal) when one is installed, else the torch model
        (:class:`~diffpy_diffusion.refine.generators.TorchPDFGenerator`), which
        evaluates the whole finite-difference Jacobian as one batch: measured on
        Si, 8-atom cell, r = 0–60 Å, 6,000 points, one state 0.32 s with pdffit2
        against 0.046 s per state in a batch of 8 with torch, and the whole fit
        11 s against 78 s at the same Rw.  "pdffit2" uses pdffit2's C++ G(r)
        (same conventions, which tests check).
    xrange : (xmin, xmax), optional
        Fit range in the units of ``observation.x``.
    default_uiso : float
        Uiso (Å²) of atoms whose structure gives none.
    phases : list of structures, optional
        Extra (impurity or second) phases refined alongside (PXRD only): each gets a
        scale (tag ``phase_scale``), a lattice constrained to its space group
        (``phase_lat``) and a crystallite size (``phase_size``); coordinates and Uiso stay
        as given.  Variables are named ``<phase>_<par>`` with ``<phase>`` = ``p<k>_<formula>``.
    instrument : {"basic", "rietveld", "standard"}
        PXRD profile.  "basic": pseudo-Voigt with U, V, W, eta (tag ``profile``), Scherrer
        size, zero shift.  "rietveld": Thompson–Cox–Hastings peaks (Gaussian U, V, W tagged
        ``profile``, Lorentzian strain Y tagged ``lorentz``; the Lorentzian X/cosθ is the
        Scherrer size), axial asymmetry (``asym``), specimen displacement
        (``displacement``) and March–Dollase preferred orientation of every phase (``po``),
        along the normal of the main phase's strongest low-angle reflection.
        "standard": the "rietveld" profile fitted to a line-profile standard (Si, LaB6) to find the
        instrument: the Lorentzian X/cosθ is refined itself (tag ``lorentz``, with Y) and the
        crystallite size is switched off (:data:`STANDARD_SIZE_NM`); no specimen displacement or
        preferred orientation (a standard is a flat, random powder).
    instrument_params : InstrumentParameters, optional
        A diffractometer's profile refined once on a standard
        (:mod:`diffpy_diffusion.io.instrument_params`): implies ``instrument="rietveld"``; its
        wavelengths, U, V, W, X, Y, asymmetry, zero shift and polarisation are set and not refined.
        What stays free is the sample's: crystallite size (its Lorentzian adds to X), strain (Y may
        only grow above the instrument's Y, tag ``lorentz``), displacement and preferred orientation.

    Raises
    ------
    DiffpyDiffusionError
        Unknown kind or model, extra phases on a PDF, 2θ data without a wavelength, or a pattern
        whose wavelength differs from the instrument file's.
    """
    from diffpy.srfit.fitbase import FitContribution, FitRecipe, Profile
    from diffpy.srfit.structure import constrainAsSpaceGroup

    from .generators import TorchPDFGenerator, XRDGenerator

    if observation.kind not in ("xrd", "pdf"):
        raise DiffpyDiffusionError(f"cannot refine observation kind {observation.kind!r}")
    if instrument_params is not None:
        if observation.kind != "xrd":
            raise DiffpyDiffusionError("an instrument file (--instrument) applies to PXRD patterns, not to a PDF")
        instrument = "rietveld"
    if instrument not in ("basic", "rietveld", "standard"):
        raise DiffpyDiffusionError(f"unknown instrument model {instrument!r}: use 'basic' or 'rietveld'")
    if phases and observation.kind != "xrd":
        raise DiffpyDiffusionError("extra phases (--phase) can only be refined against a PXRD pattern")
    if not hasattr(structure, "lattice") or not hasattr(structure, "frac_coords"):
        structure = to_pymatgen(structure)  # diffpy.structure input
    sym = symmetrize(structure, tol=spacegroup_tol, use_symmetry=use_symmetry)
    stru = to_diffpy(sym.structure, default_uiso=default_uiso, spacegroup=sym.symbol)

    x = np.asarray(observation.x, float)
    y = np.asarray(observation.y, float)
    sigma = observation_sigma(observation)
    mask = np.isfinite(x) & np.isfinite(y)
    if xrange is not None:
        lo, hi = xrange
        if lo is not None:
            mask &= x >= lo
        if hi is not None:
            mask &= x <= hi
    x, y = x[mask], y[mask]
    sigma = None if sigma is None else sigma[mask]
    if len(x) < 10:
        raise DiffpyDiffusionError(
            f"pattern too short to refine: {len(x)} points in the fit range (need at least 10)"
        )

    profile = Profile()
    set_observed_profile(profile, x, y, sigma)
    kind = observation.kind
    fast = True
    if kind == "xrd":
        lines = _emission_lines(observation, instrument_params)
        if observation.x_kind == "2theta" and not lines["wavelength"]:
            raise DiffpyDiffusionError("2θ data needs a wavelength to refine (e.g. --wavelength CuKa)")
        gen = XRDGenerator("xrd", nbkg=nbkg, peak_shape="pv" if instrument == "basic" else "tch")
        gen.bkg_domain = (float(x.min()), float(x.max()))
        profile.meta.update(
            {
                "wavelength": lines["wavelength"] or 1.540598,
                "wavelength2": lines["wavelength2"],
                "ka2_ratio": lines["ka2_ratio"],
                "x_kind": observation.x_kind,
                "radiation": observation.radiation,
            }
        )
        if instrument_params is not None:
            profile.meta["monochromator_2theta_deg"] = instrument_params.monochromator_2theta_deg
    else:
        gen = None
        if calculator == "pdffit2":
            from .generators import HookPDFGenerator, pdffit2_pdf

            gen = HookPDFGenerator(pdffit2_pdf, "pdf")
        elif calculator in ("auto", "srreal"):
            calc = _plugin_pdf_calculator("pdf")
            # the built-in torch calculator (builtins/pdf.py) brings a generator that batches all states
            own = getattr(calc, "profile_generator", None)
            if own is not None and calculator == "auto":
                gen = own("pdf")
            elif calc is not None and own is None:
                from .generators import HookPDFGenerator

                gen = HookPDFGenerator(calc, "pdf")
            elif calculator == "srreal":
                raise NotAvailableError(
                    "calculator='srreal' needs diffpy.srreal and the diffpy-diffusion-srreal plugin"
                )
        if gen is None:
            gen = TorchPDFGenerator("pdf")
        profile.meta["stype"] = "N" if observation.radiation == "neutron" else "X"
        if observation.qmax:
            profile.meta["qmax"] = float(observation.qmax)
        if observation.qmin:
            profile.meta["qmin"] = float(observation.qmin)
    gen.setStructure(stru, "phase", periodic=True)
    contribution = FitContribution(kind)
    add_profile_generator(contribution, gen)
    set_profile(contribution, profile, xname="x" if kind == "xrd" else "r")
    set_equation(contribution, gen.name)

    recipe = FitRecipe(f"{kind}fit")
    recipe.clearFitHooks()  # srfit prints every evaluation by default
    recipe.addContribution(contribution)

    phase = gen.phase if hasattr(gen, "phase") else gen._phase
    sgp = constrainAsSpaceGroup(phase, sym.spacegroup, constrainadps=False)
    bounds: dict[str, tuple[float, float]] = {}
    tags: dict[str, list[str]] = {}

    def add(par, name, tag, lo=-np.inf, hi=np.inf, value=None):
        recipe.addVar(par, value=value, name=name, tag=tag)
        bounds[name] = (lo, hi)
        tags.setdefault(tag, []).append(name)

    add(gen.scale, "scale", "scale", 0.0, np.inf)
    for p in sgp.latpars:
        v = p.getValue()
        if p.name in ("a", "b", "c"):
            add(p, p.name, "lat", 0.7 * v, 1.3 * v)
        else:
            add(p, p.name, "lat", max(v - 20, 30), min(v + 20, 150))
    # In polar space groups the origin floats along the polar axes: keep the first
    # free coordinate along each one fixed, or the fit is singular.
    polar = polar_axes(sym.spacegroup)
    for p in sgp.xyzpars:
        axis = p.name.split("_")[0]
        if axis in polar:
            polar.discard(axis)
            continue
        v = p.getValue()
        add(p, p.name, "xyz", v - 0.25, v + 0.25)
    broken = _check_coordinate_constraints(recipe, phase, sym, tags.get("xyz", []))
    for name in broken:
        # diffpy.structure writes a wrong formula for some trigonal/hexagonal sites such
        # as (-2x, -x, z); such a coordinate stays fixed (and symmetric) instead.
        recipe.delVar(getattr(recipe, name))
        tags["xyz"].remove(name)
        bounds.pop(name, None)
    # Uiso per element: isotropic ADPs are symmetry invariant, so this keeps symmetry.
    elements: dict[str, list] = {}
    for scat in phase.getScatterers():
        elements.setdefault(element_of(scat.element), []).append(scat)
    for el, scats in elements.items():
        u0 = float(np.mean([s.Uiso.getValue() for s in scats]))
        if not np.isfinite(u0) or u0 <= 0:
            u0 = default_uiso
        name = f"Uiso_{el}"
        var = recipe.newVar(name, value=u0, tag="adp")
        bounds[name] = (0.0, 0.1)
        tags.setdefault("adp", []).append(name)
        for s in scats:
            recipe.constrain(s.Uiso, var)
    extra = []
    if kind == "xrd":
        add(gen.size_nm, "size_nm", "size", 0.3, 1000.0)
        for k in range(gen.nbkg):
            add(gen.get(f"bkg_{k}"), f"bkg_{k}", "bkg")
        if instrument_params is not None:
            _fix_instrument(gen, add, instrument_params, observation.x_kind)
        else:
            add(gen.zero_deg, "zero_deg", "zero", -1.0, 1.0)
            for n in ("U", "V", "W"):
                add(gen.get(n), n, "profile",
                    *(_RIETVELD_BOUNDS[n] if instrument != "basic" else (-np.inf, np.inf)))
        if instrument == "standard":
            _add_standard_vars(gen, add, x, observation.x_kind)
        elif instrument == "rietveld":
            if instrument_params is None:
                _add_rietveld_vars(gen, add, x, observation.x_kind)
            gen.po_hkl[""] = _po_direction(sym.structure, observation)
        else:
            add(gen.eta, "eta", "profile", 0.0, 1.0)
        for k, extra_structure in enumerate(phases or []):
            extra.append(_add_extra_phase(gen, k, extra_structure, add, spacegroup_tol, default_uiso,
                                          observation, instrument))
    else:
        add(gen.delta2, "delta2", "peak", 0.0, 20.0)
        add(gen.qdamp, "qdamp", "qdamp", 0.0, 0.5)
        if getattr(gen, "spdiameter", None) is not None and hasattr(gen, "compute_batch"):
            add(gen.spdiameter, "spdiameter", "size", 3.0, 5000.0)
    recipe.fix("all")
    return RecipeBundle(recipe, contribution, gen, profile, sym, kind, bounds, x, y, sigma, tags, fast, extra)


#: Bounds of the Rietveld instrument variables (degrees 2θ, or deg² for U, V, W): wide enough for lab
#: and synchrotron patterns (TOPAS's refined TCHZ values for the crystalyze_8 patterns lie within them).
_RIETVELD_BOUNDS = {
    "U": (-2.0, 2.0), "V": (-2.0, 2.0), "W": (0.0, 2.0), "Y": (0.0, 2.0),
    "axial_deg": (0.0, 2.0), "displacement_deg": (-1.0, 1.0), "march_dollase": (0.3, 3.0),
}


def _add_rietveld_vars(gen, add, x: np.ndarray, x_kind: str) -> None:
    """The TCH, asymmetry, displacement and preferred-orientation variables, with their start values."""
    # a Gaussian of FWHM two grid steps to start from: W = 0 would put the fit on the kink of √W
    step = float(np.median(np.diff(x))) if len(x) > 1 else 0.01
    gen.get("W").setValue((2.0 * step) ** 2 if x_kind == "2theta" else 0.0)
    add(gen.get("Y"), "Y", "lorentz", *_RIETVELD_BOUNDS["Y"])
    if x_kind == "2theta":  # the angular aberrations are defined in 2θ
        add(gen.get("axial_deg"), "axial_deg", "asym", *_RIETVELD_BOUNDS["axial_deg"])
        add(gen.get("displacement_deg"), "displacement_deg", "displacement", *_RIETVELD_BOUNDS["displacement_deg"])
    add(gen.get("march_dollase"), "march_dollase", "po", *_RIETVELD_BOUNDS["march_dollase"])


#: Largest difference (Å) between a pattern's wavelength and its instrument file's that is still the same
#: emission line: tube tables differ in the 5th decimal (Cu Kα1 1.540562 vs 1.540598 Å), a wrong tube by > 0.1 Å.
WAVELENGTH_MATCH_A = 1e-3


def _emission_lines(observation, instrument_params) -> dict:
    """Wavelength(s) and Kα2 ratio: the instrument file's when given (checked against the pattern's), else the
    pattern's."""
    if instrument_params is None:
        return {"wavelength": observation.wavelength, "wavelength2": observation.wavelength2,
                "ka2_ratio": observation.ka2_ratio}
    ip = instrument_params
    if observation.wavelength and abs(float(observation.wavelength) - ip.wavelength) > WAVELENGTH_MATCH_A:
        raise DiffpyDiffusionError(
            f"the pattern's wavelength {float(observation.wavelength):.5f} Å differs from the instrument "
            f"file's {ip.wavelength:.5f} Å: use an instrument file refined with the same radiation")
    return {"wavelength": ip.wavelength, "wavelength2": ip.wavelength2, "ka2_ratio": ip.ka2_ratio}


def _fix_instrument(gen, add, ip, x_kind: str) -> None:
    """Set the instrument file's profile on ``gen`` (not refined) and add the sample's own profile variables.

    The sample's microstrain broadens like the instrument's Y tanθ term and adds to it (Lorentzian
    widths add), so Y is refined from the instrument's value upwards; the size adds to X the same way
    (the Scherrer term). Displacement and preferred orientation belong to the specimen.
    """
    for name, value in ip.profile_values().items():
        gen.get(name).setValue(value)
    add(gen.get("Y"), "Y", "lorentz", float(ip.Y), max(_RIETVELD_BOUNDS["Y"][1], float(ip.Y) + 1.0))
    if x_kind == "2theta":
        add(gen.get("displacement_deg"), "displacement_deg", "displacement", *_RIETVELD_BOUNDS["displacement_deg"])
    add(gen.get("march_dollase"), "march_dollase", "po", *_RIETVELD_BOUNDS["march_dollase"])


#: Crystallite size (nm) of a line-profile standard's fit: Scherrer width below 1e-4° 2θ (negligible; its
#: Lorentzian width is refined as the instrument's X instead).  A size, not "none", because the size
#: variable must exist for the linear start.
STANDARD_SIZE_NM = 1e5


def _add_standard_vars(gen, add, x: np.ndarray, x_kind: str) -> None:
    """The variables of a line-profile standard's fit: X and Y (``lorentz``) and the asymmetry; no size."""
    step = float(np.median(np.diff(x))) if len(x) > 1 else 0.01
    gen.get("W").setValue((2.0 * step) ** 2 if x_kind == "2theta" else 0.0)  # see _add_rietveld_vars
    gen.get("size_nm").setValue(STANDARD_SIZE_NM)
    add(gen.get("X"), "X", "lorentz", *_RIETVELD_BOUNDS["Y"])
    add(gen.get("Y"), "Y", "lorentz", *_RIETVELD_BOUNDS["Y"])
    if x_kind == "2theta":
        add(gen.get("axial_deg"), "axial_deg", "asym", *_RIETVELD_BOUNDS["axial_deg"])


def _po_direction(structure, observation) -> tuple[int, int, int]:
    """Preferred-orientation axis: the normal of the strongest reflection among the lowest-angle ones.

    Plates and needles usually grow with a short-period, strongly scattering plane as the face; for a
    cubic cell every axis is equivalent and (0, 0, 1) is returned.
    """
    try:
        from pymatgen.analysis.diffraction.xrd import XRDCalculator

        if structure.lattice.is_orthogonal and len(set(np.round(structure.lattice.abc, 4))) == 1:
            return (0, 0, 1)
        lam = float(observation.wavelength or 1.540598)
        pat = XRDCalculator(wavelength=lam).get_pattern(structure, two_theta_range=(0, min(60.0, 170.0)))
        # among the first five peaks, the strongest
        k = int(np.argmax(pat.y[:5]))
        hkl = pat.hkls[k][0]["hkl"]
        h = tuple(int(v) for v in hkl[-3:]) if len(hkl) >= 3 else (0, 0, 1)
        return h if any(h) else (0, 0, 1)
    except Exception:  # a courtesy start: fall back to c
        return (0, 0, 1)


def phase_label(k: int, structure) -> str:
    """Variable prefix of extra phase ``k`` (0-based): ``p<k+1>_<reduced formula>`` as an identifier."""
    import re

    formula = structure.composition.reduced_formula if hasattr(structure, "composition") else "phase"
    return f"p{k + 1}_" + re.sub(r"\W", "_", formula)


def _add_extra_phase(gen, k, structure, add, spacegroup_tol, default_uiso, observation, instrument):
    """Symmetrize ``structure``, add it to ``gen`` and its variables (scale, lattice, size, PO) to ``recipe``."""
    from diffpy.srfit.structure import constrainAsSpaceGroup

    if not hasattr(structure, "lattice") or not hasattr(structure, "frac_coords"):
        structure = to_pymatgen(structure)
    sym = symmetrize(structure, tol=spacegroup_tol, use_symmetry=True)
    name = phase_label(k, sym.structure)
    stru = to_diffpy(sym.structure, default_uiso=default_uiso, spacegroup=sym.symbol)
    parset = gen.add_phase(stru, name, po_hkl=_po_direction(sym.structure, observation))
    sgp = constrainAsSpaceGroup(parset, sym.spacegroup, constrainadps=False)
    add(gen.get(f"scale_{name}"), f"scale_{name}", "phase_scale", 0.0, np.inf)
    for p in sgp.latpars:
        v = p.getValue()
        if p.name in ("a", "b", "c"):
            add(p, f"{name}_{p.name}", "phase_lat", 0.95 * v, 1.05 * v)
        else:
            add(p, f"{name}_{p.name}", "phase_lat", max(v - 5, 30), min(v + 5, 150))
    add(gen.get(f"size_nm_{name}"), f"size_nm_{name}", "phase_size", 0.3, 1000.0)
    if instrument == "rietveld":
        add(gen.get(f"march_dollase_{name}"), f"march_dollase_{name}", "po", *_RIETVELD_BOUNDS["march_dollase"])
    return name, sym
