"""The Rietveld instrument model of the PXRD profile, the TOPAS reader and multi-phase refinement (issue 15).

References are analytic or independent: scipy's Voigt profile for the Thompson–Cox–Hastings
pseudo-Voigt, the first moment of the axial-divergence kernel, cosθ for specimen displacement, the
March–Dollase formula summed by hand over the {100} and {111} equivalents, pymatgen for structures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffpy_diffusion.physics.crystal import CrystalBatch
from diffpy_diffusion.physics.xrd import Reflections, march_dollase_factor, xrd_pattern, xrd_profile

LAM = 1.540598  # Cu Kα1, Å


def _one_peak(two_theta_deg: float) -> Reflections:
    q = 4 * math.pi * math.sin(math.radians(two_theta_deg / 2)) / LAM
    return Reflections.from_lists([[q]], [[1.0]], dtype=torch.float64)


def _profile(refl, x, peak_window=200.0, **kw):
    return xrd_profile(refl, torch.as_tensor(x), wavelength=LAM, lorentz_polarization=False, method="window",
                       peak_window=peak_window, **kw)[0].numpy()


def test_tch_matches_voigt():
    """TCH pseudo-Voigt of Gaussian √W and Lorentzian Y tanθ vs scipy's exact Voigt (TCH: ~1 % of the maximum)."""
    from scipy.special import voigt_profile

    tt = 60.0
    x = np.linspace(55.0, 65.0, 4001)
    hg, y_par = 0.12, 0.15
    hl = y_par * math.tan(math.radians(tt / 2))
    y = _profile(_one_peak(tt), x, W=hg**2, peak_shape="tch", Y=y_par)
    ref = voigt_profile(x - tt, hg / (2 * math.sqrt(2 * math.log(2))), hl / 2)
    assert np.trapezoid(y, x) == pytest.approx(np.trapezoid(ref, x), rel=2e-3)
    assert np.max(np.abs(y - ref)) < 0.015 * ref.max()


def test_tch_lorentz_x_over_cos():
    """X/cosθ alone (U = V = W = 0) gives a Lorentzian of that FWHM (TCH mixing → η = 1)."""
    tt = 100.0
    x = np.linspace(95.0, 105.0, 8001)
    xx = 0.05
    y = _profile(_one_peak(tt), x, peak_shape="tch", X=xx)
    h = xx / math.cos(math.radians(tt / 2))
    ref = (2 / (math.pi * h)) / (1 + 4 * ((x - tt) / h) ** 2)
    assert np.max(np.abs(y - ref)) < 2e-3 * ref.max()


def test_defaults_leave_pattern_unchanged():
    """New parameters at their defaults take the old code path: identical output."""
    b = CrystalBatch.from_arrays([np.eye(3) * 4.2], [np.array([[0, 0, 0], [0.5, 0.5, 0.5]])], [[12, 8]],
                                 dtype=torch.float64)
    x = torch.linspace(20, 80, 600, dtype=torch.float64)
    ref = xrd_pattern(b, x, size_nm=20.0, U=0.01, W=0.002, wavelength2=1.544390)
    new = xrd_pattern(b, x, size_nm=20.0, U=0.01, W=0.002, wavelength2=1.544390, peak_shape="pv", X=0.0, Y=0.0,
                      axial_deg=0.0, displacement_deg=0.0, march_dollase=1.0)
    assert torch.equal(ref, new)


@pytest.mark.parametrize("tt", [30.0, 120.0])
def test_specimen_displacement_shift(tt):
    """Peak centroid moves by displacement_deg · cosθ."""
    x = np.linspace(tt - 3, tt + 3, 6001)
    d = 0.2
    # Gaussian peaks (TCH without Lorentzian): no tails cut by the grid ends
    y0 = _profile(_one_peak(tt), x, 30.0, W=0.01, peak_shape="tch")
    y1 = _profile(_one_peak(tt), x, 30.0, W=0.01, peak_shape="tch", displacement_deg=d)
    shift = np.sum(x * y1) / np.sum(y1) - np.sum(x * y0) / np.sum(y0)
    assert shift == pytest.approx(d * math.cos(math.radians(tt / 2)), rel=1e-3)


