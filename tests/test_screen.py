"""screen.py: closed-form fits, ranking of the true structure among decoys, strain/scale recovery, dedupe."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion import screen as S
from diffpy_diffusion.testing import noisy_pxrd
from diffpy_diffusion.types import Observation, Proposal


def _nacl(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _decoys():
    cscl = Structure(Lattice.cubic(3.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    zb = Structure.from_spacegroup("F-43m", Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    wz = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(4.2, 6.9), ["Na", "Cl"],
                                   [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]])
    return [cscl, zb, wz]


def test_linear_fit_recovers_coefficients():
    x = np.linspace(0, 1, 200)
    model = np.stack([np.sin(7 * x), np.cos(3 * x)])
    extra = S._cheb_basis(x, 3)
    y = 2.5 * model[0] + 0.3 + 0.1 * extra[1]
    coef, rwp = S._linear_fit(model, y, extra)
    assert coef[0] == pytest.approx([2.5, 0.3, 0.1, 0.0], abs=1e-6)
    assert rwp[0] < 1e-8 and rwp[1] > 0.1


def _reference_fit(scr, hist, kern):
    """Stage A's fits the direct way: float64 FFTs, profiles interpolated onto the data, then the fit."""
    prof = np.fft.irfft(np.fft.rfft(hist)[..., None, :] * kern, n=scr.nq)
    return S._linear_fit(scr._on_q(prof), scr.y, scr.bkg)


@pytest.mark.parametrize("x_kind, known", [("2theta", False), ("q", True)])
def test_fit_histograms_equals_the_fit_on_interpolated_profiles(x_kind, known):
    # the normal equations formed on the FFT grid (WᵀW tridiagonal, Wᵀy) give the fits of the profiles
    # interpolated onto the data points, the definition; Kα2 sticks, known-phase basis rows and a
    # perfect fit (the residual then comes from the prediction) included
    truth = _nacl()
    obs = noisy_pxrd(truth)
    if x_kind == "q":
        obs = Observation(x=obs.q(), y=obs.y, kind="xrd", x_kind="q", composition=obs.composition)
    else:
        obs.wavelength2, obs.ka2_ratio = obs.wavelength * 1.0025, 0.5
    other = Structure(Lattice(truth.lattice.matrix * 1.01), truth.species, truth.frac_coords)
    scr = S._XRDScreen(obs, known_phases=[other] if known else ())
    assert len(scr.known) == int(known)
    (qb, ib, _), = scr.peaks([truth])
    hist = scr._stick_histogram(qb, ib, np.array([0.97, 1.0, 1.02]))
    kern = scr._kernels(scr.sizes)
    coef, rwp = scr.fit_histograms(hist, kern)
    coef_ref, rwp_ref = _reference_fit(scr, hist, kern)
    assert rwp.shape == rwp_ref.shape == (3, kern.shape[0])
    assert np.abs(rwp - rwp_ref).max() < 1e-5
    assert np.allclose(coef, coef_ref, rtol=1e-4, atol=1e-6 * np.abs(coef_ref).max())
    # a pattern the model explains exactly
    prof = np.fft.irfft(np.fft.rfft(hist[1]) * kern[4], n=scr.nq)
    scr.y = 3.0 * scr._on_q(prof) + 0.2
    scr._readout_cache = None
    coef, rwp = scr.fit_histograms(hist, kern)
    assert rwp[1, 4] < 1e-5 and coef[1, 4, 0] == pytest.approx(3.0, rel=1e-4)
    assert rwp.min() == rwp[1, 4]


def test_point_group_projection_keeps_cubic_metric():
    ops = S._point_group_ops(_nacl())
    assert len(ops) == 48
    lat = _nacl().lattice.matrix
    eps = np.array([[0.01, 0.002, 0], [0.002, -0.02, 0.003], [0, 0.003, 0.005]])
    dG = lat @ (2 * eps) @ lat.T
    dGs = np.mean([R.T @ dG @ R for R in ops], axis=0)
    G = lat @ lat.T + dGs
    # still cubic: equal diagonal, zero off-diagonal (conventional cubic cell)
    assert np.allclose(np.diag(G), G[0, 0]) and np.allclose(G - np.diag(np.diag(G)), 0, atol=1e-9)


