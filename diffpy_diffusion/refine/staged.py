"""Staged refinement: :func:`refine_structure`, the entry point of the refine package.

Builds the recipe (:mod:`.recipe`), frees the variables stage by stage
(:data:`DEFAULT_STAGES`) and drives each stage with :mod:`.optimize`; the
result and its figures of merit are a :class:`~.results.RefinementResult`.
``engine="pdffit2"`` hands the whole fit to :mod:`.pdffit2_engine` instead.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np

from ..errors import DiffpyDiffusionError
from .optimize import (
    ResidualProblem,
    blas_one_thread,
    free_names,
    linear_size_scan,
    linear_start,
    restore,
    run_stage,
    set_size_scale_background,
    snapshot,
    update_constraints,
)
from .recipe import RecipeBundle, build_recipe
from .results import RefinementResult, parameter_esds, rw_factor
from .symmetry import to_pymatgen

__all__ = ["refine_structure", "DEFAULT_STAGES", "RIETVELD_STAGES", "STANDARD_STAGES", "PDF_EARLY_RMAX",
           "SIZE_KERNELS", "SIZE_KERNEL_MARGIN"]


#: PDF fits over a longer r range first refine every stage up to this r (Å), then once more over
#: the whole range: at 60 Å a poor qdamp start traps lattice and scale in a false minimum
#: (measured Ni, 0.01–60 Å: Rw 0.55 fitted directly, vs 0.08 over 1.5–20 Å).
PDF_EARLY_RMAX = 20.0

#: Staged strategy per pattern kind: each stage frees the union of the tags so far.
DEFAULT_STAGES: dict[str, list[list[str]]] = {
    "xrd": [["scale", "bkg"], ["lat", "size", "zero"], ["xyz"], ["adp"]],
    "pdf": [["scale"], ["lat", "size"], ["xyz"], ["adp", "peak"]],
}

#: Stages of ``instrument="rietveld"`` (PXRD): the linear terms (solved exactly first), cells and zero,
#: then the peak widths (size, Gaussian U, V, W), the Lorentzian strain, coordinates, ADPs with the
#: preferred orientation, and last the asymmetry and specimen displacement, which only move peak
#: shapes and positions slightly once everything else is close.  ``phase_*`` tags are the extra phases.
RIETVELD_STAGES: list[list[str]] = [
    ["scale", "bkg", "phase_scale"],
    ["lat", "zero", "phase_lat"],
    ["size", "phase_size", "profile"],
    ["lorentz"],
    ["xyz"],
    ["adp", "po"],
    ["asym", "displacement"],
]


#: Stages of ``instrument="standard"`` (a line-profile standard refined to find the instrument): the cell is
#: the standard's certified one and stays fixed, so the zero shift is found against it; then the Gaussian
#: and Lorentzian widths together, the ADPs (peak intensities) and last the asymmetry.
STANDARD_STAGES: list[list[str]] = [
    ["scale", "bkg"],
    ["zero"],
    ["profile", "lorentz"],
    ["adp"],
    ["asym"],
]


#: Shapes of the size broadening that ``size_kernel="auto"`` chooses from, by the fit (PXRD):
#: the Scherrer Lorentzian, a Gaussian of the Scherrer FWHM, and the sinc² Laue function of a
#: finite crystal (see :func:`~diffpy_diffusion.physics.xrd.xrd_profile`).  PXRDnet's "sinc" has
#: negative lobes (no sample gives negative intensity) and is not among them.
SIZE_KERNELS = ("scherrer", "gauss", "sinc2")
#: ``size_kernel="auto"`` leaves the Lorentzian only for a shape whose Rw after the stage that
#: refines the size is lower by more than this fraction: on a pattern whose broadening the
#: instrument dominates the shapes tie, and the conventional Scherrer Lorentzian stays.
SIZE_KERNEL_MARGIN = 0.02
#: Sizes tried for each shape's start, as factors on the size of equal FWHM (``linear_size_scan``).
_KERNEL_SIZE_FACTORS = (0.8, 0.9, 1.0, 1.1, 1.25)


def _start_with_kernel(bundle: RecipeBundle, problem: ResidualProblem, kernel: str) -> None:
    """Switch the generator to the size shape ``kernel``, starting from the size of the same FWHM as the
    current one (the best of a few around it, scale and background solved exactly)."""
    from ..physics.xrd import size_fwhm_q

    gen, recipe = bundle.generator, bundle.recipe
    size = float(recipe.size_nm.getValue())
    fw = float(size_fwhm_q(size, 0.9, gen.size_kernel))
    gen.size_kernel = kernel
    if not size > 0:
        return
    update_constraints(recipe, [])
    s_eq = float(size_fwhm_q(1.0, 0.9, kernel)) / fw  # the size of the same FWHM, nm
    cost, s_best, coef = linear_size_scan(bundle, problem, [s_eq * f for f in _KERNEL_SIZE_FACTORS])
    if np.isfinite(cost):
        set_size_scale_background(bundle, s_best, coef)


#: What a stage that does not converge raises (its state is then undone).
_STAGE_ERRORS = (ValueError, np.linalg.LinAlgError, FloatingPointError)


def _stage_rw(r, prob: ResidualProblem) -> float:
    """Rw of a stage's result on the grid it used (least_squares never ends above its start)."""
    return float(np.sqrt(np.sum(r.fun**2) / max(np.sum((prob.y * prob.w) ** 2), 1e-300)))