@pytest.mark.parametrize("tt", [20.0, 140.0])
def test_axial_asymmetry_first_moment_and_tail(tt):
    """The simple axial kernel moves the centroid by εm/6, εm = −A cot 2θ, with the tail on εm's side."""
    x = np.linspace(tt - 2, tt + 2, 8001)
    a = 0.05
    y0 = _profile(_one_peak(tt), x, 30.0, W=0.003, peak_shape="tch")
    y1 = _profile(_one_peak(tt), x, 30.0, W=0.003, peak_shape="tch", axial_deg=a)
    c0, c1 = np.sum(x * y0) / np.sum(y0), np.sum(x * y1) / np.sum(y1)
    eps_m = -a / math.tan(math.radians(tt))
    assert c1 - c0 == pytest.approx(eps_m / 6, rel=0.01)
    # third central moment: negative (low-angle tail) below 90°, positive above
    skew = np.sum((x - c1) ** 3 * y1) / np.sum(y1)
    assert np.sign(skew) == np.sign(eps_m)
    assert np.trapezoid(y1, x) == pytest.approx(np.trapezoid(y0, x), rel=1e-6)  # intensity kept


@pytest.mark.parametrize("shape", ["gauss", "lorentz"])
@pytest.mark.parametrize("ratio", [0.02, 0.15])
def test_axial_sub_peaks_match_the_exact_kernel_convolution(shape, ratio):
    """The discretised axial kernel (one sub-peak at the mean where εm ≤ 0.025 FWHM, six elsewhere)
    against the exact convolution with 1/√(ε εm) − 1/εm: 200-point Gauss–Legendre quadrature in
    s = √(ε/εm), where the kernel's density is 2(1 − s) on (0, 1)."""
    tt = 20.0
    theta = math.radians(tt / 2)
    prof = dict(W=0.003) if shape == "gauss" else dict(X=0.05)  # Gaussian √W or Lorentzian X/cosθ
    fwhm = math.sqrt(0.003) if shape == "gauss" else 0.05 / math.cos(theta)
    eps_m = ratio * fwhm
    a = -eps_m * math.tan(2 * theta)  # εm = −A cot 2θ
    x = np.linspace(tt - 1, tt + 1, 4001)
    y = _profile(_one_peak(tt), x, 200.0, peak_shape="tch", axial_deg=a, **prof)
    s, w = np.polynomial.legendre.leggauss(200)
    s, w = (s + 1) / 2, w * (1 - (s + 1) / 2)  # nodes on (0, 1), weights × density 2(1 − s) / 2
    exact = sum(wi * _profile(_one_peak(tt), x - eps_m * si**2, 200.0, peak_shape="tch", **prof)
                for si, wi in zip(s, w))
    bound = 1e-4 if ratio <= 0.025 else 1e-3  # one sub-peak: 0.156 (εm/H)²; six: ~0.02 (εm/H)²
    assert np.abs(y - exact).max() <= bound * exact.max()


def test_march_dollase_average_is_one():
    """Averaged over the sphere, the March–Dollase weight is 1 (it redistributes intensity only)."""
    c = torch.linspace(0.0, 1.0, 200001, dtype=torch.float64)  # uniform in cosα on the hemisphere
    for r in (0.5, 0.8, 1.7):
        avg = torch.trapezoid(march_dollase_factor(c, r), c)
        assert float(avg) == pytest.approx(1.0, rel=1e-6)


def test_march_dollase_cubic_families():
    """Simple cubic: I(100) and I(111) scale by the hand-summed March–Dollase averages of their equivalents."""
    a = 3.0
    b = CrystalBatch.from_arrays([np.eye(3) * a], [np.zeros((1, 3))], [[29]], dtype=torch.float64)
    x = np.linspace(20, 60, 8001)

    def area(y, tt):
        m = np.abs(x - tt) < 0.5
        return np.trapezoid(y[m], x[m])

    tt100 = 2 * math.degrees(math.asin(LAM / (2 * a)))
    tt111 = 2 * math.degrees(math.asin(LAM * math.sqrt(3) / (2 * a)))
    r = 0.7
    y0 = xrd_pattern(b, torch.as_tensor(x), wavelength=LAM, W=0.004, method="window")[0].numpy()
    y1 = xrd_pattern(b, torch.as_tensor(x), wavelength=LAM, W=0.004, method="window", march_dollase=r,
                     po_hkl=(0, 0, 1))[0].numpy()
    p100 = (2 * r**1.5 + r**-3) / 3  # (100), (010) at 90°, (001) at 0°
    p111 = (r**2 / 3 + (2 / 3) / r) ** -1.5  # every <111> at cos²α = 1/3
    assert area(y1, tt100) / area(y0, tt100) == pytest.approx(p100, rel=1e-4)
    assert area(y1, tt111) / area(y0, tt111) == pytest.approx(p111, rel=1e-4)


# --------------------------------------------------------------------------- TOPAS reader

