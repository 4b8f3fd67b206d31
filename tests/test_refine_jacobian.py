"""Exact refinement Jacobians (issue 16) against central finite differences, in float64.

On the starting points of the truth-recovery refinements of test_refine.py (lattice +3 %,
coordinates moved), with every variable of the default stages free: the exact PDF Jacobian
(:func:`~diffpy_diffusion.physics.pdf.pdf_gr_jvp` through the constraints' state map) and the
exact PXRD Jacobian (:func:`~diffpy_diffusion.physics.xrd.xrd_pattern_jvp`, forward-mode AD;
the basic pseudo-Voigt/FFT profile and the Rietveld TCH/window profile with Kα2, asymmetry,
displacement and preferred orientation) agree with central differences of the generator's
own forward model to 1e-6 relative per column.  The default ("auto") PXRD Jacobian has its
linear columns (scale, background) exact and the others (forward differences of the state)
to the forward-difference error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("_refine_cases", Path(__file__).with_name("test_refine.py"))
_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cases)  # the truth-recovery cases themselves (tests run with --import-mode=importlib)
_perturbed, _simulate_pdf, _simulate_xrd = _cases._perturbed, _cases._simulate_pdf, _cases._simulate_xrd
CASES = [(_cases.wurtzite_cdse, _cases._shift_se), (_cases.rutile_tio2, _cases._shift_o)]


def _problem(obs, structure, tags, start, mode="exact", **build):
    from diffpy_diffusion.refine.optimize import ResidualProblem, free_names, linear_start, update_constraints
    from diffpy_diffusion.refine.recipe import build_recipe

    b = build_recipe(obs, structure, calculator="torch", **build)
    for k, v in start.items():
        b.generator.get(k).setValue(v)
    prob = ResidualProblem(b, jacobian=mode)
    linear_start(b, prob)
    b.recipe.fix("all")
    b.recipe.free(*[n for t in tags for n in b.tags.get(t, [])])
    p = np.asarray(b.recipe.getValues(), float)
    update_constraints(b.recipe, p)
    return b, prob, p, free_names(b.recipe)


def _central(b, prob, p, rel):
    """Central differences of the generator's forward model (every state by the srfit constraints)."""
    from diffpy_diffusion.refine.optimize import update_constraints

    cols = []
    for k in range(len(p)):
        h = rel * max(abs(p[k]), 1e-2)
        ys = []
        for s in (1, -1):
            q = p.copy()
            q[k] += s * h
            update_constraints(b.recipe, q)
            ys.append(b.generator.compute_batch(prob.x, [b.generator.state()])[0])
        cols.append((ys[0] - ys[1]) / (2 * h) * prob.w)
    update_constraints(b.recipe, p)
    return np.stack(cols, 1)


def _column_errors(J, ref):
    return np.linalg.norm(J - ref, axis=0) / np.maximum(np.linalg.norm(ref, axis=0), 1e-300)


@pytest.mark.parametrize("make,shift", CASES, ids=["wurtzite", "rutile"])
def test_pdf_exact_jacobian_matches_central_differences(make, shift):
    truth = make()
    obs = _simulate_pdf(truth, np.arange(1.0, 10.0, 0.02))
    b, prob, p, names = _problem(obs, _perturbed(truth, shift), ["scale", "lat", "xyz", "adp", "peak", "qdamp"],
                                 {"qdamp": 0.03, "delta2": 1.2})
    J = prob.jacobian_exact(p)
    assert J is not None and J.shape == (len(prob.x), len(p))
    # The binned pair sum expands each peak about its nearest grid point, so it jumps (by ~1e-6 of a
    # peak) where a pair distance crosses a half grid step: a difference step that crosses one is
    # dominated by that jump.  The smaller of two step sizes' errors is the derivative's.
    err = np.minimum(_column_errors(J, _central(b, prob, p, 1e-7)), _column_errors(J, _central(b, prob, p, 3e-8)))
    assert set(names) >= {"scale", "a", "c", "delta2", "qdamp"}
    assert err.max() < 1e-6, dict(zip(names, err))