def test_xrd_screen_ranks_truth_first_and_recovers_scale():
    truth = _nacl()
    obs = noisy_pxrd(truth)
    start = Structure(Lattice(truth.lattice.matrix * 1.04), truth.species, truth.frac_coords)
    props = [Proposal(s, "test") for s in [*_decoys(), start]]
    res = S.screen(obs, props, k=4)
    best = res.kept[0]
    assert best.structure.lattice.a == pytest.approx(5.64, rel=0.004)
    assert best.scores["screen_rwp"] < 0.1
    assert all(p.scores["screen_rwp"] > 2 * best.scores["screen_rwp"] for p in res.kept[1:])
    assert best.provenance["screen"]["size_nm"] == pytest.approx(3.0, rel=0.25)


def test_xrd_screen_gradient_fixes_axial_ratio():
    truth = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.82, 6.26), ["Zn", "S"],
                                      [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]])
    obs = noisy_pxrd(truth)
    # a = +3 %, c = -2 %: an isotropic scan alone cannot fix it
    start = Structure(Lattice.hexagonal(3.82 * 1.03, 6.26 * 0.98), truth.species, truth.frac_coords)
    res = S.screen(obs, [Proposal(start, "test")], k=1, gradient_steps=60)
    lat = res.kept[0].structure.lattice
    assert lat.a == pytest.approx(3.82, rel=0.01) and lat.c == pytest.approx(6.26, rel=0.01)
    assert lat.gamma == pytest.approx(120, abs=0.01)


