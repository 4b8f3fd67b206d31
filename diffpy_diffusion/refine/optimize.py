"""The least-squares driver of a staged refinement.

:class:`ResidualProblem` is the weighted residual of a :class:`~.recipe.RecipeBundle`
over its currently free variables, with its Jacobian from the physics' own
derivatives (:mod:`.jacobian`: exact for the torch PDF; for PXRD exact linear columns and
analytic window-profile derivatives, or every column with ``DIFFPY_DIFFUSION_JACOBIAN=exact``) or, with
``DIFFPY_DIFFUSION_JACOBIAN=fd`` and for generators without derivatives, by finite
differences evaluated as *one batched* physics call (every perturbed parameter state is one crystal of a
:class:`~diffpy_diffusion.physics.crystal.CrystalBatch`).  :func:`run_stage`
minimises it with :func:`scipy.optimize.least_squares` (trust-region
reflective) or :func:`broyden_lm` (Levenberg–Marquardt with Broyden updates,
fewer physics calls for many variables); :func:`linear_start` solves the linear
variables (scale, background) exactly before the first stage.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .recipe import RecipeBundle

__all__ = [
    "ResidualProblem", "LMResult", "run_stage", "broyden_lm", "linear_start", "update_constraints",
    "free_names", "snapshot", "restore", "blas_one_thread", "RW_STALL_RTOL", "RW_STALL_RTOL_FINAL",
    "linear_size_scan", "set_size_scale_background",
]

#: A stage stops once an accepted step lowers Rw by less than this fraction of Rw (stages before
#: the last, which only need to get close) ...
RW_STALL_RTOL = 1e-4
#: ... or by less than this fraction in the last stage.  Near a minimum Gauss-Newton steps shrink
#: at least linearly, so what is left is of the order of the last step's gain: at 1e-5 the Rw stays
#: within ~1e-6 absolute of the converged one (Rw ≤ 0.25), below the ±1e-4 issue 16 asks
#: (``benchmarks/refine_jacobian.md``), and the iteration that would only confirm it is saved.
RW_STALL_RTOL_FINAL = 1e-5


def blas_one_thread():
    """Single-threaded BLAS for the small dense algebra of least_squares.

    On a loaded 2-core machine OpenBLAS threads spin against torch's and make a
    2600 x 16 SVD 100 x slower (measured: 0.1 s vs 1 ms).
    """
    import scipy.linalg  # noqa: F401 - load scipy's BLAS first: threadpoolctl only limits loaded libraries
    import scipy.optimize  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def update_constraints(recipe, p) -> None:
    """Apply the values ``p`` of the free variables and update every constrained parameter."""
    recipe._prepare()
    recipe._applyValues(p)
    for con in recipe._oconstraints:
        con.update()


def free_names(recipe) -> list[str]:
    """Names of the recipe's free variables, in the order of ``recipe.getValues()``."""
    return list(recipe.getNames())