_INP = """r_wp  8.30029196
r_exp  3.71783021
xdd sample.xy
LP_Factor(0)
  lam
    ymin_on_ymax  0.001
    la  1 lo 1.540562 lh 0.5
    la  0.5 lo 1.544398 lh 0.5
  bkg @  468.49`_2.36  87.2`_3.5 -107.7`_3.3
  start_X 4.00
  finish_X 22
  str
    a lp2  4.151539`_0.000188
    b lp2  4.151539`_0.000188
    c lp2  4.151539`_0.000188
    al 90.
    be 90.
    ga 90.
    phase_name MgO
    space_group 225
    site Mg1    x 0             y 0             z 0             occ Mg 1.
    site O1     x 0.5           y 0.5           z 0.5           occ O  1.
  str
    a lp3  2.636639`_0.000529
    b lp3  2.636639`_0.000529
    c lp4  4.243849`_0.001323
    phase_name Ru
    space_group 194
    ga 120.
    site Ru1    x 0.3333        y 0.6667        z 0.25          occ Ru 1.
  str
    a 7.2239 b 7.2239 c 6.3605
    phase_name HoNdV2O8
    space_group 141
    site  Nd0  x  0.0 y 0.0 z 0.5  occ Nd  0.5
    site  Ho0  x  0.0 y 0.0 z 0.5  occ Ho  0.5
    site  V4   x  0.0 y 0.5 z 0.25  occ V   1.
    site  O23  x  0.0 y y1  0.18027`_0.00078 z z1  0.83610`_0.00082 occ O   1.
"""


_ROCKSALT = [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]


def test_read_topas_model_and_phases(tmp_path):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.io.topas import read_topas

    p = tmp_path / "fit.inp"
    p.write_text(_INP)
    m = read_topas(p)
    assert m.r_wp == pytest.approx(8.30029196) and m.r_exp == pytest.approx(3.71783021)
    assert (m.start_x, m.finish_x) == (4.0, 22.0)
    assert m.wavelength == 1.540562 and m.wavelength2 == 1.544398 and m.ka2_ratio == 0.5
    assert m.nbkg == 3 and m.data_file == "sample.xy"
    assert [ph.name for ph in m.phases] == ["MgO", "Ru", "HoNdV2O8"]
    mgo, ru, hond = (ph.to_structure() for ph in m.phases)
    # rock salt: 8 atoms, Mg-O = a/2 (an independent reference built by hand)
    ref = Structure(Lattice.cubic(4.151539), ["Mg"] * 4 + ["O"] * 4, _ROCKSALT)
    assert StructureMatcher().fit(mgo, ref)
    # hcp Ru: 0.3333/0.6667 are 1/3, 2/3 -- two atoms, not six near-duplicates
    assert len(ru) == 2 and ru.lattice.gamma == pytest.approx(120.0)
    # two half-occupied species on one site merge into one disordered site
    assert hond.composition.reduced_formula == "NdHoV2O8"
    assert not hond.is_ordered
    assert hond.lattice.c == pytest.approx(6.3605)


def test_read_topas_bad_number_names_line(tmp_path):
    from diffpy_diffusion.errors import InputFileError
    from diffpy_diffusion.io.topas import read_topas

    p = tmp_path / "bad.inp"
    p.write_text("r_wp 2.0\nstr\n  a lp1 oops\n  space_group 225\n")
    with pytest.raises(InputFileError, match=r"bad\.inp:3: expected a number after 'a'"):
        read_topas(p)


# --------------------------------------------------------------------------- multi-phase refinement


def _cubic(a, species, coords):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(a), species, coords)