def _size_kernel_trials(bundle: RecipeBundle, prob: ResidualProblem, freed, snap, first, max_nfev: int,
                        last: bool, solver: str):
    """``size_kernel="auto"``: the stage just run (``first`` = its (Rw, result), with the generator's
    current shape) run again from its start ``snap`` with every other shape of :data:`SIZE_KERNELS`.

    Keeps the shape of lowest Rw (the starting one unless another is better by more than
    :data:`SIZE_KERNEL_MARGIN`), leaves the recipe at that shape's optimum and returns
    ``(result, rw, log entry)``.
    """
    gen, recipe = bundle.generator, bundle.recipe
    start_kernel = gen.size_kernel
    trials = {start_kernel: (first[0], first[1], snapshot(recipe))}
    for kern in SIZE_KERNELS:
        if kern in trials:
            continue
        restore(recipe, snap)
        gen.size_kernel = start_kernel  # the start's size is of this shape
        _start_with_kernel(bundle, prob, kern)
        try:
            rk = run_stage(bundle, prob, freed, max_nfev, final=last, solver=solver)
        except _STAGE_ERRORS:
            continue
        if rk is not None and np.isfinite(rwk := _stage_rw(rk, prob)):
            trials[kern] = (rwk, rk, snapshot(recipe))
    choice = min(trials, key=lambda k: trials[k][0])
    if not trials[choice][0] < (1 - SIZE_KERNEL_MARGIN) * trials[start_kernel][0]:
        choice = start_kernel
    gen.size_kernel = choice
    rw, r, chosen = trials[choice]
    restore(recipe, chosen)
    return r, rw, {"size_kernel": choice, "rw_by_kernel": {k: v[0] for k, v in trials.items()}}


def _final_stride(bundle: RecipeBundle, stride: int) -> int:
    """Sub-grid stride still fine enough for the last PXRD stage: ≥ 6 points per Scherrer FWHM.

    Broad nanocrystal peaks on a fine step scan need not be evaluated at every
    point; sharp peaks (large crystallites) fall back to the full grid.
    """
    if stride <= 1 or bundle.kind != "xrd":
        return 1
    gen = bundle.generator
    size_nm = float(gen.size_nm.getValue())
    if not size_nm > 0:
        return 1
    from ..physics.xrd import size_fwhm_q

    dx = float(np.median(np.diff(bundle.x)))
    # K = 0.9: the Scherrer constant XRDGenerator's xrd_pattern call uses (its default)
    fwhm_q = float(size_fwhm_q(size_nm, shape_factor=0.9, size_kernel=gen.size_kernel))  # Å⁻¹
    if gen.x_kind == "q":
        fwhm = fwhm_q
    else:
        # dQ = (2π/λ) cos θ d(2θ); Scherrer peaks are narrowest in 2θ at low angle
        theta = np.radians(float(np.min(bundle.x)) / 2)
        fwhm = np.degrees(fwhm_q * float(gen.wavelength) / (2 * np.pi * np.cos(theta)))
    return int(max(1, min(stride, fwhm / (6 * dx))))