def test_pdf_screen_ranks_truth_first():
    import torch

    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.pdf import pdf_gr

    ni = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.52), ["Ni"], [[0, 0, 0]])
    r = np.arange(1.0, 20.0, 0.01)
    g = pdf_gr(CrystalBatch.from_structures([ni], uiso=0.006, dtype=torch.float64), r, qmax=25.0, qdamp=0.04)[0]
    obs = Observation("pdf", r, g.numpy(), "r", composition="Ni", qmax=25.0)
    bcc = Structure(Lattice.cubic(2.85), ["Ni", "Ni"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    hcp = Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(2.6, 4.1), ["Ni"], [[1 / 3, 2 / 3, 0.25]])
    sc = Structure(Lattice.cubic(2.4), ["Ni"], [[0, 0, 0]])
    start = Structure(Lattice.cubic(3.52 * 0.96), ["Ni"] * 4, ni.frac_coords)
    res = S.screen(obs, [Proposal(s, "t") for s in (bcc, hcp, sc, start)], k=4)
    assert res.kept[0].structure.num_sites == 4
    assert res.kept[0].structure.lattice.a == pytest.approx(3.52, rel=0.005)


def test_dedupe_drops_supercell():
    a = Proposal(_nacl(), "t")
    b = _nacl()
    b.make_supercell([2, 1, 1])
    kept, dropped = S.dedupe([a, Proposal(b, "t"), Proposal(_decoys()[0], "t")])
    assert dropped == 1 and len(kept) == 2


def test_empty_and_failed():
    obs = noisy_pxrd(_nacl())
    assert S.screen(obs, [], k=3).kept == []


def test_fuse_by_backend_takes_turns_best_backend_first():
    a1, a2, a3, b1, b2 = (Proposal(_nacl(5.0 + i / 10), name) for i, name in enumerate("aaabb"))
    ranked = [a1, a2, a3, b1, b2]  # every candidate of a screens better than any of b
    assert S.fuse_by_backend(ranked) == [a1, b1, a2, b2, a3]
    assert S.fuse_by_backend([a1, a2]) == [a1, a2]
    assert S.fuse_by_backend([b1, a1, a2]) == [b1, a1, a2]


def test_merged_backends_keep_each_backends_best_in_a_short_list():
    """k = 2 of two backends: the best of each, the better one first, whatever the other Rwp are."""
    truth = _nacl()
    obs = noisy_pxrd(truth)
    cscl, zb, wz = _decoys()
    props = [Proposal(s, "idealised") for s in (truth, zb, cscl)] + [Proposal(wz, "sampled")]
    res = S.screen(obs, props, k=2)
    assert [p.backend for p in res.kept] == ["idealised", "sampled"]
    assert res.kept[0].structure.lattice.a == pytest.approx(5.64, rel=0.004)
    by_rwp = S.screen(obs, props, k=4, fuse_backends=False).kept
    assert [p.scores["screen_rwp"] for p in by_rwp] == sorted(p.scores["screen_rwp"] for p in by_rwp)


def test_dedupe_own_backend_only_compares_within_its_backend():
    sup = _nacl()
    sup.make_supercell([2, 1, 1])
    a, b, c = Proposal(_nacl(), "x"), Proposal(sup, "y"), Proposal(sup.copy(), "x")
    kept, dropped = S.dedupe([a, b, c], own_backend_only={id(b), id(c)})
    # b is another backend's copy of a: kept; c duplicates a of its own backend: dropped
    assert kept == [a, b] and dropped == 1
    assert S.dedupe([a, b, c])[0] == [a]


def test_merged_backends_keep_each_backends_leader_even_when_they_coincide():
    """Two backends found the same structure: both leaders stay (they may refine apart), unless switched off."""
    truth = _nacl()
    obs = noisy_pxrd(truth)
    sup = _nacl(5.66)
    sup.make_supercell([1, 1, 2])  # a StructureMatcher duplicate of the truth
    props = [Proposal(truth, "idealised"), Proposal(_decoys()[1], "idealised"), Proposal(sup, "sampled")]
    res = S.screen(obs, props, k=3)
    assert sorted(p.backend for p in res.kept[:2]) == ["idealised", "sampled"]
    assert res.duplicates == 0
    off = S.screen(obs, props, k=3, backend_leaders=0)
    # the truth and its supercell screen alike (a tie either way): one of them stays, then the decoy
    assert len(off.kept) == 2 and off.duplicates == 1
    assert off.kept[1].scores["screen_rwp"] > 10 * off.kept[0].scores["screen_rwp"]


def test_stage_b_takes_each_backends_leaders_when_merged():
    """gradient_top counts per backend: the best of the weaker backend is strain-fitted too."""
    truth = _nacl()
    obs = noisy_pxrd(truth)
    strained = [_nacl(5.64 * (1 + e)) for e in (0.004, 0.006)]
    rect = strained[1].copy()
    rect.apply_strain([0.0, 0.0, 0.01])  # tetragonal: stage A's isotropic scale cannot fit it
    props = [Proposal(strained[0], "a"), Proposal(rect, "b")]
    merged = S.screen(obs, props, k=2, gradient_top=1, backend_leaders=0, do_dedupe=False)
    assert all(p.provenance["screen"].get("stage") == "gradient" for p in merged.ranked)
    alone = S.screen(obs, props, k=2, gradient_top=1, fuse_backends=False, do_dedupe=False)
    assert sum(p.provenance["screen"].get("stage") == "gradient" for p in alone.ranked) == 1


def test_size_shapes_have_unit_area_and_mixed_rows_match_single_shapes():
    """Each screen size kernel integrates to 1 (Lorentzian, sinc² Laue function, Gaussian), and a
    batch mixing shapes per row gives each row what its shape alone gives (values and gradients)."""
    import torch

    dx = torch.linspace(-40.0, 40.0, 400001, dtype=torch.float64)
    gam = torch.tensor(0.05, dtype=torch.float64)
    length = torch.tensor(100.0, dtype=torch.float64)  # Å
    for code in range(len(S.SCREEN_KERNELS)):
        area = torch.trapezoid(S._one_size_shape(dx, gam, length, code), dx)
        # the Lorentzian's tails beyond ±40 Å⁻¹ hold 2γ/(π·40) of its area
        assert float(area) == pytest.approx(1.0, abs=2e-3), S.SCREEN_KERNELS[code]
    g = torch.Generator().manual_seed(0)
    d = torch.randn(6, 5, 40, dtype=torch.float64, generator=g).requires_grad_(True)
    gams = torch.rand(6, 1, 1, dtype=torch.float64, generator=g) * 0.1 + 0.02
    lengths = torch.rand(6, 1, 1, dtype=torch.float64, generator=g) * 50 + 10
    kind = torch.tensor([0, 1, 2, 1, 0, 2])[:, None, None]
    mixed = S._size_shape(d, gams, lengths, kind)
    single = torch.stack([S._one_size_shape(d[i], gams[i], lengths[i], int(kind[i])) for i in range(6)])
    assert torch.allclose(mixed, single, rtol=0, atol=1e-14)
    (g_mixed,) = torch.autograd.grad(mixed.sum(), d)
    (g_single,) = torch.autograd.grad(single.sum(), d)
    assert torch.allclose(g_mixed, g_single, rtol=0, atol=1e-12)


def _pattern_in_q(structure, uiso: float, size_nm: float = 3.0, noise: float = 0.002):
    """Our forward model's pattern of ``structure`` on a Q grid (intensity per unit Q, Cu Kα1), Uiso ``uiso``."""
    import torch

    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.xrd import xrd_pattern

    q = np.linspace(0.8, 5.7, 1200)
    b = CrystalBatch.from_structures([structure], uiso=uiso, dtype=torch.float64)
    with torch.no_grad():
        y = xrd_pattern(b, q, x_kind="q", wavelength=1.540598, size_nm=size_nm)[0].numpy()
    y = y / y.max() + np.random.default_rng(0).normal(0, noise, len(q))
    return Observation("xrd", q, y, "q", composition=structure.composition.reduced_formula, wavelength=1.540598)


@pytest.mark.parametrize("x_kind", ["q", "2theta"])
@pytest.mark.parametrize("uiso", [0.006, 0.021])
def test_gradient_stage_fits_the_overall_displacement_parameter(uiso, x_kind):
    """The pattern's Debye–Waller fall-off exp(−U Q²) is unknown to the screen (it computes peaks with
    SCREEN_UISO); the gradient stage's envelope recovers U − SCREEN_UISO to a grid step, on data per
    unit Q and per unit 2θ alike (whose peak areas on the Q axis carry dQ/d(2θ) ∝ cos θ, not an
    envelope), and with a strong fall-off the true structure screens about as well as when the
    screen's U is right."""
    truth = _nacl()

    def pattern(u):
        return _pattern_in_q(truth, u) if x_kind == "q" else noisy_pxrd(truth, uiso=u, noise=0.002)

    res = S.screen(pattern(uiso), [Proposal(truth, "test")], k=1)
    got = res.kept[0].provenance["screen"]
    step = float(S.ENVELOPE_DU[1] - S.ENVELOPE_DU[0])
    assert got["envelope_du"] == pytest.approx(uiso - S.SCREEN_UISO, abs=step)
    plain = S.screen(pattern(S.SCREEN_UISO), [Proposal(truth, "test")], k=1)
    assert res.kept[0].scores["screen_rwp"] < 1.2 * plain.kept[0].scores["screen_rwp"]


@pytest.mark.parametrize("x_kind", ["2theta", "q"])
def test_stick_lorentz_polarization_equals_the_physics_factor(x_kind):
    """The screen's LP in sin θ alone equals physics.xrd.lorentz_polarization (× cos θ per unit 2θ)."""
    import math

    import torch

    from diffpy_diffusion.physics.xrd import lorentz_polarization

    lam = 1.5406
    tt = np.linspace(5.0, 150.0, 400)
    q = 4 * math.pi * np.sin(np.radians(tt / 2)) / lam
    x = tt if x_kind == "2theta" else q
    obs = Observation("xrd", x, np.ones_like(x), x_kind, composition="NaCl", wavelength=lam)
    scr = S._XRDScreen(obs)
    for ratio in (1.0, 1.5444 / 1.5406):
        th = np.arcsin(q * lam * ratio / (4 * math.pi))
        want = lorentz_polarization(torch.from_numpy(th)).numpy() * (np.cos(th) if x_kind == "2theta" else 1.0)
        np.testing.assert_allclose(scr.lp_stick(q, ratio), want, rtol=1e-12)
    # beyond the sphere of reflection (sin θ > 1) and at Q -> 0: zero
    assert scr.lp_stick(np.array([0.0, 9.0]))[0] == 0.0 and scr.lp_stick(np.array([9.0]))[0] == 0.0