def test_refine_with_impurity_phase_recovers_fraction():
    """A 2-phase pattern (MgO + 20 % of Cu by scale) with the TCH profile: the impurity phase is found
    with its scale and cell; without it the fit is much worse."""
    from diffpy_diffusion.refine import refine_structure
    from diffpy_diffusion.types import Observation

    mgo = _cubic(4.2112, ["Mg"] * 4 + ["O"] * 4, _ROCKSALT)
    cu = _cubic(3.6149, ["Cu"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    x = np.arange(30.0, 100.0, 0.02)

    def pattern(s, scale):
        b = CrystalBatch.from_arrays([s.lattice.matrix], [s.frac_coords], [[site.specie.Z for site in s]],
                                     uisos=[np.full(len(s), 0.005)], dtype=torch.float64)
        return xrd_pattern(b, torch.as_tensor(x), wavelength=LAM, size_nm=60.0, W=0.004, peak_shape="tch",
                           scale=scale)[0].numpy()

    y = pattern(mgo, 1.0) + pattern(cu, 0.2) + 300.0
    rng = np.random.default_rng(0)
    y = rng.poisson(y * 50.0 / y.max() * 20).astype(float)  # counting noise at ~1000 counts peak
    obs = Observation(kind="xrd", x=x, y=y, x_kind="2theta", sigma=np.sqrt(np.maximum(y, 1)), wavelength=LAM,
                      composition={"Mg": 1, "O": 1})
    cu_start = _cubic(3.62, ["Cu"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    res = refine_structure(obs, mgo, phases=[cu_start], instrument="rietveld", nbkg=3,
                           stages=[["scale", "bkg", "phase_scale"], ["lat", "phase_lat", "size", "phase_size",
                                                                       "profile"]])
    alone = refine_structure(obs, mgo, instrument="rietveld", nbkg=3,
                             stages=[["scale", "bkg"], ["lat", "size", "profile"]])
    ratio = res.params["scale_p1_Cu"]["value"] / res.params["scale"]["value"]
    assert ratio == pytest.approx(0.2, rel=0.05)
    assert res.params["p1_Cu_a"]["value"] == pytest.approx(3.6149, abs=2e-3)
    assert res.rw < 0.5 * alone.rw
    assert res.extra_phases and res.extra_phases[0]["name"] == "p1_Cu"


def test_multiphase_batch_computes_each_phase_once_per_distinct_input(monkeypatch):
    """A finite-difference batch (base state, then one variable perturbed per state): the batch equals
    every state computed alone, and each phase is computed only for the states that change it."""
    from diffpy_diffusion.refine.generators import XRDGenerator
    from diffpy_diffusion.refine.symmetry import to_diffpy

    gen = XRDGenerator("xrd", nbkg=3, peak_shape="tch")
    gen.setStructure(to_diffpy(_cubic(4.2112, ["Mg"] * 4 + ["O"] * 4, _ROCKSALT)))
    gen.add_phase(to_diffpy(_cubic(3.6149, ["Cu"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])), "cu")
    gen.wavelength, gen.bkg_domain = LAM, (30.0, 100.0)
    x = np.arange(30.0, 100.0, 0.05)
    base = gen.state()
    base.update(W=0.004, size_nm=60.0, scale_cu=0.2, bkg_0=300.0)
    moved_xyz = dict(base, frac=base["frac"] + 1e-3)
    moved_cu = dict(base, phases=[dict(base["phases"][0], lattice=base["phases"][0]["lattice"] * 1.001)])
    states = [base, moved_xyz, dict(base, scale_cu=0.21), dict(base, bkg_1=5.0), dict(base, U=0.001), moved_cu]
    rows, shared = [], []
    orig, orig_fixed = XRDGenerator._pattern, XRDGenerator._fixed_peaks

    def counting(self, batch, *args, **kwargs):
        rows.append(len(batch.lattice))
        return orig(self, batch, *args, **kwargs)

    def counting_fixed(self, x, group):
        shared.append(len(group))
        return orig_fixed(self, x, group)

    monkeypatch.setattr(XRDGenerator, "_pattern", counting)
    monkeypatch.setattr(XRDGenerator, "_fixed_peaks", counting_fixed)
    y = gen.compute_batch(x, states)
    # MgO: base and its xyz share their peaks (one profile matrix), U alone; Cu: base, its scale,
    # U, its cell
    assert (shared, rows) == ([2], [1, 4])
    alone = np.stack([gen.compute_batch(x, [s])[0] for s in states])
    np.testing.assert_allclose(y, alone, rtol=1e-10, atol=1e-9 * float(np.abs(alone).max()))
    assert not np.allclose(y[5], y[0])  # the Cu cell did move the pattern


def test_fft_profiles_keep_one_batch(monkeypatch):
    """The FFT path picks its work grid from the whole batch, so a finite-difference column must be
    computed with its base: the "pv" shape with a size never splits a batch into fixed-peak groups."""
    from diffpy_diffusion.refine.generators import XRDGenerator
    from diffpy_diffusion.refine.symmetry import to_diffpy

    gen = XRDGenerator("xrd", nbkg=2)
    gen.setStructure(to_diffpy(_cubic(4.2112, ["Mg"] * 4 + ["O"] * 4, _ROCKSALT)))
    gen.wavelength = LAM
    base = dict(gen.state(), W=0.004, size_nm=10.0)
    batches = []
    orig = XRDGenerator._pattern

    def counting(self, batch, *args, **kwargs):
        batches.append(len(batch.lattice))
        return orig(self, batch, *args, **kwargs)

    monkeypatch.setattr(XRDGenerator, "_pattern", counting)
    gen.compute_batch(np.arange(30.0, 100.0, 0.05), [base, dict(base, frac=base["frac"] * 1.001), dict(base, U=0.001)])
    assert batches == [3]