class ResidualProblem:
    """Residual and Jacobian over the currently free variables of a bundle.

    ``jacobian``: "auto", "exact" or "fd" (default: $DIFFPY_DIFFUSION_JACOBIAN, else "auto";
    see :mod:`.jacobian`).

    ``stride`` > 1 evaluates every stride-th point only (a uniform sub-grid, so
    the PDF band limit still applies): the early stages of a fit on a fine grid
    do not need every point of peaks that are many points wide.
    """

    def __init__(self, bundle: RecipeBundle, stride: int = 1, xmax: float | None = None,
                 jacobian: str | None = None):
        from .jacobian import StateMap, jacobian_mode

        self.b = bundle
        self.nfev = 0
        #: "auto", "exact" (derivatives of the physics, :mod:`.jacobian`) or "fd" (batched finite differences)
        self.mode = jacobian_mode(jacobian)
        # one map per bundle: the coarse and full-grid problems of a refinement share its probes
        smap = getattr(bundle, "state_map", None)
        if smap is None:
            smap = bundle.state_map = StateMap(bundle, update_constraints)
        self.smap = smap
        sl = slice(None, None, max(int(stride), 1))
        keep = np.ones(len(bundle.x), bool) if xmax is None else bundle.x <= xmax
        self.x = bundle.x[keep][sl]
        self.y = bundle.y[keep][sl]
        self.w = 1.0 / bundle.sigma[keep][sl] if bundle.sigma is not None else np.ones_like(self.y)

    def model_batch(self, states) -> np.ndarray:
        self.nfev += 1
        return self.b.generator.compute_batch(self.x, states)

    def residual(self, p) -> np.ndarray:
        b = self.b
        if b.fast:
            update_constraints(b.recipe, p)
            yc = self.model_batch([b.generator.state()])[0]
            return (yc - self.y) * self.w
        self.nfev += 1
        return b.recipe.residual(p)

    def jacobian(self, p) -> np.ndarray:
        if self.mode != "fd" and self.b.fast:
            J = self.jacobian_exact(p)
            if J is not None:
                return J
        return self.jacobian_fd(p)

    def jacobian_exact(self, p) -> np.ndarray | None:
        """J from the generator's derivatives and the constraints' state map (:mod:`.jacobian`).

        Every column exact for a generator with ``exact_jacobian`` (unless mode "auto" and its
        ``exact_in_auto`` is False: PXRD); otherwise (PXRD) the linear columns (scale,
        background) exact and the others from :meth:`_jacobian_xrd`.  None when the state map
        moves something the generator cannot differentiate (the caller then uses :meth:`jacobian_fd`).
        """
        b = self.b
        gen = b.generator
        exact = bool(getattr(gen, "exact_jacobian", False))
        exact = exact and (self.mode != "auto" or bool(getattr(gen, "exact_in_auto", True)))
        if not exact and b.kind != "xrd":
            return None
        p = np.asarray(p, float)
        update_constraints(b.recipe, p)
        T = self.smap.matrix(p, free_names(b.recipe))
        tans = self.smap.tangents(p, None, T)
        if tans is None:
            return None
        st = gen.state()
        if exact:
            self.nfev += 1
            _, dy = gen.jacobian(self.x, st, tans)
            return (np.where(np.isfinite(dy), dy, 0.0) * self.w).T
        return self._jacobian_xrd(p, st, tans, T[:6])

    def _jacobian_xrd(self, p, st, tans, t_lp) -> np.ndarray:
        """PXRD: exact columns of the linear parameters; the others from the generator's window-profile
        derivatives (:meth:`~.generators.XRDGenerator.jacobian_window`) where it has them, else
        forward differences of the state in one batched physics call."""
        from .generators import chebyshev_background

        gen = self.b.generator
        D = len(p)
        struct = ("lattice", "frac", "uiso")
        linear = {"scale"} | {f"bkg_{k}" for k in range(gen.nbkg)}
        scalars = [k for k in tans if k not in struct]
        is_lin = np.array([not any(np.any(tans[k][d] != 0) for k in struct)
                           and not any(tans[k][d] != 0 for k in scalars if k not in linear) for d in range(D)])
        lo, hi = self.bounds()
        steps = 1e-6 * np.maximum(np.abs(p), 1e-2)
        steps = np.where(p + steps > hi, -steps, steps)
        lp = np.asarray(gen.stru.lattice.abcABG(), float)

        def moved(d, h):
            s = dict(st)
            if np.any(t_lp[:, d] != 0):
                s["lattice"] = self.smap.lattice_rows(lp + h * t_lp[:, d])
            s["frac"] = st["frac"] + h * tans["frac"][d]
            s["uiso"] = st["uiso"] + h * tans["uiso"][d]
            for k in scalars:
                s[k] = st[k] + h * float(tans[k][d])
            return s

        nl = np.flatnonzero(~is_lin)
        lin_scale = is_lin.any() and any(tans["scale"][d] != 0 for d in np.flatnonzero(is_lin))
        J = np.empty((len(self.x), D))
        unit = None
        window = getattr(gen, "jacobian_window", None)
        out = None
        if len(nl) and window is not None:
            # second-order differences of the peak list only: a longer step than the profiles'
            # differences (their error is (step)², rounding ~1e-16/step); one-sided, into the
            # bounds, at a bound (X = 0: the model clamps the Lorentzian width there)
            h = 1e-5 * np.maximum(np.abs(p[nl]), 1e-2)
            side = np.where(p[nl] - h < lo[nl], 1.0, np.where(p[nl] + h > hi[nl], -1.0, 0.0))
            ha = np.where(side == 0, h, side * h)
            hb = np.where(side == 0, -h, 2 * side * h)
            wts = np.where((side == 0)[:, None], np.stack([np.zeros_like(h), 0.5 / h, -0.5 / h], 1),
                           np.stack([-1.5 / ha, 2.0 / ha, -0.5 / ha], 1))
            out = window(self.x, [st, *(moved(d, a) for d, a in zip(nl, ha)),
                                  *(moved(d, b) for d, b in zip(nl, hb))], wts)
            self.nfev += out is not None
        if out is not None and (not lin_scale or float(st["scale"]) != 0):
            J[:, nl] = out[1].T
            unit = out[0] / float(st["scale"]) if lin_scale else None
        else:
            states = [st, *(moved(d, steps[d]) for d in nl)]
            if lin_scale:  # the main phase at unit scale, without background and extra phases
                s = dict(st, scale=1.0, **{f"bkg_{k}": 0.0 for k in range(gen.nbkg)})
                s.update({f"scale_{n}": 0.0 for n in getattr(gen, "extra_phases", [])})
                states.append(s)
            Y = self.model_batch(states)
            J[:, nl] = ((Y[1 : 1 + len(nl)] - Y[0]) / steps[nl][:, None]).T
            unit = Y[-1] if lin_scale else None
        if is_lin.any():
            V = np.stack([chebyshev_background(self.x, np.eye(gen.nbkg)[k], gen.bkg_domain)
                          for k in range(gen.nbkg)], 1) if gen.nbkg else np.zeros((len(self.x), 0))
            for d in np.flatnonzero(is_lin):
                col = np.zeros(len(self.x))
                if lin_scale and tans["scale"][d] != 0:
                    col += float(tans["scale"][d]) * unit
                for k in range(gen.nbkg):
                    col += float(tans[f"bkg_{k}"][d]) * V[:, k]
                J[:, d] = col
        return J * self.w[:, None]

    def jacobian_fd(self, p) -> np.ndarray:
        """Batched forward differences: one physics call with every perturbed state."""
        b = self.b
        p = np.asarray(p, float)
        lo, hi = self.bounds()
        steps = 1e-6 * np.maximum(np.abs(p), 1e-2)
        steps = np.where(p + steps > hi, -steps, steps)  # stay inside bounds
        if b.fast:
            states = []
            update_constraints(b.recipe, p)
            states.append(b.generator.state())
            for k in range(len(p)):
                pk = p.copy()
                pk[k] += steps[k]
                update_constraints(b.recipe, pk)
                states.append(b.generator.state())
            update_constraints(b.recipe, p)
            Y = self.model_batch(states)
            return ((Y[1:] - Y[0]) / steps[:, None] * self.w).T
        r0 = self.residual(p)
        J = np.empty((len(r0), len(p)))
        for k in range(len(p)):
            pk = p.copy()
            pk[k] += steps[k]
            J[:, k] = (self.residual(pk) - r0) / steps[k]
        self.residual(p)
        return J

    def bounds(self):
        names = free_names(self.b.recipe)
        lo = np.array([self.b.bounds.get(n, (-np.inf, np.inf))[0] for n in names], float)
        hi = np.array([self.b.bounds.get(n, (-np.inf, np.inf))[1] for n in names], float)
        return lo, hi