def refine_structure(
    observation,
    structure,
    *,
    engine: str = "srfit",
    stages: Sequence[Sequence[str]] | None = None,
    spacegroup_tol: float = 0.01,
    use_symmetry: bool = True,
    nbkg: int = 6,
    calculator: str = "auto",
    xrange: tuple[float | None, float | None] | None = None,
    max_nfev: int = 60,
    start: dict[str, float] | None = None,
    keep_recipe: bool = True,
    max_points: int | None = 600,
    max_coord_vars: int | None = 36,
    solver: str = "auto",
    phases: Sequence | None = None,
    instrument: str = "basic",
    instrument_params=None,
    skip_final_above: float | None = None,
    size_kernel: str | None = None,
) -> RefinementResult:
    """Refine ``structure`` against ``observation`` with space-group constraints.

    Parameters
    ----------
    observation : Observation
        PXRD (2θ/Q) or PDF (r).
    structure : pymatgen.core.Structure or diffpy.structure.Structure
        Starting model (any cell; it is standardized by spglib first).
    engine : {"srfit", "pdffit2"}
        "pdffit2" (PDF only) refines with pdffit2 itself, PDFgui-style.
    stages : list of list of str, optional
        Tags freed per stage (cumulative).  Tags: scale, bkg, lat, size, zero,
        profile (U, V, W, eta), xyz, adp (Uiso per element), peak (delta2), qdamp.
        Default :data:`DEFAULT_STAGES`; ``qdamp`` is added to the last PDF stage
        when the observation carries no qdamp.
    spacegroup_tol : float
        spglib symprec (Å) for the symmetry the refinement is constrained to.
    use_symmetry : bool
        False refines in P1.
    nbkg : int
        Chebyshev background terms (PXRD).
    calculator : {"auto", "torch", "srreal", "pdffit2"}
        PDF calculator (see :func:`build_recipe`).
    xrange : (min, max), optional
        Fit range in data units.
    max_nfev : int
        least_squares iterations per stage.
    start : dict, optional
        Starting values by variable name, e.g. ``{"size_nm": 3, "qdamp": 0.05, "W": 0.01}``.
    max_points : int or None
        All stages but the last use a uniform sub-grid of at most about this
        many points (speed); the last stage and every reported figure use all
        points.  None: always all points.
    max_coord_vars : int or None
        Skip the coordinate stage when symmetry leaves more free coordinates than
        this (a P1 proposal of 20 atoms has 57; its fit would be slow and ill
        determined by a powder pattern).  The message says so.  None: no limit.
    solver : {"auto", "lm", "trf"}
        "auto": "lm" for stages with more than 15 free variables, else "trf".
        "lm": Levenberg–Marquardt with Broyden updates between batched
        finite-difference Jacobians (fewer physics calls); "trf":
        :func:`scipy.optimize.least_squares` (trust-region reflective).
    phases : sequence of structures, optional
        Known extra phases (impurities) refined alongside, PXRD only: scale, cell and
        crystallite size of each (see :func:`~.recipe.build_recipe`).
    instrument : {"basic", "rietveld", "standard"}
        PXRD profile model.  "rietveld" (measured patterns): Thompson–Cox–Hastings
        peaks, axial asymmetry, specimen displacement and March–Dollase preferred
        orientation, refined in :data:`RIETVELD_STAGES` unless ``stages`` is given.
        "standard": the same profile fitted to a line-profile standard to find the instrument
        (:data:`STANDARD_STAGES`; see :func:`~.recipe.build_recipe`).
    instrument_params : InstrumentParameters, optional
        The diffractometer's profile from an instrument file
        (:func:`diffpy_diffusion.io.instrument_params.read_instrument`), held fixed; implies
        ``instrument="rietveld"`` (see :func:`~.recipe.build_recipe`).
    skip_final_above : float, optional
        Rw (fraction) above which the last stage is not run when it would run on a finer grid
        than the stages before it (a long measured scan, a Rietveld fit): a candidate that after every earlier
        stage still fits this badly is reported as it stands, its Rw and ``y_calc`` on all points
        but without parameter esds, and ``message`` says so.  The caller sets it from the
        candidates already refined (:func:`diffpy_diffusion.pipeline.refine_candidates`).
        A candidate above it after the first stage that refines the size also skips the
        ``size_kernel="auto"`` trials and keeps the starting shape.  None (default): every stage runs.
    size_kernel : {"auto", "scherrer", "gauss", "sinc2"}, optional
        Shape of the size broadening (PXRD; see :func:`~diffpy_diffusion.physics.xrd.xrd_profile`).
        "auto" runs the first stage that refines the size once per shape of :data:`SIZE_KERNELS`
        (each from the size of the same FWHM) and keeps the one of lowest Rw (the Lorentzian
        unless another is better by more than :data:`SIZE_KERNEL_MARGIN`).  The shape matters where it
        dominates the peaks: a 10 nm pattern made with sinc² peaks refines to Rw 0.17 with
        Lorentzians and 0.01 with sinc², and the extra freedom of a wrong, lower-symmetry model
        would otherwise absorb the misfit.  Default: "auto" for ``instrument="basic"``, the
        Lorentzian otherwise (the Thompson–Cox–Hastings widths describe measured peak shapes).
        The shape used is ``result.instrument["size_kernel"]``.

    Returns
    -------
    RefinementResult

    Raises
    ------
    DiffpyDiffusionError
        Pattern too short, unknown engine or kind.
    """
    with blas_one_thread():
        return _refine_structure(
            observation, structure, engine=engine, stages=stages, spacegroup_tol=spacegroup_tol,
            use_symmetry=use_symmetry, nbkg=nbkg, calculator=calculator, xrange=xrange, max_nfev=max_nfev,
            start=start, keep_recipe=keep_recipe, max_points=max_points, max_coord_vars=max_coord_vars,
            solver=solver, phases=phases, instrument=instrument, instrument_params=instrument_params,
            skip_final_above=skip_final_above, size_kernel=size_kernel,
        )