XRD_TAGS = ["scale", "bkg", "lat", "size", "zero", "xyz", "adp", "profile"]
#: the Rietveld instrument's variables, started away from their neutral values (0 or 1) so that every
#: term of the model moves: TCH widths, axial asymmetry, displacement, March–Dollase
RIETVELD_TAGS = XRD_TAGS + ["lorentz", "asym", "displacement", "po"]
# The window model jumps where a ±20 FWHM window edge crosses a grid point, so central differences
# mean nothing where an edge lies within a step of a point: at size_nm 4.0 (rutile, since a 92.7°
# peak is one axial sub-peak) one lies 6e-6° from 33.2°, which every step tried here crosses.
RIETVELD_START = {"size_nm": 4.2, "U": 0.004, "V": -0.002, "W": 0.003, "Y": 0.03, "axial_deg": 0.15,
                  "displacement_deg": 0.02, "march_dollase": 0.9, "zero_deg": 0.01}


@pytest.mark.parametrize("instrument", ["basic", pytest.param("rietveld", marks=pytest.mark.slow)])
@pytest.mark.parametrize("make,shift", CASES, ids=["wurtzite", "rutile"])
def test_xrd_exact_jacobian_matches_central_differences(make, shift, instrument):
    truth = make()
    obs = _simulate_xrd(truth, np.arange(20.0, 90.0, 0.04))
    if instrument == "rietveld":  # with the Kα2 doublet
        obs.wavelength2, obs.ka2_ratio = 1.544426, 0.5
        tags, start = RIETVELD_TAGS, RIETVELD_START
    else:
        tags, start = XRD_TAGS, {"size_nm": 4.0, "W": 0.003, "eta": 0.4, "zero_deg": 0.01}
    b, prob, p, names = _problem(obs, _perturbed(truth, shift), tags, start, instrument=instrument)
    assert b.generator.exact_jacobian
    J = prob.jacobian_exact(p)
    assert J is not None and J.shape == (len(prob.x), len(p))
    # the smallest error over three step sizes: a long step can cross a choice of the model (the
    # ±20 FWHM window edge, the FFT work-grid step, a width node) whose jump dominates it, and a
    # short one loses digits to rounding in the small columns (U, V at these angles)
    err = np.min([_column_errors(J, _central(b, prob, p, rel)) for rel in (1e-5, 1e-6, 1e-7)], axis=0)
    want = {"scale", "a", "c", "size_nm", "zero_deg", "U", "V", "W", "bkg_0"}
    want |= {"Y", "axial_deg", "displacement_deg", "march_dollase"} if instrument == "rietveld" else {"eta"}
    assert set(names) >= want, names
    assert any(n.startswith("Uiso_") for n in names) and any(n[:2] in ("x_", "z_") for n in names)
    assert err.max() < 1e-6, dict(zip(names, err))
    # the batched finite-difference path agrees to its step error
    assert _column_errors(prob.jacobian_fd(p), J).max() < 1e-3


@pytest.mark.parametrize("make,shift", CASES, ids=["wurtzite", "rutile"])
def test_xrd_auto_jacobian_linear_columns_exact(make, shift):
    truth = make()
    obs = _simulate_xrd(truth, np.arange(20.0, 90.0, 0.04))
    b, prob, p, names = _problem(obs, _perturbed(truth, shift), ["scale", "bkg", "lat", "size", "zero", "xyz", "adp"],
                                 {"size_nm": 4.0}, mode="auto")
    J = prob.jacobian_exact(p)
    err = _column_errors(J, _central(b, prob, p, 1e-6))
    linear = [i for i, n in enumerate(names) if n == "scale" or n.startswith("bkg_")]
    assert len(linear) == 1 + b.generator.nbkg
    assert err[linear].max() < 1e-6, dict(zip(names, err))
    assert err.max() < 1e-3, dict(zip(names, err))  # forward differences of the state
    # and the batched finite-difference path it replaces
    assert _column_errors(prob.jacobian_fd(p), J).max() < 1e-3