def linear_start(bundle: RecipeBundle, problem: ResidualProblem) -> None:
    """Solve the linear parameters (scale, background) exactly; for XRD also pick a start size.

    A coarse grid over crystallite size (one batched call) avoids starting a
    nanocrystal fit with needle-sharp peaks that overlap nothing.
    """
    gen = bundle.generator
    recipe = bundle.recipe
    if not bundle.fast:
        return
    w = problem.w
    update_constraints(recipe, [])
    st = gen.state()
    if bundle.kind == "xrd":
        sizes = [st["size_nm"]] if st["size_nm"] > 0 else [1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 40.0, 100.0]
        _, s, coef = linear_size_scan(bundle, problem, sizes)
        set_size_scale_background(bundle, s, coef)
    else:
        d = dict(st)
        d["scale"] = 1.0
        yc = problem.model_batch([d])[0]
        den = float(np.dot(yc * w, yc * w))
        if den > 0:
            recipe.scale.setValue(max(float(np.dot(yc * w, problem.y * w) / den), 1e-12))


def linear_size_scan(bundle: RecipeBundle, problem: ResidualProblem, sizes) -> tuple[float, float, np.ndarray]:
    """Best crystallite size of ``sizes`` (nm) with scale and background solved exactly (PXRD).

    The model is the recipe's current state (constraints updated by the caller) at each size, in one
    batched call.  Returns ``(cost, size, coef)``: the weighted sum of squared residuals, the size,
    and the coefficients (scale, then the Chebyshev background terms).
    """
    from .generators import chebyshev_background

    gen = bundle.generator
    w = problem.w
    st = gen.state()
    states = []
    for s in sizes:
        d = dict(st)
        d.update(size_nm=s, scale=1.0, **{f"bkg_{k}": 0.0 for k in range(gen.nbkg)})
        states.append(d)
    Y = problem.model_batch(states)
    V = np.stack([chebyshev_background(problem.x, np.eye(gen.nbkg)[k], gen.bkg_domain)
                  for k in range(gen.nbkg)], 1)
    best = None
    for s, yc in zip(sizes, Y, strict=True):
        A = np.column_stack([yc, V]) * w[:, None]
        coef, *_ = np.linalg.lstsq(A, problem.y * w, rcond=None)
        if coef[0] <= 0:
            coef[0] = max(float(np.dot(yc, problem.y) / max(np.dot(yc, yc), 1e-300)), 1e-12)
        r = float(np.sum((A @ coef - problem.y * w) ** 2))
        if not np.isfinite(r):
            continue
        if best is None or r < best[0]:
            best = (r, float(s), coef)
    if best is None:
        return np.inf, float(sizes[0]), np.r_[1.0, np.zeros(gen.nbkg)]
    return best