def _start_extra_phases(bundle: RecipeBundle, problem: ResidualProblem) -> None:
    """Scales of all phases and the background by non-negative linear least squares; extra phases
    start at the main phase's crystallite size."""
    from scipy.optimize import lsq_linear

    from .generators import chebyshev_background

    gen, recipe = bundle.generator, bundle.recipe
    names = list(gen.extra_phases)
    update_constraints(recipe, [])
    st = gen.state()
    base = dict(st)
    base.update(scale=1.0, **{f"bkg_{k}": 0.0 for k in range(gen.nbkg)}, **{f"scale_{n}": 0.0 for n in names})
    states = [base]
    for n in names:
        d = dict(base)
        d.update({"scale": 0.0, f"scale_{n}": 1.0, f"size_nm_{n}": st["size_nm"]})
        states.append(d)
    Y = problem.model_batch(states)
    V = np.stack([chebyshev_background(problem.x, np.eye(gen.nbkg)[k], gen.bkg_domain)
                  for k in range(gen.nbkg)], 1)
    A = np.column_stack([Y.T, V]) * problem.w[:, None]
    lo = np.r_[np.zeros(1 + len(names)), np.full(gen.nbkg, -np.inf)]
    sol = lsq_linear(A, problem.y * problem.w, bounds=(lo, np.full(len(lo), np.inf))).x
    recipe.scale.setValue(max(float(sol[0]), 1e-12))
    for k, n in enumerate(names):
        getattr(recipe, f"scale_{n}").setValue(float(sol[1 + k]))
        getattr(recipe, f"size_nm_{n}").setValue(float(st["size_nm"]))
    for k in range(gen.nbkg):
        recipe.get(f"bkg_{k}").setValue(float(sol[1 + len(names) + k]))


#: Crystallite sizes (nm) tried for the start of a Rietveld fit of a measured pattern: the instrument
#: profile takes the sharpest peaks, so the start only needs the order of magnitude of the sample broadening.
RIETVELD_START_SIZES_NM = (10.0, 30.0, 100.0, 300.0)


def _rietveld_start_size(bundle: RecipeBundle, problem: ResidualProblem) -> None:
    """Set the start size (and scale/background) to the best of :data:`RIETVELD_START_SIZES_NM`.

    One state per size: the default size scan of :func:`~.optimize.linear_start` goes down to 1 nm,
    whose broad peaks cost most on a fine measured scan and are not what a Rietveld start needs.
    """
    recipe = bundle.recipe
    best = None
    for size in RIETVELD_START_SIZES_NM:
        recipe.size_nm.setValue(size)
        linear_start(bundle, problem)
        update_constraints(recipe, [])
        r = problem.residual([])
        cost = float(np.dot(r, r))
        if best is None or cost < best[0]:
            best = (cost, size)
    recipe.size_nm.setValue(best[1])


