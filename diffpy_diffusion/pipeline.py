"""The propose pipeline: observation -> backend.sample -> screen -> refine -> ranked results.

:func:`propose` is what ``diffpy-diffuse propose`` and
``diffpy_diffusion.propose`` run; :func:`refine_file` is ``diffpy-diffuse refine``.

* ``backend="a+b"`` samples with every named backend and merges all candidates into
  one screening and one ranking (a backend that cannot serve the composition is
  skipped with a warning as long as another one can).
* The output folder gets ``rankNN.cif``, ``rankNN.stru``, ``rankNN.png`` and
  ``results.json``; files are rewritten atomically after each finished refinement,
  so Ctrl-C keeps every candidate finished so far (``results.json`` then says
  ``"interrupted": true``).  An existing result is never overwritten without ``force``.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendError, DiffpyDiffusionError, OutputExistsError
from .types import Observation, Proposal

#: Output files whose presence means "a previous result lives here".
_RESULT_MARKERS = ("results.json", "rank01.cif")


def _check_output_dir(output_dir, force: bool) -> Path | None:
    if output_dir is None:
        return None
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if not force:
        for m in _RESULT_MARKERS:
            if (out / m).exists():
                raise OutputExistsError(f"{out / m}: exists; pass --force (Python: force=True) to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _remove_if_empty(out: Path | None, created: bool):
    """Remove the output folder ``propose`` created when it failed before writing anything into it."""
    try:
        yield
    except BaseException:
        if out is not None and created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds when empty
        raise


def check_formula_unit(observation: Observation) -> int:
    """Atoms per formula unit of ``observation.composition``, checked against ``observation.max_atoms``.

    Every proposal is a whole multiple of the formula unit, so a formula unit larger than
    ``--max-atoms`` cannot be satisfied by any backend; say so before any work.

    Returns
    -------
    int
        Atoms in the smallest formula unit (0 when no composition is given).

    Raises
    ------
    CompositionError
        The formula unit has more atoms than ``observation.max_atoms``.
    """
    from .errors import CompositionError
    from .limits import ATOMS_PER_CELL
    from .types import composition_formula, integer_counts

    if not observation.composition:
        return 0
    try:
        counts = integer_counts(observation.composition)
    except CompositionError:
        return 0  # not a ratio of small integers: the backends say what they make of it
    n_fu = sum(counts.values())
    if n_fu > observation.max_atoms:
        cap = ATOMS_PER_CELL.value()
        how = (f"pass --max-atoms {n_fu} or more (up to {cap:,})" if n_fu <= cap else
               f"set {ATOMS_PER_CELL.env}={n_fu} and pass --max-atoms {n_fu}")
        raise CompositionError(
            f"--composition {observation.formula}: expected at most {observation.max_atoms} atoms per cell "
            f"(--max-atoms), found {n_fu} atoms in the formula unit {composition_formula(counts)}, "
            f"which no backend can build; {how}")
    return n_fu


def hides_interrupt(exc: BaseException) -> bool:
    """True when ``exc`` stands for a Ctrl-C: diffpy.srfit's ``Constraint._validate`` turns a
    KeyboardInterrupt raised inside it into ``UnboundLocalError`` (its ``finally`` reads an unset name)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _remove_stale_ranks(out: Path, n: int) -> None:
    """Delete rankNN files above rank ``n`` left by an earlier checkpoint (refined candidates can merge)."""
    import re

    pat = re.compile(r"rank(\d{2,})[._]")
    for f in out.iterdir():
        m = pat.match(f.name)
        if m and int(m.group(1)) > n and f.is_file():
            with contextlib.suppress(OSError):
                f.unlink()


def _check_fit_determined(res, observation: Observation) -> None:
    """Raise when a fit refined at least as many parameters as it had points (its Rw means nothing)."""
    x = getattr(res, "x", None)
    npts = len(x) if x is not None else len(observation.x)
    npar = len(getattr(res, "params", None) or {})
    if npar >= npts:
        raise DiffpyDiffusionError(f"pattern too short to refine: {npts} points in the fit range for {npar} "
                                   "refined parameters (need more points than parameters)")


def _backend_options(name: str, factory, backend_options: dict | None) -> dict:
    """Options for one backend: the flat keys its factory takes, then its own sub-dict (which wins)."""
    if not backend_options:
        return {}
    own = backend_options.get(name)
    own = dict(own) if isinstance(own, dict) else {}
    flat = {k: v for k, v in backend_options.items() if not isinstance(v, dict)}
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {**flat, **own}
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        flat = {k: v for k, v in flat.items() if k in sig.parameters}
    return {**flat, **own}


def get_backends(backend: str, backend_options: dict | None = None) -> list:
    """Instantiate the backends named in ``backend`` ("a", "a+b")."""
    from . import plugins

    names = [b.strip() for b in backend.replace(",", "+").split("+") if b.strip()]
    if not names:
        raise BackendError("no backend named: give e.g. --backend templates")
    out = []
    for name in names:
        reg = plugins.get_backend_registration(name)
        factory = getattr(reg, "factory", None) or getattr(reg, "obj", None)
        opts = _backend_options(name, factory, backend_options) if factory is not None else {}
        out.append(plugins.get_backend(name, **opts))
    return out