def set_size_scale_background(bundle: RecipeBundle, size_nm: float, coef) -> None:
    """Set the recipe's size (nm), scale and background terms (``coef`` of :func:`linear_size_scan`)."""
    recipe = bundle.recipe
    recipe.size_nm.setValue(float(size_nm))
    recipe.scale.setValue(float(coef[0]))
    for k in range(bundle.generator.nbkg):
        recipe.get(f"bkg_{k}").setValue(float(coef[1 + k]))


def run_stage(bundle: RecipeBundle, problem: ResidualProblem, tags: Sequence[str], max_nfev: int,
              final: bool = True, solver: str = "auto", rw_rtol: float | None = None) -> Any:
    """Free the variables of ``tags`` (all others fixed) and minimise ``problem`` over them.

    Parameters
    ----------
    bundle : RecipeBundle
    problem : ResidualProblem
        The residual on the grid this stage uses.
    tags : sequence of str
        Variable tags to free (``bundle.tags``).
    max_nfev : int
        Residual evaluations allowed.
    final : bool
        Converge tightly (the last stage) rather than just get close.
    solver : {"auto", "lm", "trf"}
        See :func:`~diffpy_diffusion.refine.refine_structure`.
    rw_rtol : float, optional
        Stop once an accepted step lowers Rw by less than this fraction (default
        :data:`RW_STALL_RTOL_FINAL` for the last stage, else :data:`RW_STALL_RTOL`; 0: off,
        scipy's own ftol/xtol only).

    Returns
    -------
    scipy.optimize.OptimizeResult or LMResult or None
        None when the tags free nothing.  The recipe holds the solution.
    """
    from scipy.optimize import least_squares

    recipe = bundle.recipe
    recipe.fix("all")
    free = [n for t in tags for n in bundle.tags.get(t, [])]
    if not free:
        return None
    recipe.free(*free)
    p0 = np.asarray(recipe.getValues(), float)
    lo, hi = problem.bounds()
    pad = 1e-9 * np.maximum(np.abs(p0), 1e-3)
    p0 = np.minimum(np.maximum(p0, np.where(np.isfinite(lo), lo + pad, -np.inf)),
                    np.where(np.isfinite(hi), hi - pad, np.inf))
    if solver == "auto":
        # measured: trf wins for a few variables, Broyden-LM once Jacobians (one physics
        # call per variable) dominate (20-atom Pnma cell: 24 s vs 47 s)
        solver = "lm" if len(free) > 15 else "trf"
    if rw_rtol is None:
        rw_rtol = RW_STALL_RTOL_FINAL if final else RW_STALL_RTOL
    ftol = 1e-7 if final else 1e-5
    if solver == "lm" and bundle.fast:
        # broyden_lm's ftol is on the cost (∝ Rw²): a relative Rw gain r is a cost gain ~2r
        res = broyden_lm(problem.residual, problem.jacobian, p0, lo, hi, max_nfev=max_nfev,
                         ftol=max(ftol, 2.0 * rw_rtol), fresh_jac_at_end=final)
        update_constraints(recipe, res.x)
        return res
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = least_squares(
            problem.residual,
            p0,
            jac=problem.jacobian,
            bounds=(lo, hi),
            x_scale="jac",
            method="trf",
            max_nfev=max_nfev,
            # intermediate stages only need to get close; the last one converges tightly
            ftol=ftol,
            xtol=1e-8 if final else 1e-6,
            gtol=1e-8,
            callback=_rw_stall(rw_rtol) if rw_rtol > 0 else None,
        )
    update_constraints(recipe, res.x)
    return res