def test_fd_fallback_for_generators_without_derivatives(monkeypatch):
    """A plugin calculator (no derivatives) and DIFFPY_DIFFUSION_JACOBIAN=fd use finite differences."""
    from diffpy_diffusion.errors import DiffpyDiffusionError
    from diffpy_diffusion.refine.generators import HookPDFGenerator, TorchPDFGenerator
    from diffpy_diffusion.refine.jacobian import jacobian_mode

    assert TorchPDFGenerator.exact_jacobian and not HookPDFGenerator.exact_jacobian
    from diffpy_diffusion.refine.optimize import ResidualProblem, update_constraints
    from diffpy_diffusion.refine.recipe import build_recipe

    make, _ = CASES[1]
    b = build_recipe(_simulate_pdf(make(), np.arange(1.0, 6.0, 0.05)), make(), calculator="pdffit2")
    b.recipe.free("scale", "a")
    p = np.asarray(b.recipe.getValues(), float)
    update_constraints(b.recipe, p)
    prob = ResidualProblem(b, jacobian="exact")
    assert prob.jacobian_exact(p) is None
    assert np.allclose(prob.jacobian(p), prob.jacobian_fd(p))
    monkeypatch.setenv("DIFFPY_DIFFUSION_JACOBIAN", "fd")
    assert jacobian_mode() == "fd"
    assert jacobian_mode("exact") == "exact"
    monkeypatch.setenv("DIFFPY_DIFFUSION_JACOBIAN", "autograd")
    with pytest.raises(DiffpyDiffusionError, match="DIFFPY_DIFFUSION_JACOBIAN"):
        jacobian_mode()


def test_xrd_pattern_jvp_zero_shift_is_a_rigid_translation():
    """An analytic case: on the window profile a zero shift moves the whole 2θ pattern, so
    ∂y/∂zero = −dy/d(2θ), checked against the slope of the pattern itself on a fine grid
    (central differences in 2θ with a step of 1/100 FWHM, error ~2e-4 of the largest slope;
    Gaussian TCH peaks, because a Lorentzian's cut at ±20 FWHM is a jump the slope would see).
    The FFT profile works in Q, where a shift in 2θ also changes the width in 2θ, so there only
    the linear column (scale) is checked; ``y`` equals
    :func:`~diffpy_diffusion.physics.xrd.xrd_pattern`'s on both.
    """
    import torch
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.xrd import xrd_pattern, xrd_pattern_jvp

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.08), ["Au"], [[0, 0, 0]])
    batch = CrystalBatch.from_structures([s]).to(dtype=torch.float64)
    x = np.arange(30.0, 50.0, 0.001)
    tangents = {"zero_deg": torch.tensor([1.0, 0.0]), "scale": torch.tensor([0.0, 1.0])}  # two directions
    for kw in ({"peak_shape": "tch", "method": "window", "U": 0.004, "W": 0.01},
               {"size_nm": 20.0, "W": 0.01, "eta": 0.3}):
        kw = dict(kw, zero_deg=0.05, scale=2.0)
        y, dy = xrd_pattern_jvp(batch, x, tangents, **kw)
        ref = xrd_pattern(batch, torch.as_tensor(x), **kw)[0]
        tol = 1e-12 * float(ref.abs().max())
        assert torch.allclose(y, ref, rtol=1e-12, atol=tol)
        assert torch.allclose(dy[1], y / 2.0, rtol=1e-12, atol=tol)
        if kw.get("method") == "window":
            slope = np.gradient(y.numpy(), x)
            assert np.abs(dy[0].numpy() + slope).max() < 1e-3 * np.abs(slope).max()