class _Progress:
    """A rich progress display on stderr, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.prog = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.prog = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
            self.prog.__enter__()
        return self

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.__exit__(*exc)
        return False

    def task(self, description: str, total: int):
        if self.prog is None:
            return None
        tid = self.prog.add_task(description, total=total)
        return lambda k=1: self.prog.advance(tid, k)


def sample_all(observation: Observation, backends: list, n: int, seed: int | None, progress: _Progress | None = None,
               cache: dict | None = None):
    """Raw proposals of every backend (merged), and per-backend timings/errors.

    ``cache`` (optional, owned by the caller, one per observation and set of backend options)
    keeps each backend's proposals under ``(name, n, seed)``: a later call for the same backend,
    alone or merged (``a`` then ``a+b``), gets copies instead of sampling again.  Seeded
    backends return the same proposals either way; ``info`` then says ``"reused": true`` and
    keeps the original ``sample_s``.
    """
    props: list[Proposal] = []
    info: dict[str, Any] = {}
    errors = []
    for be in backends:
        key = (be.name, int(n), seed)
        if cache is not None and seed is not None and key in cache:
            got, first_info = cache[key]
            props.extend(p.copy() for p in got)
            info[be.name] = {**first_info, "reused": True}
            continue
        t0 = time.perf_counter()
        adv = progress.task(f"sampling ({be.name})", n) if progress else None
        try:
            got = list(be.sample(observation, n, seed=seed, progress=adv))
        except DiffpyDiffusionError as exc:
            if len(backends) == 1:
                raise
            errors.append(f"{be.name}: {exc}")
            warnings.warn(f"backend {be.name!r} skipped: {exc}", stacklevel=2)
            info[be.name] = {"error": str(exc), "sample_s": time.perf_counter() - t0}
            continue
        for p in got:
            p.provenance.setdefault("backend_version", getattr(be, "version", None))
        info[be.name] = {"proposals": len(got), "sample_s": round(time.perf_counter() - t0, 3),
                         "version": getattr(be, "version", None)}
        if cache is not None and seed is not None:
            cache[key] = ([p.copy() for p in got], dict(info[be.name]))
        props.extend(got)
    if not props:
        raise BackendError("no backend produced a proposal: " + "; ".join(errors))
    return props, info


def cached_sample_seconds(cache: dict, names) -> float:
    """Seconds the backends ``names`` first spent sampling the proposals held in a :func:`sample_all` cache."""
    wanted = set(names)
    return float(sum(first_info.get("sample_s", 0.0) for (name, _, _), (_, first_info) in cache.items()
                     if name in wanted))


#: Significance level of the Hamilton R-ratio test (:func:`fits_significantly_better`): a model
#: with more refined parameters is preferred only when the chance that its lower R comes from the
#: extra freedom alone is below this (5 %, the customary level of Hamilton 1965).
HAMILTON_ALPHA = 0.05
#: Scherrer constant relating a crystallite's diameter to its peak width (FWHM), used to count
#: independent points of a powder pattern (:func:`effective_points`); 0.9 for spheres
#: (Langford & Wilson, J. Appl. Cryst. 11, 102 (1978)).
SCHERRER_K = 0.9


def effective_points(observation: Observation, size_nm: float | None = None) -> float:
    """Number of independent observations in the data, N_eff, for the significance tests.

    * PXRD: the Q range divided by the peak width, ``(Qmax − Qmin) / FWHM_Q`` with the Scherrer
      width ``FWHM_Q = 2π K / L`` (:data:`SCHERRER_K`, ``L`` = crystallite size in Å): points
      closer than one peak width do not carry independent information.  The size is
      ``observation.size_nm``, else ``size_nm`` (e.g. the screen's estimate); with neither, the
      number of points (an upper bound).
    * PDF: the Nyquist count ``(rmax − rmin) Qmax / π``, with ``observation.qmax`` (the number of
      points without it).

    Never more than the number of points.  10 nm crystallites on the protocol's Cu Kα range
    (Q ≤ 5.76 Å⁻¹) give about 100, 1 nm about 10.
    """
    npts = float(len(observation.x))
    if observation.kind == "pdf":
        if not observation.qmax:
            return npts
        r = np.asarray(observation.x, dtype=float)
        return min(npts, float(r.max() - r.min()) * float(observation.qmax) / np.pi)
    size = observation.size_nm or size_nm
    if not size:
        return npts
    q = np.asarray(observation.q(), dtype=float)
    fwhm_q = 2 * np.pi * SCHERRER_K / (10.0 * float(size))
    return min(npts, float(q.max() - q.min()) / fwhm_q)


def fits_significantly_better(rw_free: float, n_free: int, rw_constrained: float, n_constrained: int,
                              n_eff: float, alpha: float = HAMILTON_ALPHA) -> bool:
    """Hamilton's R-ratio test: does the model with more parameters fit significantly better?

    Hamilton (Acta Cryst. 18, 502 (1965)): with ``b = n_free − n_constrained`` constraints and
    ``N_eff − n_free`` degrees of freedom, the constraints are rejected at level ``alpha`` when
    ``R = Rw_constrained / Rw_free`` exceeds ``R_crit = sqrt(b / (N_eff − n_free) · F(b, N_eff −
    n_free; 1 − alpha) + 1)``.  The test is exact for nested linear models (a structure in a
    space group and in one of its subgroups); between unrelated candidates it is the same
    parsimony rule (fewer parameters unless the data say otherwise).

    Parameters
    ----------
    rw_free, rw_constrained : float
        Weighted R (fractions) of the model with more and with fewer refined parameters.
    n_free, n_constrained : int
        Their numbers of refined parameters.
    n_eff : float
        Independent observations (:func:`effective_points`).
    alpha : float
        Significance level.

    Returns
    -------
    bool
        True: the free model is significantly better.  False when it is not, when it has no
        more parameters than the constrained one and no lower Rw, or when the data have no
        degrees of freedom left for it (``N_eff ≤ n_free``: the data cannot decide, so the
        constrained model stands).
    """
    if not np.isfinite(rw_free):
        return False
    if not np.isfinite(rw_constrained):
        return True
    b = int(n_free) - int(n_constrained)
    if b <= 0:  # not a less constrained model: only a lower R can make it better
        return rw_free < rw_constrained
    dof = float(n_eff) - int(n_free)
    if dof < 1:
        return False
    if rw_free <= 0:
        return rw_constrained > 0
    from scipy.stats import f as f_dist

    r_crit = float(np.sqrt(b / dof * f_dist.ppf(1.0 - alpha, b, dof) + 1.0))
    return rw_constrained / rw_free > r_crit


def model_parameters(p: Proposal) -> int:
    """The structural parameter count of a candidate, for the parsimony score (:func:`parsimony_score`).

    Its free lattice parameters and coordinates in its space group
    (:func:`~diffpy_diffusion.refine.symmetry.free_parameters`, at 0.01 Å for a refined
    structure, idealised in its group, and at :data:`~diffpy_diffusion.report.CANDIDATE_SYMPREC`
    for an unrefined one, which a backend gives only approximately symmetric).  The structure,
    not the refined variables, is counted: a P1 cell whose coordinates the refinement left
    fixed was fitted to the data by the sampler and the screen all the same.  The screen's
    other variables (scale, background, size, zero) are the same for every candidate and are
    not counted.
    """
    from .refine.symmetry import free_parameters
    from .report import CANDIDATE_SYMPREC

    refined = p.scores.get("rw") is not None
    return free_parameters(p.structure, 0.01 if refined else CANDIDATE_SYMPREC)


def _rank_key(p: Proposal, position: int):
    """Refined candidates by Rw first, then the unrefined ones in the order screening kept them."""
    rw = p.scores.get("rw")
    refined = rw is not None and np.isfinite(rw)
    return (0, rw) if refined else (1, position)


#: Penalty per structural parameter (:func:`model_parameters`) on the natural log of the
#: screening Rwp in :func:`parsimony_score`: a parameter must lower the screening Rwp by 1 % to
#: pay for itself.  It is Akaike's criterion for N = 100 independent observations (``AIC / 2N =
#: ln Rwp + k / N`` up to a constant).  Chosen on the validation split at 1 nm (``evaluate
#: --dataset pool-val --limit 50 --size 1nm``, retrieval leaving each target out; 48 targets
#: finished): top-1 26/48 with the refined-Rw order, 29/48 without a penalty, 33-34/48 for
#: 0.008-0.012 and 25/48 at 0.05 per parameter.  That run counted a refined candidate's
#: non-structural variables too; re-run with the structure alone, as here, the same 48 targets
#: give 30/48 by the fit (29 without a penalty, 30-31 for 0.005-0.05) and 32/48 with the CHGNet
#: rule on top (docs/concepts.rst).
PARSIMONY_PER_PARAMETER = 0.01


def parsimony_score(p: Proposal, k: int | None = None) -> float:
    """``ln(screen_rwp) + PARSIMONY_PER_PARAMETER × k``; lower is better.

    NaN without a screening Rwp.  The screening Rwp is the one figure measured the same way for
    every candidate of a list (the screen's local fit, the same profile and free variables),
    refined or not; ``k`` (default :func:`model_parameters`) counts the candidate's real
    structural parameters (:data:`PARSIMONY_PER_PARAMETER`).
    """
    rwp = p.scores.get("screen_rwp")
    if rwp is None or not np.isfinite(rwp) or rwp <= 0:
        return float("nan")
    k = model_parameters(p) if k is None else k
    return float(np.log(rwp) + PARSIMONY_PER_PARAMETER * k)


def _data_cannot_decide(props: list[Proposal], n_eff: float | None) -> list[tuple[float, int]] | None:
    """(parsimony score, parameter count) of each of ``props`` when the data cannot decide between them, else None.

    "Cannot decide": ``n_eff`` independent points (:func:`effective_points`) are no more than the
    largest parameter count on the list, so Hamilton's test has no degrees of freedom for it
    and the refined Rw (which depends on how many variables each refinement freed) says
    nothing a parameter count does not.  Every candidate needs a screening Rwp.
    """
    if n_eff is None or not np.isfinite(n_eff) or len(props) < 2:
        return None
    counts = [model_parameters(p) for p in props]
    if float(n_eff) > max(counts):
        return None
    scores = [parsimony_score(p, k) for p, k in zip(props, counts)]
    if not all(np.isfinite(scores)):
        return None
    return list(zip(scores, counts))


def _drop_duplicates(ranked: list, match_cache: dict | None) -> list:
    """``ranked`` (proposal, result) pairs without the structures :func:`~diffpy_diffusion.screen.dedupe`
    finds equal to a better-ranked one, order kept."""
    from .screen import dedupe

    kept, _ = dedupe([pr[0] for pr in ranked], match_cache=match_cache)
    keep_ids = {id(p) for p in kept}
    return [pr for pr in ranked if id(pr[0]) in keep_ids]


def rank_refined(done: list, match_cache: dict | None = None, n_eff: float | None = None) -> list:
    """Sort (proposal, result) pairs by Rw, fewer parameters first unless the data decide; drop duplicates.

    A refined candidate moves ahead of a better-fitting one with more refined parameters
    unless that one fits significantly better by Hamilton's R-ratio test
    (:func:`fits_significantly_better`, N_eff from ``provenance["n_eff"]`` of the two, the
    smaller; :func:`effective_points`; without it the order by Rw stands).  So a structure in
    its space group ranks before the same structure described in a subgroup with the same fit,
    and at small crystallite sizes, where few points are independent, parsimony decides.
    Refined structures that ``StructureMatcher`` finds equal to a better-ranked one (a supercell
    or a distorted variant that refined back into the same structure) are dropped.  Unrefined
    candidates follow in the order given.  ``match_cache``: see :func:`~diffpy_diffusion.screen.dedupe`
    (the same order either way).

    When the data cannot decide (``n_eff``, the pattern's independent points, no more than the
    largest parameter count on the list; :func:`_data_cannot_decide`), as for 1-3 nm
    crystallites, every candidate, refined or not, is ranked instead by :func:`parsimony_score`
    (screening Rwp penalised by the real parameter count) and gets
    ``provenance["ranked_on"] = "parsimony"``, with ``provenance["parsimony_score"]`` and
    ``provenance["n_parameters"]``; refinement then improves the structures but does not
    reorder them.  ``n_eff`` None: the order by Rw always.
    """
    scored = _data_cannot_decide([p for p, _ in done], n_eff)
    if scored is not None:
        for (p, _), (score, k) in zip(done, scored):
            p.provenance.update(ranked_on="parsimony", parsimony_score=round(score, 6), n_parameters=int(k))
        order = sorted(range(len(done)), key=lambda i: (scored[i][0], i))
        return _drop_duplicates([done[i] for i in order], match_cache)
    base = [pr for _, pr in sorted(enumerate(done), key=lambda ipr: _rank_key(ipr[1][0], ipr[0]))]
    out: list = []
    for pr in base:
        # insertion with parsimony: move ahead of candidates with more parameters that do not
        # fit significantly better
        pos = len(out)
        p = pr[0]
        rw = p.scores.get("rw")
        while pos > 0 and rw is not None and np.isfinite(rw):
            prev = out[pos - 1][0]
            prw = prev.scores.get("rw")
            if prw is None or len(p.refined) >= len(prev.refined):
                break
            n_eff = min(float(x.provenance.get("n_eff") or np.inf) for x in (p, prev))
            # N_eff not recorded (a result refined elsewhere): no test, the order by Rw stands
            if not np.isfinite(n_eff) or fits_significantly_better(prw, len(prev.refined), rw, len(p.refined),
                                                                   n_eff):
                break
            pos -= 1
        out.insert(pos, pr)
    return _drop_duplicates(out, match_cache)


def _refine_with_symmetry(observation, structure, engine, start, refine_options):
    """Refine ``structure`` in the highest space group the data do not reject.

    Raw proposals (the diffusion model's above all) have atoms 0.05–0.3 Å off their special
    positions, so at the default 0.01 Å tolerance they refine in P1.  When a looser spglib
    tolerance (:data:`~diffpy_diffusion.refine.symmetry.LOOSE_TOLERANCES`) reveals more symmetry,
    the structure is refined both ways and the symmetric model is kept unless the unconstrained
    one fits significantly better by Hamilton's R-ratio test (:func:`fits_significantly_better`,
    N_eff from :func:`effective_points`).  The refined model is then examined again (it sits
    closer to its special positions than the raw proposal did, e.g. a distorted rock salt
    proposal: Imm2 at 0.2 Å, Fm-3m once refined) and refined in the higher group found, kept by
    the same test.  Returns the result and a provenance note (``n_eff`` and, when symmetry was
    tested, ``symmetry``).
    """
    from .refine import refine_structure
    from .refine.symmetry import LOOSE_TOLERANCES, point_group_order, symmetry_tolerance

    opts = dict(refine_options)
    n_eff = effective_points(observation, (start or {}).get("size_nm"))
    note: dict[str, Any] = {"n_eff": round(float(n_eff), 1)}

    def fit(s, tol=None, skip_final_above=None):
        kw = {} if tol is None else {"spacegroup_tol": tol}
        given = opts.get("skip_final_above")
        o = opts if skip_final_above is None else {
            **opts, "skip_final_above": skip_final_above if given is None else min(skip_final_above, given)}
        return refine_structure(observation, s, engine=engine, start=start or None, **kw, **o)

    if "spacegroup_tol" in opts or opts.get("use_symmetry") is False:
        return fit(structure), note
    strict = LOOSE_TOLERANCES[0]  # the refinement's own default tolerance
    tol, number = symmetry_tolerance(structure)
    if tol <= strict or point_group_order(structure, strict)[1] == number:
        best = fit(structure)
        sym_note: dict[str, Any] = {}
    else:
        sym = fit(structure, tol)
        # where the last stage is the costly one, the unconstrained alternative skips it when it
        # fits no better than the symmetric model before it: that stage (ADPs; asymmetry and
        # displacement) cannot make it fit significantly better, which is all the test asks
        behind = float(sym.rw) if costly_last_stage(observation, opts) and np.isfinite(sym.rw) else None
        low = fit(structure, strict, skip_final_above=behind)
        keep_sym = np.isfinite(sym.rw) and not fits_significantly_better(low.rw, len(low.params), sym.rw,
                                                                         len(sym.params), n_eff)
        sym_note = {"tolerance_A": tol, "spacegroup": sym.spacegroup, "rw": float(sym.rw),
                    "n_params": len(sym.params), "unconstrained_spacegroup": low.spacegroup,
                    "unconstrained_rw": float(low.rw), "unconstrained_n_params": len(low.params),
                    "test": f"Hamilton R-ratio, alpha {HAMILTON_ALPHA:g}",
                    "kept": "symmetrised" if keep_sym else "unconstrained"}
        best = sym if keep_sym else low
    for _ in range(2):
        tol2, number2 = symmetry_tolerance(best.structure)
        if number2 == best.spacegroup_number or point_group_order(best.structure, 1e-3)[0] >= \
                point_group_order(best.structure, tol2)[0]:
            break
        again = fit(best.structure, tol2)
        if not np.isfinite(again.rw) or fits_significantly_better(best.rw, len(best.params), again.rw,
                                                                  len(again.params), n_eff):
            break
        sym_note.setdefault("climbed", []).append({"spacegroup": again.spacegroup, "tolerance_A": tol2,
                                                   "rw": float(again.rw), "n_params": len(again.params)})
        best = again
    if sym_note:
        note["symmetry"] = sym_note
    return best, note


#: Largest spglib tolerance (Å) at which a candidate that is not refined is symmetrised
#: (:func:`symmetrize_unrefined`).  Its atoms have not been fitted, so the data say nothing about
#: their offsets from special positions; this is the report's tolerance for such candidates
#: (:data:`diffpy_diffusion.report.CANDIDATE_SYMPREC`).
UNREFINED_SYMPREC = 0.1


def symmetrize_unrefined(p: Proposal, max_tol: float = UNREFINED_SYMPREC) -> Proposal:
    """A copy of an unrefined candidate in the highest space group found up to ``max_tol`` Å, coordinates symmetrised.

    The structure becomes the standard conventional cell with idealised positions
    (:func:`~diffpy_diffusion.refine.symmetry.symmetrize_up_to`); ``provenance`` records
    ``spacegroup_symmetrized``, ``spacegroup_number_symmetrized`` and ``symmetrized_tolerance_A``.
    Scores (the screen's) are those of the structure as proposed.
    """
    from .refine.symmetry import symmetrize_up_to

    q = p.copy()
    try:
        sym, tol = symmetrize_up_to(p.structure, max_tol)
    except Exception as exc:  # noqa: BLE001 - an odd cell is reported as proposed
        q.provenance["symmetrize_error"] = f"{type(exc).__name__}: {exc}"
        return q
    q.structure = sym.structure
    q.provenance.update(spacegroup_symmetrized=sym.symbol, spacegroup_number_symmetrized=int(sym.number),
                        symmetrized_tolerance_A=tol)
    return q


#: PXRD patterns with more points than this are long step scans (measured lab and synchrotron
#: patterns: 5,000-9,000 points for issue 15's), where the last refinement stage runs on every
#: point and costs most; the evaluation's simulated patterns have 1,024 points
#: (:data:`diffpy_diffusion.evaluate.conventions.N_Q`) and never count as long.
LONG_PATTERN_POINTS = 2000
#: Where the last stage is the costly one (:func:`costly_last_stage`), a candidate whose Rw before the
#: last stage is above this many times the best
#: final Rw among the candidates refined before it skips the last stage
#: (``refine_structure(skip_final_above=...)``): the last stage frees what changes Rw least (the
#: ADPs; in the Rietveld stages the asymmetry and displacement) and starts from the earlier
#: stages' optimum, so it does not take a candidate from 1.5 times the leader's Rw to the lead.
#: Not tuned on the benchmark patterns; a skipped candidate stays in the list (below the leader).
BEHIND_FACTOR = 1.5


def costly_last_stage(observation: Observation, refine_options: dict | None) -> bool:
    """Whether the last refinement stage costs most of a PXRD fit, so that candidates far behind skip it.

    True for a long scan (more than :data:`LONG_PATTERN_POINTS` points: the last stage is the only
    one on every point) and for the Rietveld profile (``instrument="rietveld"``, an instrument file or
    extra phases): its last stage frees every profile term at once on every point, with finite-difference
    columns through all phases.  On KBi3's 1,508-point synchrotron scan with two extra phases it took
    2-27 CPU s of a 5-35 s fit (``benchmarks/crystalyze_propose.md``).  False for the evaluation's
    simulated patterns (1,024 points, basic profile), whose fits are unchanged.
    """
    if observation.kind != "xrd":
        return False
    o = refine_options or {}
    rietveld = o.get("instrument") == "rietveld" or bool(o.get("phases")) or o.get("instrument_params") is not None
    return rietveld or len(observation.x) > LONG_PATTERN_POINTS


def refine_candidates(observation: Observation, candidates: list[Proposal], *, engine: str = "srfit",
                      on_done=None, progress: _Progress | None = None, refine_options: dict | None = None):
    """Refine each candidate (H3's :func:`refine.refine_structure`); failures keep the screened candidate.

    ``on_done(list_of_(proposal, result))`` is called after each candidate (for incremental output).
    Where the last stage is the costly one (:func:`costly_last_stage`: a long scan or a Rietveld fit), a
    candidate still far behind (:data:`BEHIND_FACTOR`) the best refined before it does not run it.
    Returns the list of (proposal, RefinementResult or None).
    """

    # default budget (PXRD): a screened start is close, 20 least-squares iterations per stage suffice;
    # PDF fits keep refine_structure's own default (ADP/qdamp/delta2 need more)
    defaults = {"max_nfev": 20} if observation.kind == "xrd" else {}
    refine_options = {**defaults, **(refine_options or {})}
    done: list[tuple[Proposal, Any]] = []
    adv = progress.task("refining", len(candidates)) if progress else None
    costly = costly_last_stage(observation, refine_options)
    for p in candidates:
        t0 = time.perf_counter()
        opts = dict(refine_options)
        rws = [float(r.rw) for _, r in done if r is not None and np.isfinite(r.rw)]
        if costly and rws and "skip_final_above" not in opts:
            opts["skip_final_above"] = BEHIND_FACTOR * min(rws)
        start = {}
        scr = p.provenance.get("screen", {})
        if observation.kind == "xrd" and scr.get("size_nm"):
            start["size_nm"] = float(scr["size_nm"])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res, sym_note = _refine_with_symmetry(observation, p.structure, engine, start, opts)
            _check_fit_determined(res, observation)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed fit keeps the screened candidate
            if hides_interrupt(exc):
                raise KeyboardInterrupt from exc
            p.provenance["refine_error"] = f"{type(exc).__name__}: {exc}"
            p.provenance["refine_s"] = round(time.perf_counter() - t0, 3)
            done.append((p, None))
        else:
            q = Proposal(structure=res.structure, backend=p.backend, seed=p.seed,
                         scores={**p.scores, "rw": float(res.rw), "chi2": float(res.chi2)},
                         refined=dict(res.params),
                         provenance={**p.provenance, "spacegroup_refined": res.spacegroup,
                                     "spacegroup_number_refined": int(res.spacegroup_number),
                                     "refine_s": round(time.perf_counter() - t0, 3),
                                     "refine_converged": bool(res.converged), "refine_message": res.message,
                                     "engine": res.engine, **sym_note, **_pxrd_provenance(res)})
            done.append((q, res))
        if adv:
            adv(1)
        if on_done:
            on_done(done)
    return done


def write_outputs(out: Path, observation: Observation, done, meta: dict, *, interrupted: bool = False,
                  already_ranked: bool = False, match_cache: dict | None = None) -> list[dict]:
    """(Re)write rankNN.* and results.json for the candidates finished so far; returns the records.

    While refinement is still running (``interrupted``) only the structure files and
    results.json are written: figures and PDFgui files follow once, at the end, because ranks
    still change and re-plotting every candidate after each fit cost more than the fits.
    ``already_ranked``: ``done`` is the final order already (:func:`final_ranking`), written as given;
    otherwise it is ranked by the fit (:func:`rank_refined`, with ``match_cache``).
    """
    from . import report
    from .io import write_json

    ranked = list(done) if already_ranked else rank_refined(done, match_cache)
    records = []
    for rank, (p, res) in enumerate(ranked, 1):
        files = report.write_candidate_files(p, rank, out, observation, res, force=True, full=not interrupted)
        records.append(report.candidate_record(p, rank, files))
    _remove_stale_ranks(out, len(ranked))
    if not interrupted and ranked:  # candidates overview (Rw, structure type, space group): PNG + SVG
        try:
            from .plots import candidate_rows, overview_figure, save_figure

            save_figure(overview_figure(candidate_rows([p for p, _ in ranked]),
                                        title=f"{observation.formula}: candidates"), out / "candidates", force=True)
        except Exception:  # noqa: BLE001 - a figure must never lose the results
            pass
    doc = {**meta, "interrupted": interrupted, "candidates": records}
    write_json(doc, out / "results.json", force=True)
    return records


def relax_available() -> list[str]:
    """Plugins implementing the ``relax_proposals`` hook (what ``--relax`` uses), in call order.

    Raises
    ------
    NotAvailableError
        None is installed: ``--relax`` would otherwise do nothing without saying so.
    """
    from . import plugins
    from .errors import NotAvailableError

    names = plugins.implementations("relax_proposals")
    if not names:
        raise NotAvailableError("--relax: no installed plugin implements the relax_proposals hook; install one, "
                                "e.g. pip install ./plugins/diffpy-diffusion-chgnet (see docs/energy.rst)")
    return names


def relax_raw(observation: Observation, raw: list[Proposal], meta: dict | None = None) -> list[Proposal]:
    """The raw proposals after the ``relax_proposals`` hook (the first valid plugin answer), or as given.

    ``meta`` (optional) gets ``"relaxed_by": plugin``.  Raises NotAvailableError when no plugin
    implements the hook (:func:`relax_available`).
    """
    from . import plugins

    relax_available()
    got = plugins.call_relax_proposals(observation, raw)
    if got is None:
        names = ", ".join(plugins.implementations("relax_proposals"))
        warnings.warn(f"--relax: no plugin relaxed the proposals (asked: {names}); screening them as sampled",
                      stacklevel=2)
        return raw
    if meta is not None:
        meta["relaxed_by"] = got[0]
    return got[1]


def list_effective_points(observation: Observation, done: list) -> float | None:
    """N_eff of ``observation`` for ranking ``done``: the refinements' record (the smallest), else
    :func:`effective_points` with the screen's crystallite size of the first candidate; None for
    a PXRD pattern with neither a size nor a screening estimate."""
    recorded = [float(p.provenance["n_eff"]) for p, _ in done if p.provenance.get("n_eff")]
    if recorded:
        return min(recorded)
    size = next((p.provenance.get("screen", {}).get("size_nm") for p, _ in done
                 if isinstance(p.provenance.get("screen"), dict) and p.provenance["screen"].get("size_nm")), None)
    if observation.kind == "xrd" and not (observation.size_nm or size):
        return None
    return effective_points(observation, size)


def final_ranking(observation: Observation, done: list, meta: dict | None = None,
                  match_cache: dict | None = None) -> list:
    """The final order of (proposal, result) pairs: the fit order, then the plugins' say.

    :func:`rank_refined` ranks by the fit; the ``rerank`` hooks then add their scores to every
    candidate of that list (refined structures for refined candidates), and the first valid
    ``rank_candidates`` answer reorders it (an invalid one is warned about and the fit order
    kept; :func:`diffpy_diffusion.plugins.call_rank_candidates`).  ``meta`` (optional) gets
    ``"ranked_by": plugin`` when a plugin answered, and each candidate then keeps its rank by the
    fit alone in ``provenance["fit_rank"]`` (1-based).  ``match_cache``: see :func:`rank_refined`.
    """
    from . import plugins

    ranked = rank_refined(done, match_cache, n_eff=list_effective_points(observation, done))
    props = [p for p, _ in ranked]
    plugins.call_rerank(observation, props)
    got = plugins.call_rank_candidates(observation, props)
    if got is None:
        return ranked
    if meta is not None:
        meta["ranked_by"] = got[0]
    for i, (prop, _) in enumerate(ranked, 1):  # the fit-only rank stays on record (report, evaluation)
        prop.provenance["fit_rank"] = i
    return [ranked[i] for i in got[1]]


def propose(
    observation: Observation,
    *,
    backend: str = "diffusion",
    n: int = 200,
    top: int = 5,
    seed: int | None = 0,
    output_dir=None,
    force: bool = False,
    progress: bool = True,
    backend_options: dict | None = None,
    refine: bool = True,
    engine: str = "srfit",
    screen_options: dict | None = None,
    refine_options: dict | None = None,
    refine_top: int | None = None,
    sample_cache: dict | None = None,
    relax: bool = False,
) -> list[Proposal]:
    """Propose, screen and refine structures for ``observation``; best first.

    Parameters
    ----------
    observation : Observation
        PXRD or PDF with its composition.
    backend : str
        Backend name, or several joined by ``+`` whose candidates are merged.
    n : int
        Raw proposals per backend.
    top : int
        Distinct candidates refined and returned.
    seed : int, optional
        Seed handed to every backend (reproducible runs).
    output_dir : path-like, optional
        Folder for rankNN.cif/.stru/.png and results.json.
    force : bool
        Overwrite an earlier result in ``output_dir``.
    progress : bool
        Show progress bars on stderr.
    backend_options : dict, optional
        Options for the backend factories: flat (``{"library": "training-pool"}``, passed to
        the backends that accept them) or per backend (``{"templates": {...}}``).
    refine : bool
        False stops after screening (ranked by screening Rwp).
    engine : {"srfit", "pdffit2"}
    screen_options, refine_options : dict, optional
        Passed to :func:`screen.screen` and :func:`refine.refine_structure`.
    refine_top : int, optional
        Refine only the best this many of the ``top`` screened candidates (default: all), the
        best this many *of each backend* when backends are merged (``a+b``); the others follow
        in screening order, unrefined (``scores["rw"]`` absent).
    sample_cache : dict, optional
        Reuse raw proposals across calls for the *same* observation and backend options (see
        :func:`sample_all`); ``evaluate`` uses it so that ``a``, ``b`` and ``a+b`` sample once.
    relax : bool
        Hand the raw proposals to the ``relax_proposals`` plugin hook before screening
        (``--relax``; e.g. CHGNet with the ``chgnet`` plugin).  Raises NotAvailableError, before
        any work, when no installed plugin implements it.

    Returns
    -------
    list of Proposal
        Ranked: refined ones by Rw (``scores["rw"]``), then unrefined in screening order (by
        screening Rwp; for merged backends ``a+b``, the backends' rankings taken in turn, see
        :func:`diffpy_diffusion.screen.fuse_by_backend`), unless a ``rank_candidates`` plugin
        reorders them (:func:`final_ranking`; ``results.json`` then says ``"ranked_by"``).
        ``rerank`` plugins' scores are in ``scores``.
        ``refined`` holds the refined parameters with esds.

    Raises
    ------
    OutputExistsError
        ``output_dir`` holds a result and ``force`` is false (checked before any work).
    BackendError
        No backend could produce a proposal.
    KeyboardInterrupt
        Re-raised after the finished candidates are written.
    """
    from . import __version__
    from .limits import check_atoms_per_cell, check_candidates
    from .report import observation_summary, package_versions
    from .screen import screen

    check_candidates(n)
    check_atoms_per_cell(observation.max_atoms, "--max-atoms")
    check_formula_unit(observation)
    if relax:
        relax_available()
    created = output_dir is not None and not Path(output_dir).exists()
    out = _check_output_dir(output_dir, force)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    meta: dict[str, Any] = {
        "program": "diffpy-diffusion", "version": __version__, "command": "propose",
        "input": observation_summary(observation), "backend": backend, "n": n, "top": top, "seed": seed,
        "packages": package_versions(), "timings": timings,
    }
    done: list = []
    partial: list = []  # the latest checkpoint, rewritten on Ctrl-C
    # StructureMatcher verdicts kept between the checkpoints' and the final ranking's dedupes
    # (each re-ranks a list that grew by one refined candidate; measured under cProfile: 600
    # matcher fits, 79 of the 142 s of refinement, for ten 10-20-atom candidates of Ca2MnTeO6)
    match_cache: dict = {}
    with _Progress(progress) as prog, _remove_if_empty(out, created):
        backends = get_backends(backend, backend_options)
        meta["backends"] = {be.name: {"version": getattr(be, "version", None)} for be in backends}
        t0 = time.perf_counter()
        raw, info = sample_all(observation, backends, n, seed, prog, cache=sample_cache)
        timings["sample_s"] = round(time.perf_counter() - t0, 3)
        for k, v in info.items():
            meta["backends"].setdefault(k, {}).update(v)
        if relax:
            t0 = time.perf_counter()
            raw = relax_raw(observation, raw, meta)
            timings["relax_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        sopts = dict(screen_options or {})
        if observation.kind == "xrd" and (refine_options or {}).get("phases"):
            # known extra phases (--phase): screen the candidates against what they leave of the pattern
            sopts.setdefault("known_phases", list(refine_options["phases"]))
        if refine_top is not None:
            # merged backends: the candidates each backend refines stay in, as if it had run alone
            sopts.setdefault("backend_leaders", max(1, int(refine_top)))
        sres = screen(observation, raw, top, **sopts)
        timings["screen_s"] = round(time.perf_counter() - t0, 3)
        meta["screen"] = {"raw": len(raw), "evaluated": len(sres.ranked), "failed": sres.failed,
                          "duplicates_dropped": sres.duplicates, "kept": len(sres.kept),
                          "timings": {k: round(v, 3) for k, v in sres.timings.items()}}
        if not sres.kept:
            raise BackendError(f"none of the {len(raw)} proposals could be evaluated against the data")

        def checkpoint(d):
            partial[:] = d
            if out is not None:
                timings["total_s"] = round(time.perf_counter() - t_start, 3)
                write_outputs(out, observation, d, meta, interrupted=True, match_cache=match_cache)

        t0 = time.perf_counter()
        try:
            # merged backends take turns in the short list (screen.fuse_by_backend), so the first
            # refine_top × (backends in it) are each backend's best refine_top
            per = max(1, len({p.backend for p in sres.kept}))
            nref = len(sres.kept) if refine_top is None else max(0, min(int(refine_top) * per, len(sres.kept)))
            rest = [(p, None) for p in sres.kept[nref:]] if refine else []
            if refine and nref:
                checkpoint([(p, None) for p in sres.kept])  # screened candidates survive a Ctrl-C
                done = refine_candidates(observation, sres.kept[:nref], engine=engine,
                                         # not yet refined: listed as screened, so a Ctrl-C keeps them too
                                         on_done=lambda d: checkpoint(d + [(p, None) for p in sres.kept[len(d):nref]]
                                                                      + rest), progress=prog,
                                         refine_options=refine_options) + rest
            else:
                done = [(p, None) for p in sres.kept]
        except KeyboardInterrupt:
            timings["refine_s"] = round(time.perf_counter() - t0, 3)
            if out is not None and (done or partial):
                write_outputs(out, observation, done or partial, meta, interrupted=True, match_cache=match_cache)
            raise
        timings["refine_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        # answers in their space group: the candidates not refined (or whose fit failed) too
        done = [(symmetrize_unrefined(p), None) if res is None else (p, res) for p, res in done]
        timings["symmetrize_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        try:
            # after refinement: plugin scores and order are those of the structures we report
            ranked = final_ranking(observation, done, meta, match_cache)
        except KeyboardInterrupt:
            if out is not None:
                write_outputs(out, observation, done, meta, interrupted=True, match_cache=match_cache)
            raise
        timings["rank_s"] = round(time.perf_counter() - t0, 3)
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    if out is not None:
        write_outputs(out, observation, ranked, meta, interrupted=False, already_ranked=True)
    result = []
    for rank, (p, _) in enumerate(ranked, 1):
        p.scores["rank"] = rank
        result.append(p)
    return result


def read_observation_for_instrument(data, instrument_params, *, wavelength=None, **kwargs) -> Observation:
    """:func:`~diffpy_diffusion.io.read_observation`, with the instrument file's wavelength where the pattern has none.

    A wavelength the user gives or the file holds is kept (and checked against the instrument
    file's by the refinement); a pattern that cannot be read without one (a 2θ file with no
    wavelength, or columns that only a wavelength tells apart) is read with the instrument file's.
    """
    from .io import read_observation
    from .io.units import Wavelength

    if instrument_params is None or wavelength is not None:
        return read_observation(data, wavelength=wavelength, **kwargs)
    ip = instrument_params
    lam = Wavelength(ip.wavelength, ip.wavelength2, ip.ka2_ratio, label="instrument file")
    try:
        obs = read_observation(data, **kwargs)
    except DiffpyDiffusionError:
        return read_observation(data, wavelength=lam, **kwargs)
    if obs.kind == "xrd" and not obs.wavelength:
        obs.wavelength, obs.wavelength2, obs.ka2_ratio = float(lam), lam.wavelength2, lam.ka2_ratio
    return obs


def pxrd_refine_options(observation: Observation, phases=(), peak_model: str = "auto",
                        instrument_params=None) -> dict | None:
    """``refine_options`` of :func:`propose` for ``--phase``, ``--peak-model`` and ``--instrument``.

    ``peak_model="auto"``: the Rietveld profile when an instrument file or extra phases say the
    pattern is a measured one, else the basic profile (simulated and nanocrystal patterns, where
    it was measured).  Raises DiffpyDiffusionError for extra phases or an instrument file on a PDF.
    """
    from .io import read_structure

    if observation.kind != "xrd":
        if phases or instrument_params is not None:
            raise DiffpyDiffusionError("--phase and --instrument apply to PXRD patterns, not to a PDF")
        return None
    if peak_model == "auto":
        peak_model = "rietveld" if (phases or instrument_params is not None) else "basic"
    opts: dict[str, Any] = {}
    if peak_model != "basic":
        opts["instrument"] = peak_model
    if instrument_params is not None:
        opts["instrument_params"] = instrument_params
    if phases:
        opts["phases"] = [read_structure(f) for f in phases]
    return opts or None


def _check_instrument_request(instrument_params, save_instrument, instrument: str, force: bool) -> None:
    """Refuse, before any work, what ``--instrument``/``--save-instrument`` cannot do."""
    if save_instrument is None:
        return
    if instrument_params is not None:
        raise DiffpyDiffusionError("--save-instrument refines the instrument on a standard; it cannot be "
                                   "combined with --instrument, which holds it fixed")
    if instrument != "rietveld":
        raise DiffpyDiffusionError("--save-instrument needs the Rietveld peak model (--peak-model rietveld)")
    if Path(save_instrument).exists() and not force:
        raise OutputExistsError(f"{save_instrument} exists; use --force to overwrite it")


def refine_file(data, structure, *, composition=None, wavelength=None, radiation="xray", size_nm=None,
                x_kind=None, engine: str = "srfit", output_dir=None, force: bool = False, as_json: bool = False,
                quiet: bool = False, phases=(), instrument: str = "basic", instrument_file=None,
                save_instrument=None, size_kernel: str | None = None):
    """``diffpy-diffuse refine DATA START``: refine a user's own starting structure, report like ``propose``.

    ``phases``: files of known extra (impurity) phases refined alongside (PXRD); ``instrument``: the PXRD
    profile model of :func:`~diffpy_diffusion.refine.refine_structure` ("basic" or "rietveld");
    ``instrument_file``: an instrument parameter file (:mod:`diffpy_diffusion.io.instrument_params`)
    whose profile is held fixed; ``save_instrument``: write the refined instrument profile to this
    file (the pattern is a line-profile standard such as Si or LaB6, refined with
    ``instrument="standard"``: its cell held at the structure file's, the Lorentzian X refined
    instead of a crystallite size); ``size_kernel``: the shape of the size broadening
    (:func:`~diffpy_diffusion.refine.refine_structure`; None: its default).

    Returns the :class:`~diffpy_diffusion.refine.RefinementResult`.
    """
    from . import __version__
    from .io import read_structure
    from .io.instrument_params import InstrumentParameters, read_instrument, write_instrument
    from .refine import refine_structure
    from .report import (
        candidate_record,
        observation_summary,
        package_versions,
        print_ranked_table,
        print_unexplained_peaks,
    )

    ip = read_instrument(instrument_file) if instrument_file is not None else None
    _check_instrument_request(ip, save_instrument, instrument, force)
    out = _check_output_dir(output_dir, force)
    start_s = read_structure(structure)
    if composition is None:
        composition = start_s.composition.reduced_formula
    obs = read_observation_for_instrument(data, ip, x_kind=x_kind, wavelength=wavelength, radiation=radiation,
                                          composition=composition, size_nm=size_nm)
    if obs.kind != "xrd" and (ip is not None or save_instrument is not None):
        raise DiffpyDiffusionError("--instrument and --save-instrument apply to PXRD patterns, not to a PDF")
    extra = [read_structure(f) for f in phases or ()]
    t0 = time.perf_counter()
    if save_instrument is not None:
        instrument = "standard"  # the instrument's own widths, the standard's certified cell (build_recipe)
    res = refine_structure(obs, start_s, engine=engine, phases=extra,
                           instrument=instrument if obs.kind == "xrd" else "basic", instrument_params=ip,
                           size_kernel=size_kernel if obs.kind == "xrd" else None)
    _check_fit_determined(res, obs)
    p = Proposal(structure=res.structure, backend="user", scores={"rw": float(res.rw), "chi2": float(res.chi2)},
                 refined=dict(res.params),
                 provenance={"start": str(structure), "spacegroup_refined": res.spacegroup,
                             "spacegroup_number_refined": int(res.spacegroup_number),
                             "refine_s": round(time.perf_counter() - t0, 3), "engine": res.engine,
                             "refine_converged": bool(res.converged), "refine_message": res.message,
                             "extra_phases": [{k: v for k, v in ph.items() if k != "structure"}
                                              for ph in getattr(res, "extra_phases", [])],
                             **_pxrd_provenance(res)})
    meta = {"program": "diffpy-diffusion", "version": __version__, "command": "refine",
            "input": observation_summary(obs), "start_structure": str(structure),
            "packages": package_versions(), "timings": {"refine_s": p.provenance["refine_s"]}}
    if instrument_file is not None:
        meta["instrument_file"] = str(instrument_file)
    if save_instrument is not None:
        saved = InstrumentParameters.from_refinement(res.instrument)
        write_instrument(saved, save_instrument, force=force, comments=[
            f"refined by diffpy-diffuse {__version__} refine on {Path(str(data)).name} with "
            f"{Path(str(structure)).name} ({res.spacegroup}), Rwp {100 * res.rw:.2f} %, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "cell held at the structure file's; X and Y are the instrument's Lorentzian widths "
            "(the standard's size and strain broadening are counted as instrument)"])
        meta["instrument_saved"] = str(save_instrument)
    if out is not None:
        records = write_outputs(out, obs, [(p, res)], meta)
    else:
        records = [candidate_record(p, 1)]
    if as_json:
        import click

        from .io.writers import to_json_text

        click.echo(to_json_text({**meta, "candidates": records}), nl=False)
    elif not quiet:
        print_ranked_table(records, title=f"Refinement of {Path(str(structure)).name} against {Path(str(data)).name}")
        from rich.console import Console
        from rich.table import Table

        kern = (getattr(res, "instrument", None) or {}).get("size_kernel")
        shapes = {"scherrer": "Lorentzian", "gauss": "Gaussian", "sinc2": "sinc² (Laue)"}
        caption = f"size broadening: {shapes.get(kern, kern)}" if kern and "size_nm" in res.params else None
        t = Table(title="Refined parameters", caption=caption)
        t.add_column("name")
        t.add_column("value", justify="right")
        t.add_column("esd", justify="right")
        for name, v in res.params.items():
            t.add_row(name, f"{v['value']:.6g}", "-" if v.get("esd") is None else f"{v['esd']:.2g}")
        Console().print(t)
        print_unexplained_peaks(p.provenance.get("unexplained_peaks"))
        if save_instrument is not None:
            Console().print(f"instrument parameters written to {save_instrument}", markup=False, highlight=False)
    return res


def _pxrd_provenance(res) -> dict:
    """What a PXRD fit adds to a candidate's provenance: its profile and the peaks no phase explains."""
    if getattr(res, "kind", None) != "xrd" or not getattr(res, "instrument", None):
        return {}
    out = {"instrument": dict(res.instrument), "unexplained_peaks": list(res.unexplained_peaks)}
    if getattr(res, "extra_phases", None):
        out["extra_phases"] = [{k: v for k, v in ph.items() if k != "structure"} for ph in res.extra_phases]
    return out