def _rw_stall(rtol: float):
    """least_squares callback: StopIteration once an accepted step lowers Rw (∝ √cost) by < ``rtol``."""
    last = [None]

    def callback(intermediate_result):
        cost, prev = float(intermediate_result.cost), last[0]
        last[0] = cost
        if prev is not None and 0.0 < prev - cost and 1.0 - np.sqrt(cost / prev) < rtol:
            raise StopIteration

    return callback


class LMResult:
    """The fields of scipy's OptimizeResult that the driver uses."""

    def __init__(self, x, fun, jac, nfev, njev, status, message):
        self.x, self.fun, self.jac = x, fun, jac
        self.nfev, self.njev, self.status, self.message = nfev, njev, status, message
        self.cost = 0.5 * float(np.dot(fun, fun))


def broyden_lm(fun, jac, p0, lo, hi, *, max_nfev: int = 60, ftol: float = 1e-7, fresh_jac_at_end: bool = True,
                max_broyden: int = 4) -> LMResult:
    """Levenberg–Marquardt with Broyden rank-1 Jacobian updates between full (batched FD) Jacobians.

    A full Jacobian costs one physics call per variable (batched), a residual
    one call: near a minimum the problem is almost linear, so up to
    ``max_broyden`` cheap secant updates replace recomputation, and a fresh
    Jacobian is taken whenever a step fails.  Bounds by projection.
    Scaling: Marquardt's diag(JᵀJ).
    """
    p = np.asarray(p0, float).copy()
    r = fun(p)
    cost = float(r @ r)
    J = jac(p)
    nfev, njev, stale = 1, 1, 0
    lam = 1e-3
    status, message = 0, "max_nfev reached"
    for _ in range(10 * max_nfev):
        if nfev >= max_nfev:
            break
        A = J.T @ J
        g = J.T @ r
        d = np.maximum(np.diag(A), 1e-12 * max(float(np.max(np.diag(A), initial=0.0)), 1e-300))
        try:
            dp = -np.linalg.solve(A + lam * np.diag(d), g)
        except np.linalg.LinAlgError:
            dp = -np.linalg.lstsq(A + lam * np.diag(d), g, rcond=None)[0]
        pn = np.clip(p + dp, lo, hi)
        step = pn - p
        if not np.any(step):
            status, message = 2, "step vanished (at bounds)"
            break
        rn = fun(pn)
        nfev += 1
        cn = float(rn @ rn) if np.all(np.isfinite(rn)) else np.inf
        if cn < cost:
            rel = (cost - cn) / max(cost, 1e-300)
            # secant (Broyden) update of J along the step taken
            J = J + np.outer(rn - r - J @ step, step) / float(step @ step)
            stale += 1
            p, r, cost = pn, rn, cn
            lam = max(lam / 3.0, 1e-9)
            if rel < ftol:
                if stale <= 1:  # converged on a (nearly) exact Jacobian
                    status, message = 2, "ftol satisfied"
                    break
                J = jac(p)  # small decrease may just mean a poor secant Jacobian
                njev += 1
                stale = 0
                continue
            if stale >= max_broyden and nfev < max_nfev:
                J = jac(p)
                njev += 1
                stale = 0
        else:
            if stale:  # a failed step with an approximate Jacobian: refresh it first
                J = jac(p)
                njev += 1
                stale = 0
            else:
                lam *= 4.0
                if lam > 1e10:
                    status, message = 3, "no further decrease"
                    break
    if fresh_jac_at_end and stale:
        J = jac(p)
        njev += 1
    return LMResult(p, r, J, nfev, njev, status, message)


def snapshot(recipe) -> dict[str, float]:
    """Values of every recipe variable (free or fixed), by name."""
    return {n: float(getattr(recipe, n).getValue()) for n in recipe._parameters}


def restore(recipe, snap: dict[str, float]) -> None:
    """Set the variables back to a :func:`snapshot` and update the constraints."""
    for n, v in snap.items():
        getattr(recipe, n).setValue(v)
    update_constraints(recipe, [])