@pytest.mark.parametrize("kw", [
    {"peak_shape": "tch", "method": "window", "U": 0.004, "V": -0.002, "W": 0.01, "X": 0.02, "Y": 0.03,
     "size_nm": 30.0, "wavelength2": 1.544426, "axial_deg": 0.3, "displacement_deg": 0.02, "march_dollase": 0.9},
    {"W": 0.01, "eta": 0.3, "zero_deg": 0.02},  # pseudo-Voigt without size: window
    {"peak_shape": "tch", "method": "window", "W": 0.01, "Y": 0.02, "size_nm": 25.0, "size_kernel": "gauss",
     "x_kind": "q"},
    {"method": "window", "size_nm": 25.0, "size_kernel": "sinc2", "W": 0.01, "eta": 0.5},
], ids=["tch-ka2-axial", "pv", "tch-gauss-q", "sinc2"])
def test_xrd_pattern_window_jvp_matches_forward_mode(kw):
    """:func:`~diffpy_diffusion.physics.xrd.xrd_pattern_window_jvp` (analytic profile derivatives, the
    peak list by central differences) gives the pattern and the forward-mode derivatives of
    :func:`~diffpy_diffusion.physics.xrd.xrd_pattern_jvp` to 1e-7 relative per column, along the
    lattice, a coordinate, Uiso and every profile term of each branch of the window profile."""
    import torch
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.xrd import JVP_PARAMETERS, xrd_pattern, xrd_pattern_jvp, xrd_pattern_window_jvp

    s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(4.30, 7.01), ["Cd", "Se"],
                                  [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.377]])
    base = CrystalBatch.from_structures([s]).to(dtype=torch.float64)
    base.uiso = torch.full_like(base.uiso, 0.01)
    x = np.arange(20.0, 70.0, 0.02) if kw.get("x_kind") != "q" else np.arange(1.5, 4.5, 0.002)
    kw = dict(kw, scale=2.0)
    n = base.frac.shape[0]
    tans: dict[str, torch.Tensor] = {}
    # directions that keep the hexagonal symmetry (a broken one splits equivalent reflections: None)
    t_frac = torch.zeros(1, n, 3, dtype=torch.float64)
    t_frac[0, base.numbers == 34, 2] = 1.0  # the Se z
    dirs = [("lattice", (torch.diag(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)) @ base.lattice[0])[None]),
            ("frac", t_frac), ("uiso", torch.linspace(1.0, 2.0, n, dtype=torch.float64)[None])]
    dirs += [(k, torch.ones(1, dtype=torch.float64)) for k in JVP_PARAMETERS if k in kw]
    D = len(dirs)
    for j, (k, t) in enumerate(dirs):
        full = torch.zeros((D, *t.shape[1:]), dtype=torch.float64)
        full[j] = t[0]
        tans[k] = full
    _, dy_ref = xrd_pattern_jvp(base, x, tans, **kw)
    # the 1 + 2D states and per-crystal profile terms of xrd_pattern_window_jvp
    h = 1e-5 * torch.tensor([max(abs(float(kw.get(k, 0.0))), 1e-2) if k not in ("lattice", "frac", "uiso") else 1.0
                             for k, _ in dirs], dtype=torch.float64)
    signs = torch.cat([torch.zeros(1), torch.ones(D), -torch.ones(D)]).to(torch.float64)
    which = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(D), torch.arange(D)])
    step = signs * h[which]  # (S,)
    S = 1 + 2 * D
    onehot = torch.zeros(S, D, dtype=torch.float64)
    onehot[torch.arange(1, S), which[1:]] = 1.0
    move = onehot * step[:, None]  # (S, D): how far each state moves along each direction

    def moved(key, value):
        return value + torch.einsum("sd,d...->s...", move, tans[key])

    lat = moved("lattice", base.lattice.expand(D, 3, 3)[0])
    frac = moved("frac", base.frac).reshape(-1, 3)
    uiso = moved("uiso", base.uiso).reshape(-1)
    batch = CrystalBatch(lat, frac, base.numbers.repeat(S), torch.arange(S).repeat_interleave(n),
                         base.occupancy.repeat(S), uiso)
    wkw = dict(kw)
    for k in JVP_PARAMETERS:
        if k in kw:
            wkw[k] = moved(k, torch.full((1,), float(kw[k]), dtype=torch.float64)[0])
    out = xrd_pattern_window_jvp(batch, x, torch.stack([torch.zeros_like(h), 0.5 / h, -0.5 / h], 1), **wkw)
    assert out is not None
    y, dy = out
    ref = xrd_pattern(base, torch.as_tensor(x), **kw)[0]
    assert torch.allclose(y, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))
    err = (dy - dy_ref).norm(dim=1) / dy_ref.norm(dim=1).clamp_min(1e-300)
    assert float(err.max()) < 1e-7, dict(zip([k for k, _ in dirs], err.tolist()))


