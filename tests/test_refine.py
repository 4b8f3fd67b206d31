"""Refinement tests against independent references.

* truth recovery: data simulated with the physics module (+ noise) from a known
  structure; the refinement starts from lattice +3 % and free coordinates moved
  0.1 Å and must come back (lattice within 0.1 %, coordinates within 0.02 Å);
* symmetry: spglib (independent of srfit) finds the same space group after
  random moves of the free variables;
* measured Ni PDF: Rw of our srfit engine vs pdffit2 (independent code) from the
  same start.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.errors import DiffpyDiffusionError
from diffpy_diffusion.types import Observation


def wurtzite_cdse() -> Structure:
    s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(4.30, 7.01), ["Cd", "Se"],
                                  [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.377]])
    s.add_site_property("uiso", [0.012 if sp.symbol == "Cd" else 0.009 for sp in s.species])
    return s


def rutile_tio2() -> Structure:
    s = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                  [[0, 0, 0], [0.3048, 0.3048, 0]])
    s.add_site_property("uiso", [0.006 if sp.symbol == "Ti" else 0.008 for sp in s.species])
    return s


def _perturbed(truth: Structure, free_shift) -> Structure:
    """Lattice +3 % (all lengths), then ``free_shift(structure)`` moves the free coordinates."""
    s = truth.copy()
    s.apply_strain(0.03)
    free_shift(s)
    return s


def _site_error(refined: Structure, truth: Structure) -> float:
    """Largest distance (Å, in the truth's metric) from a true site to the nearest refined site of its species."""
    worst = 0.0
    for site in truth:
        best = np.inf
        for other in refined:
            if other.species != site.species:
                continue
            d = np.asarray(other.frac_coords) - np.asarray(site.frac_coords)
            d -= np.round(d)
            best = min(best, float(np.linalg.norm(truth.lattice.get_cartesian_coords(d))))
        worst = max(worst, best)
    return worst


def _lattice_error(refined: Structure, truth: Structure) -> float:
    return float(np.max(np.abs(np.array(refined.lattice.abc) / np.array(truth.lattice.abc) - 1)))


def _simulate_xrd(s: Structure, x, *, size_nm=5.0, noise=0.01, seed=0):
    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.xrd import xrd_pattern

    y = xrd_pattern(CrystalBatch.from_structures([s]), torch.as_tensor(x), size_nm=size_nm).numpy()[0]
    y = 1000 * y / y.max() + 30.0
    rng = np.random.default_rng(seed)
    sig = np.full_like(y, noise * y.max())
    return Observation("xrd", x, y + rng.normal(0, sig), "2theta", composition=s.composition.reduced_formula,
                       wavelength=1.540598, sigma=sig)


def _simulate_pdf(s: Structure, r, *, qmax=25.0, qdamp=0.03, delta2=1.5, noise=0.01, seed=0):
    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.pdf import pdf_gr

    g = pdf_gr(CrystalBatch.from_structures([s]), torch.as_tensor(r), qmax=qmax, qdamp=qdamp,
               delta2=delta2).numpy()[0]
    rng = np.random.default_rng(seed)
    sig = np.full_like(g, noise * np.abs(g).max())
    return Observation("pdf", r, g + rng.normal(0, sig), "r", composition=s.composition.reduced_formula,
                       sigma=sig, qmax=qmax, qdamp=qdamp)


# ------------------------------------------------------------------ symmetry


def test_polar_axes():
    from diffpy_diffusion.refine.recipe import polar_axes
    from diffpy_diffusion.refine.symmetry import symmetrize

    assert polar_axes(symmetrize(wurtzite_cdse()).spacegroup) == {"z"}
    assert polar_axes(symmetrize(rutile_tio2()).spacegroup) == set()
    assert polar_axes(symmetrize(wurtzite_cdse(), use_symmetry=False).spacegroup) == {"x", "y", "z"}


@pytest.mark.parametrize("make", [wurtzite_cdse, rutile_tio2])
def test_symmetrize_finds_spacegroup_of_distorted_primitive_cell(make):
    import spglib

    truth = make()
    s = truth.get_primitive_structure()
    s.perturb(0.005)
    from diffpy_diffusion.refine.symmetry import symmetrize

    sym = symmetrize(s, tol=0.02)
    ref = spglib.get_symmetry_dataset((truth.lattice.matrix, truth.frac_coords, [sp.Z for sp in truth.species]))
    assert sym.number == ref.number
    assert len(sym.structure) == len(truth)


@pytest.mark.parametrize("make", [wurtzite_cdse, rutile_tio2])
def test_constraints_keep_symmetry(make):
    """Random moves of every free variable leave spglib's space group unchanged."""
    import spglib

    from diffpy_diffusion.refine.optimize import update_constraints
    from diffpy_diffusion.refine.recipe import build_recipe
    from diffpy_diffusion.refine.symmetry import to_pymatgen

    truth = make()
    obs = Observation("pdf", np.linspace(1, 10, 50), np.zeros(50), "r")
    b = build_recipe(obs, truth)
    rec = b.recipe
    rec.free("all")
    names = list(rec.getNames())
    rng = np.random.default_rng(1)
    p = np.array(rec.getValues()) + np.array(
        [rng.normal(0, 0.05) if n[:2] in ("x_", "y_", "z_") else 0.0 for n in names]
    )
    p[[i for i, n in enumerate(names) if n in ("a", "b", "c")]] *= 1.02
    update_constraints(rec, p)
    moved = to_pymatgen(b.generator.stru)
    num = spglib.get_symmetry_dataset(
        (moved.lattice.matrix, moved.frac_coords, [sp.Z for sp in moved.species]), symprec=1e-4
    ).number
    assert num == b.sym.number
    # only the free parameters of the group are variables
    expected = {"P6_3mc": {"a", "c", "z_2"}, "P4_2/mnm": {"a", "c", "x_2"}}[b.sym.symbol]
    assert {n for n in names if n[:2] in ("a", "b", "c", "x_", "y_", "z_") or n in ("a", "b", "c")} == expected


# ------------------------------------------------------------------ truth recovery


def _shift_se(s: Structure):
    se = [i for i, site in enumerate(s) if site.specie.symbol == "Se"]
    s.translate_sites(se, [0, 0, 0.1 / s.lattice.c])


def _shift_o(s: Structure):
    # O at (x, x, 0), (-x, -x, 0), (1/2+x, 1/2-x, 1/2), (1/2-x, 1/2+x, 1/2): move x by 0.1 Å along [110]
    dx = 0.1 / (np.sqrt(2) * s.lattice.a)
    for i, site in enumerate(s):
        if site.specie.symbol != "O":
            continue
        f = site.frac_coords
        sx = 1 if (f[0] % 1) < 0.5 and abs(f[2]) < 0.25 else -1
        if abs(f[2] - 0.5) < 0.25:
            sx = 1 if (f[0] % 1) > 0.5 else -1
            s.translate_sites([i], [sx * dx, -sx * dx, 0])
        else:
            s.translate_sites([i], [sx * dx, sx * dx, 0])


@pytest.mark.slow
@pytest.mark.parametrize("make,shift", [(wurtzite_cdse, _shift_se), (rutile_tio2, _shift_o)])
def test_xrd_refinement_recovers_truth(make, shift):
    from diffpy_diffusion.refine import refine_structure

    truth = make()
    obs = _simulate_xrd(truth, np.arange(20.0, 90.0, 0.04))
    start = _perturbed(truth, shift)
    assert _site_error(start, truth) > 0.05 and _lattice_error(start, truth) > 0.029
    res = refine_structure(obs, start)
    assert res.spacegroup == make().get_space_group_info()[0]
    assert _lattice_error(res.structure, truth) < 1e-3
    assert _site_error(res.structure, truth) < 0.02
    assert res.reduced_chi2 < 1.3  # down to the noise
    assert abs(res.params["size_nm"]["value"] - 5.0) < 0.5
    for v in res.params.values():
        assert np.isfinite(v["value"]) and v["esd"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("make,shift,calculator", [(wurtzite_cdse, _shift_se, "torch"),
                                                   (rutile_tio2, _shift_o, "auto")])
def test_pdf_refinement_recovers_truth(make, shift, calculator):
    """Data from the torch model; refined with the torch generator and with the default (pdffit2) one."""
    from diffpy_diffusion.refine import refine_structure

    truth = make()
    obs = _simulate_pdf(truth, np.arange(1.0, 10.0, 0.02))
    start = _perturbed(truth, shift)
    res = refine_structure(obs, start, calculator=calculator)
    assert _lattice_error(res.structure, truth) < 1e-3
    assert _site_error(res.structure, truth) < 0.02
    assert res.reduced_chi2 < 1.3  # down to the noise
    assert abs(res.params["scale"]["value"] - 1.0) < 0.05


def test_refinement_result_fields_and_pdffit2_files(tmp_path):
    from diffpy_diffusion.refine import refine_structure, write_refinement_files

    truth = rutile_tio2()
    obs = _simulate_pdf(truth, np.arange(1.0, 8.0, 0.02))
    res = refine_structure(obs, truth, stages=[["scale"], ["lat"]])
    assert res.kind == "pdf" and res.engine == "srfit"
    assert res.x.shape == res.y_obs.shape == res.y_calc.shape
    assert set(res.params) == {"scale", "a", "c"}
    assert res.to_dict()["spacegroup"] == "P4_2/mnm"
    files = write_refinement_files(res, obs, tmp_path, "rank01")
    assert files["stru"].read_text().startswith("title")
    assert "pf.refine()" in files["script"].read_text()


def test_bad_input_messages():
    from diffpy_diffusion.refine import refine_structure

    short = Observation("xrd", np.linspace(20, 21, 5), np.ones(5), "2theta", wavelength=1.54)
    with pytest.raises(DiffpyDiffusionError, match="too short"):
        refine_structure(short, rutile_tio2())
    no_wl = Observation("xrd", np.linspace(20, 80, 100), np.ones(100), "2theta")
    with pytest.raises(DiffpyDiffusionError, match="wavelength"):
        refine_structure(no_wl, rutile_tio2())
    obs = Observation("pdf", np.linspace(1, 10, 100), np.ones(100), "r")
    with pytest.raises(DiffpyDiffusionError, match="engine"):
        refine_structure(obs, rutile_tio2(), engine="gsas")


# ------------------------------------------------------------------ measured Ni vs pdffit2


@pytest.fixture
def ni_observation(shared_data):
    from diffpy_diffusion.io import read_observation

    path = shared_data / "measured" / "ni_xray_2008" / "ni-q27r60-xray.gr"
    if not path.exists():
        pytest.skip(f"{path} not found")
    obs = read_observation(path, composition="Ni")
    m = (obs.x >= 1.5) & (obs.x <= 10.0)
    return Observation("pdf", obs.x[m], obs.y[m], "r", composition="Ni", sigma=obs.sigma[m], qmax=27.0)


@pytest.mark.slow
def test_measured_ni_pdf_rw_matches_pdffit2(ni_observation, shared_data):
    from diffpy_diffusion.io import read_structure
    from diffpy_diffusion.refine import refine_structure

    start = read_structure(shared_data / "measured" / "ni_xray_2008" / "ni.cif")
    # the torch G(r) inside srfit vs pdffit2's own engine: two independent codes
    ours = refine_structure(ni_observation, start, engine="srfit", calculator="torch")
    ref = refine_structure(ni_observation, start, engine="pdffit2")
    # pdffit2's own Rw from its own engine, same data and starting point
    assert ref.stages[-1]["pdffit2_rw"] == pytest.approx(ref.rw, rel=1e-3)
    assert ours.rw <= 1.05 * ref.rw
    assert ours.rw < 0.15
    assert ours.params["a"]["value"] == pytest.approx(ref.params["a"]["value"], abs=2e-3)
    assert ours.params["qdamp"]["value"] == pytest.approx(0.055, abs=0.01)


def test_trigonal_x2x_site_keeps_symmetry():
    """P-3m1 6i site (x, 2x, z): diffpy.structure writes a wrong formula for one member;
    build_recipe must detect it and keep the structure symmetric under any variable move."""
    import spglib

    from diffpy_diffusion.refine.optimize import update_constraints
    from diffpy_diffusion.refine.recipe import build_recipe
    from diffpy_diffusion.refine.symmetry import to_pymatgen

    # Sr3Nb2ZnO9 cell of an MP-20 validation entry, in spglib's standard order (O at 6i first
    # as the (-2x, -x, z) member, which diffpy picks as the orbit's generator)
    x, z = 0.169721, 0.171446
    sites = [("Sr", (0, 0, 0.5)), ("Sr", (2 / 3, 1 / 3, 0.835176)), ("Sr", (1 / 3, 2 / 3, 0.164824)),
             ("Nb", (2 / 3, 1 / 3, 0.320424)), ("Nb", (1 / 3, 2 / 3, 0.679576)), ("Zn", (0, 0, 0)),
             ("O", (1 - 2 * x, 1 - x, 1 - z)), ("O", (2 * x, x, z)), ("O", (0, 0.5, 0.5)), ("O", (0.5, 0, 0.5)),
             ("O", (x, 2 * x, 1 - z)), ("O", (1 - x, 1 - 2 * x, z)), ("O", (0.5, 0.5, 0.5)),
             ("O", (x, 1 - x, 1 - z)), ("O", (1 - x, x, z))]
    s = Structure(Lattice.hexagonal(5.75176, 7.05875), [e for e, _ in sites], [c for _, c in sites])
    obs = Observation("pdf", np.linspace(1, 10, 50), np.zeros(50), "r")
    b = build_recipe(obs, s)
    assert b.sym.number == 164
    rec = b.recipe
    rec.free("all")
    names = list(rec.getNames())
    for trial in range(5):
        rng = np.random.default_rng(trial)
        p = np.array(rec.getValues()) + np.array([rng.normal(0, 0.03) if n[:2] in ("x_", "y_", "z_") else 0.0
                                                  for n in names])
        update_constraints(rec, p)
        m = to_pymatgen(b.generator.stru)
        ds = spglib.get_symmetry_dataset((m.lattice.matrix, m.frac_coords, [sp.Z for sp in m.species]), symprec=1e-4)
        assert ds.number == 164
    assert any(n.startswith("z_") for n in names)  # the z of the 6i site still refines


def test_broyden_lm_solves_a_nonlinear_fit_like_scipy():
    """The Broyden-LM solver against scipy.optimize.least_squares on y = a·exp(−b·x) + c·sin(d·x)."""
    from scipy.optimize import least_squares

    from diffpy_diffusion.refine.optimize import broyden_lm

    x = np.linspace(0, 5, 200)
    truth = np.array([2.0, 0.7, 0.3, 3.1])

    def model(p):
        return p[0] * np.exp(-p[1] * x) + p[2] * np.sin(p[3] * x)

    y = model(truth) + np.random.default_rng(0).normal(0, 0.01, x.size)

    def fun(p):
        return model(p) - y

    def jac(p):
        h = 1e-7 * np.maximum(np.abs(p), 1e-3)
        f0 = fun(p)
        return np.stack([(fun(p + np.eye(4)[k] * h[k]) - f0) / h[k] for k in range(4)], 1)

    p0 = np.array([1.5, 1.0, 0.2, 3.0])
    lo, hi = np.full(4, -10.0), np.full(4, 10.0)
    ours = broyden_lm(fun, jac, p0, lo, hi, max_nfev=200, ftol=1e-10)
    ref = least_squares(fun, p0, jac=jac, bounds=(lo, hi))
    assert np.allclose(ours.x, ref.x, atol=1e-5)
    assert ours.jac.shape == (200, 4)


@pytest.mark.parametrize("simulator,kernel", [("protocol", "sinc2"), ("pymatgen", "gauss")])
def test_size_kernel_auto_finds_the_shape_of_the_size_broadening(simulator, kernel):
    """10 nm rock salt: sinc² peaks (our protocol) and Scherrer Gaussians (pymatgen's peaks, an
    independent code) are each recognised by the fit; the Lorentzian leaves a misfit 10x larger."""
    from diffpy_diffusion.evaluate.protocol import simulate_target
    from diffpy_diffusion.evaluate.targets import simulate_pymatgen_target
    from diffpy_diffusion.refine import refine_structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    sim = simulate_target if simulator == "protocol" else simulate_pymatgen_target
    obs = sim(nacl, 10.0, seed=0)
    auto = refine_structure(obs, nacl)
    lor = refine_structure(obs, nacl, size_kernel="scherrer")
    assert auto.instrument["size_kernel"] == kernel and lor.instrument["size_kernel"] == "scherrer"
    assert auto.params["size_nm"]["value"] == pytest.approx(10.0, rel=0.03)
    assert auto.rw < 0.02 and lor.rw > 10 * auto.rw
    assert any(st["tags"] == ["size_kernel"] for st in auto.stages)


def test_size_kernel_rietveld_default_and_bad_name():
    """The Rietveld profile keeps the Lorentzian (its TCH widths model measured shapes) unless asked;
    an unknown shape is a one-line error naming the choices."""
    from diffpy_diffusion.evaluate.protocol import simulate_target
    from diffpy_diffusion.physics import reference
    from diffpy_diffusion.refine import refine_structure

    ni = reference.ni_fcc()
    obs = simulate_target(ni, 10.0, seed=0)
    res = refine_structure(obs, ni, instrument="rietveld", stages=[["scale", "bkg"], ["lat", "size"]])
    assert res.instrument["size_kernel"] == "scherrer"
    res = refine_structure(obs, ni, stages=[["scale", "bkg"], ["lat", "size"]], size_kernel="sinc2")
    assert res.instrument["size_kernel"] == "sinc2"
    with pytest.raises(DiffpyDiffusionError, match="unknown size kernel 'lorentz'.*gauss"):
        refine_structure(obs, ni, size_kernel="lorentz")


def test_refine_command_size_shape(tmp_path):
    """``refine --size-shape``: the shape asked for is used and recorded; a wrong name is click's exit 2."""
    import json

    from click.testing import CliRunner

    from diffpy_diffusion.cli import cli
    from diffpy_diffusion.evaluate.protocol import simulate_target
    from diffpy_diffusion.io import write_xy

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    obs = simulate_target(nacl, 10.0, seed=0)
    data = write_xy(obs.x, obs.y, tmp_path / "nacl.xy")
    cif = tmp_path / "nacl.cif"
    nacl.to(filename=str(cif))
    args = ["refine", str(data), str(cif), "--x", "q", "-w", "1.54184", "--peak-model", "basic"]
    res = CliRunner().invoke(cli, [*args, "--size-shape", "gauss", "-o", str(tmp_path / "fit")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "fit" / "results.json").read_text())
    assert doc["candidates"][0]["provenance"]["instrument"]["size_kernel"] == "gauss"
    assert "size broadening: Gaussian" in res.output
    res = CliRunner().invoke(cli, [*args, "--size-shape", "voigt"])
    assert res.exit_code == 2 and "voigt" in res.output