def _refine_structure(observation, structure, *, engine, stages, spacegroup_tol, use_symmetry, nbkg, calculator,
                      xrange, max_nfev, start, keep_recipe, max_points, max_coord_vars,
                      solver="auto", phases=None, instrument="basic", instrument_params=None,
                      skip_final_above=None, size_kernel=None) -> RefinementResult:
    t0 = time.perf_counter()
    if engine == "pdffit2":
        if phases:
            raise DiffpyDiffusionError("extra phases need the srfit engine (PXRD), not pdffit2")
        from .pdffit2_engine import refine_pdffit2

        return refine_pdffit2(
            observation, structure, stages=stages, spacegroup_tol=spacegroup_tol, use_symmetry=use_symmetry,
            xrange=xrange, start=start,
        )
    if engine != "srfit":
        raise DiffpyDiffusionError(f"unknown refinement engine {engine!r}: use 'srfit' or 'pdffit2'")
    bundle = build_recipe(
        observation, structure, spacegroup_tol=spacegroup_tol, use_symmetry=use_symmetry, nbkg=nbkg,
        calculator=calculator, xrange=xrange, phases=list(phases or []), instrument=instrument,
        instrument_params=instrument_params,
    )
    if instrument_params is not None:
        instrument = "rietveld"
    auto_kernel = False
    if bundle.kind == "xrd":
        kern = size_kernel or ("auto" if instrument == "basic" else "scherrer")
        if kern != "auto" and kern not in SIZE_KERNELS:
            raise DiffpyDiffusionError(f"unknown size kernel {size_kernel!r}: use 'auto' or one of "
                                       + ", ".join(SIZE_KERNELS))
        auto_kernel = kern == "auto" and bundle.fast
        bundle.generator.size_kernel = "scherrer" if kern == "auto" else kern
    recipe = bundle.recipe
    for name in getattr(bundle.generator, "extra_phases", []):
        getattr(recipe, f"scale_{name}").setValue(0.0)  # linear_start solves the main phase alone first
    start = dict(start or {})
    if bundle.kind == "xrd" and observation.size_nm and "size_nm" not in start:
        start["size_nm"] = float(observation.size_nm)
    if bundle.kind == "pdf":
        if observation.qdamp is not None and "qdamp" not in start:
            start["qdamp"] = float(observation.qdamp)
        if observation.qbroad is not None:
            bundle.generator.qbroad.setValue(float(observation.qbroad))
        if observation.size_nm and "spdiameter" in bundle.bounds and "spdiameter" not in start:
            start["spdiameter"] = 10.0 * float(observation.size_nm)
    for k, v in start.items():
        if k in recipe._parameters:
            getattr(recipe, k).setValue(float(v))
        elif hasattr(bundle.generator, k):
            getattr(bundle.generator, k).setValue(float(v))
    full = ResidualProblem(bundle)
    early_xmax = None
    if bundle.kind == "pdf" and bundle.fast and float(np.max(bundle.x)) > 1.5 * PDF_EARLY_RMAX:
        early_xmax = PDF_EARLY_RMAX
    n_early = int(np.sum(bundle.x <= early_xmax)) if early_xmax else len(bundle.x)
    stride = int(np.ceil(n_early / max_points)) if (max_points and bundle.fast) else 1
    coarse = ResidualProblem(bundle, stride, early_xmax) if (stride > 1 or early_xmax) else full
    if instrument == "standard":
        from .recipe import STANDARD_SIZE_NM

        start["size_nm"] = STANDARD_SIZE_NM  # also what linear_start keeps
    if bundle.kind == "xrd" and instrument == "rietveld" and bundle.fast and "size_nm" not in start:
        _rietveld_start_size(bundle, coarse)
    linear_start(bundle, coarse)
    if bundle.kind == "xrd" and bundle.generator.extra_phases and bundle.fast:
        _start_extra_phases(bundle, coarse)

    if stages is None and bundle.kind == "xrd" and instrument == "rietveld":
        stages = [list(s) for s in RIETVELD_STAGES]
    if stages is None and bundle.kind == "xrd" and instrument == "standard":
        stages = [list(s) for s in STANDARD_STAGES]
    if stages is None:
        stages = [list(s) for s in DEFAULT_STAGES[bundle.kind]]
        if bundle.kind == "xrd" and bundle.generator.extra_phases:
            stages[0] += ["phase_scale"]
            stages[1] += ["phase_lat", "phase_size"]
        if bundle.kind == "pdf":
            if observation.qdamp is None:
                stages[-1].append("qdamp")
            if not observation.size_nm:
                stages = [[t for t in s if t != "size"] for s in stages]
    freed: list[str] = []
    stage_log = []
    res = None
    converged = True
    message = ""
    n_xyz = len(bundle.tags.get("xyz", []))
    if max_coord_vars is not None and n_xyz > max_coord_vars:
        stages = [[t for t in s if t != "xyz"] for s in stages]
        message = f"coordinates not refined: {n_xyz} free coordinates > max_coord_vars={max_coord_vars}"
    best_snap = None
    last_ok = False
    skipped_final = False
    prev_rw = None  # Rw of the last stage run (on its grid)
    # Drop stages that free nothing new (e.g. coordinates in Fm-3m).
    effective, seen = [], []
    for st in stages:
        if [n for t in st if t not in seen for n in bundle.tags.get(t, [])]:
            effective.append(list(st))
        seen += [t for t in st if t not in seen]
    n_vars = len({n for t in seen for n in bundle.tags.get(t, [])})
    if n_vars >= len(bundle.x):  # checked before fitting: an underdetermined fit's Rw means nothing
        raise DiffpyDiffusionError(
            f"pattern too short to refine: {len(bundle.x)} points in the fit range for {n_vars} refined "
            "parameters (need more points than parameters)")
    linear_tags = {"scale", "bkg", "phase_scale"}
    if early_xmax and effective:
        # every stage on r <= PDF_EARLY_RMAX, then all of them once more over the whole range
        effective.append([])
    for k, st in enumerate(effective):
        freed_before = freed
        freed = freed + [t for t in st if t not in freed]
        last = k == len(effective) - 1
        if k == 0 and not last and bundle.fast and set(freed) <= linear_tags:
            # scale/background are linear: linear_start already solved them exactly
            stage_log.append({"tags": list(st), "rw": None, "nfev": 0, "linear": True})
            continue
        snap = snapshot(recipe)
        t_stage = time.perf_counter()
        prob = coarse
        if last:
            prob = full
            fs = _final_stride(bundle, stride)
            if fs > 1:
                prob = coarse if fs == stride else ResidualProblem(bundle, fs)
            if (skip_final_above is not None and prob is not coarse and prev_rw is not None
                    and prev_rw > skip_final_above):
                skipped_final, converged = True, False
                freed = freed_before  # the parameters reported as refined are those that were
                message = (f"last stage {st} not run: Rw {prev_rw:.4f} after stage {k} is above "
                           f"{skip_final_above:.4f} (far behind a fit refined before it)")
                stage_log.append({"tags": list(st), "rw": None, "skipped": True})
                break
        try:
            r = run_stage(bundle, prob, freed, max_nfev, final=last, solver=solver)
        except _STAGE_ERRORS as exc:  # non-converging stage
            restore(recipe, snap)
            converged = False
            message = f"stage {st} failed: {exc}"
            stage_log.append({"tags": list(st), "rw": None, "error": str(exc)})
            continue
        if r is None:
            continue
        rw = _stage_rw(r, prob)
        if not np.isfinite(rw):
            restore(recipe, snap)
            stage_log.append({"tags": list(st), "rw": rw, "nfev": int(r.nfev), "undone": True})
            continue
        if auto_kernel and "size" in freed:
            auto_kernel = False  # once: the first stage that refines the size
            if skip_final_above is not None and rw > skip_final_above:
                # far behind a fit refined before it (as for the last stage): another shape moves Rw
                # by a few tens of per cent at most, not to the lead; the trials would rerun the stage twice
                stage_log.append({"tags": ["size_kernel"], "size_kernel": bundle.generator.size_kernel,
                                  "skipped": f"Rw {rw:.4f} above {skip_final_above:.4f}"})
            else:
                r, rw, kernel_log = _size_kernel_trials(bundle, prob, freed, snap, (rw, r), max_nfev, last,
                                                        solver)
                stage_log.append({"tags": ["size_kernel"], **kernel_log})
        best_snap = snapshot(recipe)
        res = r
        prev_rw = rw
        last_ok = last
        stage_log.append({"tags": list(st), "rw": rw, "nfev": int(r.nfev), "status": int(r.status),
                          "points": len(prob.x), "s": round(time.perf_counter() - t_stage, 3)})
        if r.status == 0:
            converged = False
            message = f"stage {st} hit max_nfev={max_nfev}"
    if best_snap is not None:
        restore(recipe, best_snap)

    # Final figures and esds from the Jacobian at the solution over all refined variables.
    recipe.fix("all")
    all_free = [n for t in freed for n in bundle.tags.get(t, [])]
    if all_free:
        recipe.free(*all_free)
    p = np.asarray(recipe.getValues(), float)
    names = free_names(recipe)
    # The last stage ran on the full grid with every variable free: reuse its
    # residual and Jacobian at the solution instead of recomputing them.
    reuse = (
        res is not None and bundle.fast and last_ok and res.jac.shape == (len(bundle.y), len(p))
        and np.allclose(res.x, p)
    )
    if reuse:
        r = np.asarray(res.fun, float)
        yc = r / full.w + bundle.y
    else:
        yc = bundle.generator(bundle.x)
        r = (yc - bundle.y) * full.w
    chi2 = float(np.dot(r, r))
    dof = max(len(r) - len(p), 1)
    red = chi2 / dof
    esd = np.full(len(p), np.nan)
    if len(p) and not skipped_final:  # a Jacobian on every point costs as much as the stage not run
        try:
            esd = parameter_esds(res.jac if reuse else full.jacobian(p), red)
        except Exception:  # esds are a courtesy; never fail a fit on them
            pass
    params = {n: {"value": float(v), "esd": float(e)} for n, v, e in zip(names, p, esd, strict=True)}
    recipe.fix("all")
    stru = bundle.generator.stru
    rw = rw_factor(bundle.y, yc, bundle.sigma)
    extra_phases = []
    for (name, sym), parset in zip(bundle.extra or [], getattr(bundle.generator, "extra_parsets", [])):
        gen = bundle.generator
        extra_phases.append({
            "name": name, "formula": sym.structure.composition.reduced_formula, "spacegroup": sym.symbol,
            "structure": to_pymatgen(parset.stru), "scale": float(gen.get(f"scale_{name}").getValue()),
            "size_nm": float(gen.get(f"size_nm_{name}").getValue()),
        })
    instrument_state = {}
    unexplained = []
    if bundle.kind == "xrd":
        from .generators import chebyshev_background
        from .peaks import unexplained_peaks

        gen = bundle.generator
        instrument_state = {k: float(gen.get(k).getValue()) for k in _INSTRUMENT_STATE}
        instrument_state.update(peak_shape=gen.peak_shape, x_kind=gen.x_kind, wavelength=float(gen.wavelength),
                                wavelength2=None if gen.wavelength2 is None else float(gen.wavelength2),
                                ka2_ratio=float(gen.ka2_ratio), radiation=gen.radiation,
                                monochromator_2theta_deg=gen.monochromator_2theta_deg,
                                size_kernel=gen.size_kernel, instrument_file=instrument_params is not None,
                                standard=instrument == "standard")
        bkg = chebyshev_background(bundle.x, [float(gen.get(f"bkg_{k}").getValue()) for k in range(gen.nbkg)],
                                   gen.bkg_domain) if gen.nbkg else np.zeros_like(bundle.x)
        unexplained = unexplained_peaks(bundle.x, bundle.y, np.asarray(yc, float), bkg, x_kind=gen.x_kind,
                                        wavelength=float(gen.wavelength), zero=instrument_state["zero_deg"])
    result = RefinementResult(
        structure=to_pymatgen(stru),
        diffpy_structure=copy.deepcopy(stru),
        rw=rw,
        chi2=chi2,
        reduced_chi2=red,
        params=params,
        x=bundle.x.copy(),
        y_obs=bundle.y.copy(),
        y_calc=np.asarray(yc, float),
        spacegroup=bundle.sym.symbol,
        spacegroup_number=bundle.sym.number,
        kind=bundle.kind,
        engine="srfit",
        nfev=full.nfev + (coarse.nfev if coarse is not full else 0),
        wall_s=time.perf_counter() - t0,
        stages=stage_log,
        converged=converged and np.isfinite(rw),
        message=message,
        recipe=recipe if keep_recipe else None,
        extra_phases=extra_phases,
        instrument=instrument_state,
        unexplained_peaks=unexplained,
    )
    return result


#: Profile values of the PXRD generator reported in :attr:`RefinementResult.instrument` (units: see
#: :class:`~.generators.XRDGenerator`).
_INSTRUMENT_STATE = ("U", "V", "W", "X", "Y", "eta", "axial_deg", "zero_deg", "displacement_deg", "size_nm")