def test_xrd_auto_window_jacobian_matches_central_differences(monkeypatch):
    """The default (auto) PXRD Jacobian of the Rietveld model: every non-linear column from
    :meth:`~diffpy_diffusion.refine.generators.XRDGenerator.jacobian_window` (no fallback to
    state differences) agrees with central differences of the model to 1e-6 relative, as the
    forward-mode columns do (TCH, Kα2, axial asymmetry, displacement, March–Dollase)."""
    from diffpy_diffusion.refine import generators

    used = []
    orig = generators.XRDGenerator.jacobian_window

    def spy(self, *args):
        out = orig(self, *args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(generators.XRDGenerator, "jacobian_window", spy)
    make, shift = CASES[1]
    truth = make()
    obs = _simulate_xrd(truth, np.arange(20.0, 90.0, 0.04))
    obs.wavelength2, obs.ka2_ratio = 1.544426, 0.5
    b, prob, p, names = _problem(obs, _perturbed(truth, shift), RIETVELD_TAGS, RIETVELD_START, mode="auto",
                                 instrument="rietveld")
    J = prob.jacobian_exact(p)
    assert used == [True]
    err = np.min([_column_errors(J, _central(b, prob, p, rel)) for rel in (1e-5, 1e-6, 1e-7)], axis=0)
    assert err.max() < 1e-6, dict(zip(names, err))


def test_xrd_auto_window_jacobian_one_sided_at_a_bound():
    """At a bound the per-peak differences of the window Jacobian are one-sided, into the bounds: with
    the Lorentzian width Y at its lower bound 0 (where the model clamps X/cosθ + Y tanθ at 0, so a
    central difference would halve the column) the Y column is the right-hand derivative, as
    forward differences of the model give it (1e-6 relative); the other columns as before."""
    make, shift = CASES[1]
    truth = make()
    obs = _simulate_xrd(truth, np.arange(20.0, 90.0, 0.04))
    obs.wavelength2, obs.ka2_ratio = 1.544426, 0.5
    b, prob, p, names = _problem(obs, _perturbed(truth, shift), RIETVELD_TAGS, dict(RIETVELD_START, Y=0.0),
                                 mode="auto", instrument="rietveld")
    k = names.index("Y")
    assert p[k] == 0.0 and prob.bounds()[0][k] == 0.0
    J = prob.jacobian_exact(p)
    from diffpy_diffusion.refine.optimize import update_constraints

    cols = []
    for rel in (1e-6, 1e-7):
        q = p.copy()
        q[k] += rel
        update_constraints(b.recipe, q)
        y1 = b.generator.compute_batch(prob.x, [b.generator.state()])[0]
        update_constraints(b.recipe, p)
        y0 = b.generator.compute_batch(prob.x, [b.generator.state()])[0]
        cols.append((y1 - y0) / rel * prob.w)
    err = min(np.linalg.norm(J[:, k] - c) / np.linalg.norm(c) for c in cols)
    assert err < 1e-5, err
    others = [i for i in range(len(p)) if i != k]
    err = np.min([_column_errors(J, _central(b, prob, p, rel)) for rel in (1e-5, 1e-6, 1e-7)], axis=0)
    assert err[others].max() < 1e-6, dict(zip(names, err))
