"""PXRD forward model: pymatgen agreement, Scherrer widths, gradients, batching, bad input."""

import math

import numpy as np
import pytest
import torch

from diffpy_diffusion.physics import reference
from diffpy_diffusion.physics.crystal import CrystalBatch
from diffpy_diffusion.physics.xrd import (
    Reflections,
    reflections,
    size_fwhm_q,
    xrd_pattern,
    xrd_pattern_fixed_peaks,
    xrd_peaks,
    xrd_profile,
)

CU = 1.540598


def _structures_for_pymatgen():
    s = reference.mp20_structures(reference.shared_data_dir(), n=60)
    return s if s is not None else reference.built_structures(60)


def test_peaks_match_pymatgen_xrdcalculator():
    """≥ 50 structures: every peak ≥ 1 % within 0.002° and 1 % of the strongest peak."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    structures = _structures_for_pymatgen()
    assert len(structures) >= 50
    calc = XRDCalculator(wavelength=CU)
    ours = xrd_peaks(CrystalBatch.from_structures(structures), CU, (0, 90), table="pymatgen")
    checked = 0
    for s, o in zip(structures, ours):
        ref = calc.get_pattern(s, two_theta_range=(0, 90))
        rx, ry = np.asarray(ref.x), np.asarray(ref.y)
        for x0, y0 in zip(rx[ry >= 1], ry[ry >= 1]):
            j = np.argmin(abs(o["two_theta"] - x0))
            assert abs(o["two_theta"][j] - x0) <= 0.002, (s.formula, x0)
            assert abs(o["intensity"][j] - y0) <= 1.0, (s.formula, x0, y0, o["intensity"][j])
            checked += 1
        # and no extra strong peak of ours is missing in pymatgen's list
        for x1 in o["two_theta"][o["intensity"] >= 1]:
            assert np.min(abs(rx - x1)) <= 0.002, (s.formula, x1)
    assert checked > 500


def _fwhm(x, y):
    """Full width at half maximum of a single peak on a grid (linear interpolation)."""
    i = int(np.argmax(y))
    half = y[i] / 2
    lo = i
    while y[lo] > half:
        lo -= 1
    hi = i
    while y[hi] > half:
        hi += 1
    xl = x[lo] + (half - y[lo]) * (x[lo + 1] - x[lo]) / (y[lo + 1] - y[lo])
    xh = x[hi - 1] + (half - y[hi - 1]) * (x[hi] - x[hi - 1]) / (y[hi] - y[hi - 1])
    return xh - xl


@pytest.mark.parametrize("method", ["window", "fft"])
@pytest.mark.parametrize("size_nm", [2.0, 5.0, 20.0])
def test_scherrer_fwhm_isolated_reflection(size_nm, method):
    tt0 = 60.0
    q0 = 4 * math.pi * math.sin(math.radians(tt0 / 2)) / CU
    refl = Reflections.from_lists([[q0]], [[1.0]], dtype=torch.float64)
    x = torch.arange(10.0, 150.0, 0.002, dtype=torch.float64)
    y = xrd_profile(refl, x, wavelength=CU, size_nm=size_nm, method=method)[0].numpy()
    expected = math.degrees(0.9 * CU / (10 * size_nm * math.cos(math.radians(tt0 / 2))))
    assert _fwhm(x.numpy(), y) == pytest.approx(expected, rel=0.02)


def test_scherrer_fwhm_real_crystal_20nm():
    ni = CrystalBatch.from_structures([reference.ni_fcc()])
    x = torch.arange(40.0, 49.0, 0.002, dtype=torch.float64)
    y = xrd_pattern(ni, x, size_nm=20.0)[0].numpy()  # (111) near 44.5°
    tt = x.numpy()[np.argmax(y)]
    expected = math.degrees(0.9 * CU / (200 * math.cos(math.radians(tt / 2))))
    assert _fwhm(x.numpy(), y) == pytest.approx(expected, rel=0.02)


def test_sinc2_kernel_width_in_q():
    q0 = 3.0
    refl = Reflections.from_lists([[q0]], [[1.0]], dtype=torch.float64)
    x = torch.arange(0.5, 6.0, 0.0005, dtype=torch.float64)
    y = xrd_profile(refl, x, x_kind="q", size_nm=5.0, size_kernel="sinc2", lorentz_polarization=False)[0]
    assert _fwhm(x.numpy(), y.numpy()) == pytest.approx(float(size_fwhm_q(5.0, size_kernel="sinc2")), rel=0.01)
    # and the Scherrer width is Q-independent on a Q grid
    y = xrd_profile(refl, x, x_kind="q", size_nm=5.0, lorentz_polarization=False)[0]
    assert _fwhm(x.numpy(), y.numpy()) == pytest.approx(2 * math.pi * 0.9 / 50.0, rel=0.02)


@pytest.mark.parametrize("method", ["window", "fft"])
def test_gauss_kernel_is_the_analytic_scherrer_gaussian(method):
    """size_kernel="gauss": a unit-area Gaussian of FWHM 2πK/L in Q (no LP), the analytic curve."""
    q0, size_nm = 3.0, 5.0
    refl = Reflections.from_lists([[q0]], [[1.0]], dtype=torch.float64)
    x = torch.arange(2.0, 4.0, 0.0005, dtype=torch.float64)
    y = xrd_profile(refl, x, x_kind="q", size_nm=size_nm, size_kernel="gauss", lorentz_polarization=False,
                    method=method)[0].numpy()
    fwhm = 2 * math.pi * 0.9 / (10 * size_nm)
    sig = fwhm / (2 * math.sqrt(2 * math.log(2)))
    ref = np.exp(-0.5 * ((x.numpy() - q0) / sig) ** 2) / (sig * math.sqrt(2 * math.pi))
    assert np.abs(y - ref).max() < 1e-4 * ref.max()


def test_gauss_kernel_with_gaussian_instrument_adds_widths_in_quadrature():
    refl = Reflections.from_lists([[3.0]], [[1.0]], dtype=torch.float64)
    x = torch.arange(2.0, 4.0, 0.0005, dtype=torch.float64)
    W = 0.02  # deg² (Caglioti W: FWHM² at every angle), converted to Q by the profile itself
    y = xrd_profile(refl, x, x_kind="q", size_nm=5.0, size_kernel="gauss", W=W, eta=0.0,
                    lorentz_polarization=False, method="window")[0].numpy()
    y0 = xrd_profile(refl, x, x_kind="q", W=W, eta=0.0, lorentz_polarization=False, method="window")[0].numpy()
    h_size = 2 * math.pi * 0.9 / 50.0
    h_inst = _fwhm(x.numpy(), y0)
    assert _fwhm(x.numpy(), y) == pytest.approx(math.hypot(h_inst, h_size), rel=0.01)


def test_q_grid_peak_at_reflection():
    ni = CrystalBatch.from_structures([reference.ni_fcc()])
    x = torch.arange(2.5, 3.5, 0.0005, dtype=torch.float64)
    y = xrd_pattern(ni, x, x_kind="q", W=0.01)[0]
    q111 = 2 * math.pi * math.sqrt(3) / 3.52
    assert float(x[torch.argmax(y)]) == pytest.approx(q111, abs=1e-3)


def test_profile_area_is_lp_times_intensity():
    q0 = 3.0
    refl = Reflections.from_lists([[q0]], [[2.0]], dtype=torch.float64)
    x = torch.arange(0.5, 170.0, 0.005, dtype=torch.float64)
    y = xrd_profile(refl, x, W=0.05, eta=0.0)[0]
    th = math.asin(CU * q0 / (4 * math.pi))
    lp = (1 + math.cos(2 * th) ** 2) / (math.sin(th) ** 2 * math.cos(th))
    assert float(torch.trapezoid(y, x)) == pytest.approx(2.0 * lp, rel=1e-3)


def test_batch_equals_individual_and_float32():
    ss = reference.built_structures(3, seed=4) + [reference.cdse_zincblende()]
    x = torch.arange(10.0, 80.0, 0.05, dtype=torch.float64)
    both = xrd_pattern(CrystalBatch.from_structures(ss), x, size_nm=torch.tensor([3.0, 5.0, 8.0, 2.0]), W=0.01)
    for i, s in enumerate(ss):
        one = xrd_pattern(CrystalBatch.from_structures([s]), x, size_nm=[3.0, 5.0, 8.0, 2.0][i], W=0.01)[0]
        # equal up to the form-factor tabulation and the FFT work grid, which the
        # batch shares (< 1e-3 of the maximum)
        assert float((both[i] - one).abs().max()) <= 1e-3 * float(one.abs().max())
    b32 = CrystalBatch.from_structures(ss, dtype=torch.float32)
    y32 = xrd_pattern(b32, x.float(), size_nm=torch.tensor([3.0, 5.0, 8.0, 2.0]), W=0.01)
    assert ((y32.double() - both).abs().max(1).values / both.abs().max(1).values).max() < 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_fast_structure_factors_equal_the_autograd_path(dtype, tol):
    """The no-grad X-ray path (column phase factors, atom-count buckets, tabulated form factors) gives
    the |F|² of the autograd path, reflection by reflection: partial occupancies, Uiso, cells of 1 to
    40 atoms (several buckets), crystals given in no particular order of size."""
    ss = reference.built_structures(6, seed=3) + [reference.cdse_zincblende(), reference.ni_fcc()]
    big = reference.built_structures(1, seed=7)[0].copy()
    big.make_supercell([2, 2, 2])
    ss.insert(2, big)
    ss.insert(0, reference.ni_fcc().copy())
    ss[0].remove_sites([1, 2, 3])  # one atom
    rng = np.random.default_rng(0)
    b = CrystalBatch.from_structures(ss, dtype=dtype)
    b = b.replace(occupancy=torch.as_tensor(rng.uniform(0.5, 1.0, len(b.numbers)), dtype=dtype),
                  uiso=torch.as_tensor(rng.uniform(0.0, 0.02, len(b.numbers)), dtype=dtype))
    for batch in (b, b.replace(occupancy=torch.ones_like(b.occupancy), uiso=torch.zeros_like(b.uiso))):
        with torch.no_grad():
            fast = reflections(batch, 6.0, q_min=0.5, merge=False)
        slow = reflections(batch.replace(frac=batch.frac.clone().requires_grad_()), 6.0, q_min=0.5, merge=False)
        assert torch.equal(fast.hkl, slow.hkl) and torch.equal(fast.crystal, slow.crystal)
        assert torch.equal(fast.q, slow.q.detach())
        for c in range(len(ss)):
            m = fast.crystal == c
            i_fast, i_slow = fast.intensity[m].double(), slow.intensity.detach()[m].double()
            assert float((i_fast - i_slow).abs().max()) <= tol * float(i_slow.max())


_FIXED_PEAK_PROFILES = [
    # measured-pattern model: TCH, Kα2, axial asymmetry, displacement, preferred orientation, size
    dict(peak_shape="tch", method="window", U=0.02, V=-0.005, W=0.003, X=0.01, Y=0.02, wavelength2=1.544426,
         ka2_ratio=0.5, axial_deg=0.05, displacement_deg=0.01, zero_deg=-0.02, size_nm=40.0, march_dollase=1.3,
         po_hkl=(0, 1, 1)),
    dict(U=0.01, W=0.004, eta=0.3),  # pseudo-Voigt without size: the window path
    dict(W=0.004, size_nm=8.0),  # the FFT path: computed by xrd_pattern itself
]


@pytest.mark.parametrize("kw", _FIXED_PEAK_PROFILES)
def test_fixed_peak_patterns_equal_each_crystal_alone(kw):
    """Crystals of one lattice that differ in coordinates, Uiso, occupancy and scale: the matrix
    product equals xrd_pattern of each crystal on its own (to rounding)."""
    rng = np.random.default_rng(3)
    lat = np.array([[4.1, 0.1, 0.2], [0.3, 5.2, 0.1], [0.2, 0.4, 6.3]])  # triclinic, Å
    base = rng.random((5, 3))
    moved = base.copy()
    moved[1, 0] += 1e-3  # one atom (a shift of all would leave |F|² as it is)
    fracs = [base, moved, base, base, rng.random((5, 3))]
    uisos = [np.full(5, 0.01)] * 2 + [np.full(5, 0.02)] + [np.full(5, 0.01)] * 2
    occs = [np.ones(5)] * 3 + [np.array([1, 1, 0.5, 1, 1])] + [np.ones(5)]
    numbers = [[56, 22, 8, 8, 8]] * 5
    scale = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.5], dtype=torch.float64)
    x = torch.arange(15.0, 80.0, 0.02, dtype=torch.float64)
    batch = CrystalBatch.from_arrays([lat] * 5, fracs, numbers, occupancies=occs, uisos=uisos)
    y = xrd_pattern_fixed_peaks(batch, x, scale=scale, **kw)
    for i in range(5):
        one = CrystalBatch.from_arrays([lat], [fracs[i]], [numbers[i]], occupancies=[occs[i]], uisos=[uisos[i]])
        ref = xrd_pattern(one, x, scale=float(scale[i]), **kw)[0]
        assert float((y[i] - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    assert float((y[1] - y[0]).abs().max()) > 1e-6 * float(y[0].abs().max())  # the move is seen


def test_fixed_peak_patterns_beyond_the_matrix_cap_are_computed_one_by_one(monkeypatch):
    import diffpy_diffusion.physics.xrd as xrd

    lat = np.diag([4.0, 5.0, 6.0])
    batch = CrystalBatch.from_arrays([lat, lat], [[[0, 0, 0], [0.3, 0.2, 0.1]], [[0, 0, 0], [0.31, 0.2, 0.1]]],
                                     [[29, 8]] * 2)
    x = torch.arange(20.0, 60.0, 0.05, dtype=torch.float64)
    profiled = []  # the number of "crystals" each profile call draws: R for the matrix, 2 one by one
    orig = xrd.xrd_profile

    def spy(refl, *a, **k):
        profiled.append(refl.num_crystals)
        return orig(refl, *a, **k)

    monkeypatch.setattr(xrd, "xrd_profile", spy)
    built = xrd_pattern_fixed_peaks(batch, x, W=0.01)
    monkeypatch.setattr(xrd, "FIXED_PEAKS_MAX_ELEMENTS", 1)
    capped = xrd_pattern_fixed_peaks(batch, x, W=0.01)
    assert profiled[0] > 2 and profiled[1:] == [2]
    assert float((capped - built).abs().max()) <= 1e-12 * float(built.abs().max())


def test_fixed_peak_patterns_refuse_what_moves_the_peaks():
    lat = np.eye(3) * 4.0
    two = CrystalBatch.from_arrays([lat, lat * 1.01], [[[0, 0, 0]]] * 2, [[29]] * 2)
    x = torch.arange(20.0, 60.0, 0.05, dtype=torch.float64)
    with pytest.raises(ValueError, match="share one lattice"):
        xrd_pattern_fixed_peaks(two, x, W=0.01)
    same = CrystalBatch.from_arrays([lat, lat], [[[0, 0, 0]]] * 2, [[29]] * 2)
    with pytest.raises(ValueError, match="W: must be one number"):
        xrd_pattern_fixed_peaks(same, x, W=torch.tensor([0.01, 0.02], dtype=torch.float64))


def test_ka2_doublet_is_sum_of_two_lines():
    b = CrystalBatch.from_structures([reference.ni_fcc()])
    x = torch.arange(40.0, 100.0, 0.01, dtype=torch.float64)
    kw = dict(W=0.003, eta=0.3)
    y12 = xrd_pattern(b, x, wavelength=CU, wavelength2=1.544426, ka2_ratio=0.5, **kw)
    y1 = xrd_pattern(b, x, wavelength=CU, **kw)
    refl = reflections(b, 4 * math.pi / CU * 0.999)
    y2 = xrd_profile(refl, x, wavelength=1.544426, **kw)
    assert torch.allclose(y12, y1 + 0.5 * y2, rtol=1e-6, atol=1e-6 * float(y1.max()))


def test_zero_shift_scale_and_background():
    b = CrystalBatch.from_structures([reference.ni_fcc()])
    x = torch.arange(40.0, 48.0, 0.001, dtype=torch.float64)
    y0 = xrd_pattern(b, x, W=0.01)[0]
    y1 = xrd_pattern(b, x, W=0.01, zero_deg=0.2, scale=3.0, background=torch.tensor([[5.0, 1.0]]))[0]
    shift = float(x[torch.argmax(y1)] - x[torch.argmax(y0)])
    assert shift == pytest.approx(0.2, abs=0.002)
    t = 2 * (x - x[0]) / (x[-1] - x[0]) - 1
    assert float(y1[0]) == pytest.approx(3.0 * float(y0[0]) + 5.0 + float(t[0]), rel=1e-6, abs=1e-3)


def test_gradcheck_xrd_float64():
    base = CrystalBatch.from_structures([reference.cdse_zincblende()], uiso=0.01)
    lat0 = base.lattice.clone() * (2 ** 0.5 / 2)  # a smaller, distorted cell keeps the case small
    lat0[0, 0, 1] += 0.05
    frac0 = base.frac[:2].clone() + torch.tensor([[0.01, 0.02, 0.0], [0.0, 0.01, 0.03]], dtype=torch.float64)
    x = torch.arange(20.0, 60.0, 1.0, dtype=torch.float64)

    def f(lat, frac, uiso, size):
        b = CrystalBatch(lat, frac, base.numbers[:2], base.batch[:2], base.occupancy[:2], uiso)
        return xrd_pattern(b, x, size_nm=size, W=0.02) / 1e4

    args = (
        lat0.requires_grad_(),
        frac0.requires_grad_(),
        torch.tensor([0.01, 0.02], dtype=torch.float64, requires_grad=True),
        torch.tensor([2.0], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-3)


def _batch_with(**changes):
    b = CrystalBatch.from_structures([reference.ni_fcc()])
    return b.replace(**changes)


@pytest.mark.parametrize("make, param", [
    (lambda: CrystalBatch.from_arrays([np.eye(3) * 4], [np.zeros((0, 3))], [[]]), "structure"),
    (lambda: CrystalBatch.from_arrays([np.zeros((3, 3))], [np.zeros((1, 3))], [[28]]), "lattice"),
    (lambda: CrystalBatch.from_arrays([np.eye(3) * 4], [np.zeros((1, 3))], [[150]]), "numbers"),
    (lambda: xrd_pattern(_batch_with(lattice=torch.zeros(1, 3, 3, dtype=torch.float64)), torch.arange(10.0, 20.0)),
     "lattice"),
    (lambda: xrd_pattern(_batch_with(numbers=torch.full((4,), 99)), torch.arange(10.0, 20.0)), "numbers"),
    (lambda: xrd_pattern(_batch_with(), torch.arange(10.0, 20.0), size_nm=0.0), "size_nm"),
    (lambda: xrd_pattern(_batch_with(), torch.arange(10.0, 20.0), size_nm=-2.0), "size_nm"),
    (lambda: xrd_pattern(_batch_with(), torch.zeros(0)), "x"),
    (lambda: xrd_pattern(_batch_with(), torch.arange(20.0, 10.0, -1.0)), "x"),
    (lambda: xrd_pattern(_batch_with(), torch.arange(10.0, 20.0), wavelength=-1.0), "wavelength"),
    (lambda: xrd_peaks(_batch_with(), CU, (90, 10)), "two_theta_range"),
])
def test_bad_input_names_parameter(make, param):
    with pytest.raises(ValueError, match=param):
        make()


@pytest.mark.parametrize("kernel", ["scherrer", "gauss", "sinc", "sinc2"])
def test_fft_profile_matches_window_profile(kernel):
    refl = Reflections.from_lists([[2.0, 3.001], [2.5]], [[1.0, 0.5], [2.0]], dtype=torch.float64)
    x = torch.arange(0.5, 6.0, 0.005, dtype=torch.float64)
    kw = dict(x_kind="q", size_nm=torch.tensor([2.0, 8.0], dtype=torch.float64), size_kernel=kernel)
    yf = xrd_profile(refl, x, method="fft", **kw)
    yw = xrd_profile(refl, x, method="window", peak_window=1000, **kw)
    assert float(((yf - yw).abs().max(1).values / yw.abs().max(1).values).max()) < 5e-3


def test_gradcheck_fft_profile():
    # positions off the dyadic work-grid nodes (the linear deposit has kinks there)
    q = torch.tensor([2.0123, 2.7031, 3.3057], dtype=torch.float64, requires_grad=True)
    inten = torch.tensor([1.0, 0.5, 0.8], dtype=torch.float64, requires_grad=True)
    size = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    x = torch.arange(20.0, 60.0, 0.5, dtype=torch.float64)

    def f(q, inten, size):
        refl = Reflections(q, inten, torch.zeros(3, dtype=torch.long), 1)
        return xrd_profile(refl, x, size_nm=size, method="fft")

    assert torch.autograd.gradcheck(f, (q, inten, size), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("size_A", [10.0, 100.0])
def test_sinc_kernel_reproduces_pxrdnet_filter(size_A):
    """PXRDnet (gabeguo/cdvae_xrd create_sinc_filter): sticks on a Q grid convolved with L·sinc(L ΔQ)."""
    q_grid = np.linspace(0.5, 7.5, 4096)
    dq = q_grid[1] - q_grid[0]
    sticks_q = np.array([2.0 + 0.3 * dq, 3.1 + 0.7 * dq, 4.4])
    sticks_i = np.array([1.0, 0.6, 0.3])
    # their pipeline: intensities at grid bins, np.convolve(mode="same") with the centred filter
    stick_grid = np.zeros_like(q_grid)
    idx = np.rint((sticks_q - q_grid[0]) / dq).astype(int)
    np.add.at(stick_grid, idx, sticks_i)
    # (their filter is centred at index n // 2; with an even n, np.convolve(mode="same") then
    # shifts the result by one bin -- centre at (n - 1) // 2 to compare the kernel itself)
    filt = size_A * np.sinc(size_A * (q_grid - q_grid[(len(q_grid) - 1) // 2]))
    theirs = np.convolve(stick_grid, filt, mode="same")
    refl = Reflections.from_lists([q_grid[idx]], [sticks_i], dtype=torch.float64)
    ours = xrd_profile(refl, torch.tensor(q_grid), x_kind="q", size_nm=size_A / 10, size_kernel="sinc",
                       lorentz_polarization=False)[0].numpy()
    theirs, ours = theirs / theirs.max(), ours / ours.max()
    # their filter is truncated to the span of the grid; ours is not (≈2 % at L = 10 Å)
    assert np.abs(theirs - ours).max() < 0.03


def test_gradcheck_instrument_parameters():
    b = CrystalBatch.from_structures([reference.ni_fcc()], uiso=0.005)
    x = torch.arange(40.0, 56.0, 0.25, dtype=torch.float64)

    def f(zero, scale, bg, U, W, eta, size):
        return xrd_pattern(b, x, zero_deg=zero, scale=scale, background=bg, U=U, W=W, eta=eta, size_nm=size) / 1e5

    args = tuple(
        torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for v in ([0.05], [1.3], [[0.5, 0.2, 0.1]], [0.02], [0.03], [0.4], [6.0])
    )
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("size_nm, U, V, W, eta", [(10.0, 0.0, 0.0, 0.01, 0.5), (10.0, 0.01, -0.005, 0.01, 0.3),
                                                    (50.0, 0.004, 0.0, 0.006, 0.7)])
def test_fft_profile_matches_voigt_convolution_of_pymatgen_sticks(size_nm, U, V, W, eta):
    """Size ⊗ Caglioti pseudo-Voigt on a 2θ grid vs pymatgen's sticks convolved with scipy's exact Voigt.

    Reference, per stick at Q_p (no truncation): (1-η) Voigt(σ_p, Γ_s/2) + η Lorentzian(FWHM h_p + Γ_s)
    in Q, with h_p the Caglioti FWHM converted to Q at the stick and Γ_s = 2πK/L, times dQ/d2θ.
    """
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from scipy.special import voigt_profile

    structures = _structures_for_pymatgen()[:3]
    x = np.arange(10.0, 90.0, 0.02)
    calc = XRDCalculator(wavelength=CU)
    for s in structures:
        ref = calc.get_pattern(s, scaled=False, two_theta_range=(0, 120))
        tt, inten = np.asarray(ref.x), np.asarray(ref.y)
        th = np.radians(tt / 2)
        q = 4 * np.pi * np.sin(th) / CU
        refl = Reflections.from_lists([q], [inten], dtype=torch.float64)
        ours = xrd_profile(refl, torch.tensor(x), wavelength=CU, size_nm=size_nm, U=U, V=V, W=W, eta=eta,
                           lorentz_polarization=False, method="fft")[0].numpy()
        tan = np.tan(th)
        h_q = np.sqrt(np.clip(U * tan**2 + V * tan + W, 0, None)) * (2 * np.pi / CU) * np.cos(th) * np.pi / 180
        g_s = 2 * np.pi * 0.9 / (10 * size_nm)  # Scherrer FWHM in Q
        qx = 4 * np.pi * np.sin(np.radians(x) / 2) / CU
        d = qx[:, None] - q[None, :]
        lor = ((h_q + g_s) / (2 * np.pi)) / (d**2 + ((h_q + g_s) / 2) ** 2)
        prof = (1 - eta) * voigt_profile(d, h_q / (2 * np.sqrt(2 * np.log(2))), g_s / 2) + eta * lor
        expected = (prof @ inten) * (2 * np.pi / CU) * np.cos(np.radians(x) / 2) * np.pi / 180
        assert np.abs(ours - expected).max() <= 1e-3 * expected.max(), s.formula


def test_jvp_of_a_symmetry_breaking_strain_matches_central_differences():
    """A strain that splits symmetry-equivalent reflections: each keeps its own derivative (the
    no-grad structure factors evaluate form factors once per group of equal Q only without tangents)."""
    from diffpy_diffusion.physics.xrd import xrd_pattern_jvp

    b = CrystalBatch.from_structures([reference.cdse_zincblende()], uiso=0.01, dtype=torch.float64)
    x = torch.arange(20.0, 100.0, 0.02, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    t_lat = 0.02 * torch.randn(2, 3, 3, dtype=torch.float64, generator=g)
    kw = dict(size_nm=20.0, W=0.01)
    _, dy = xrd_pattern_jvp(b, x, {"lattice": t_lat}, **kw)
    h = 1e-6
    for d in range(2):
        yp = xrd_pattern(b.replace(lattice=b.lattice + h * t_lat[d]), x, **kw)[0]
        ym = xrd_pattern(b.replace(lattice=b.lattice - h * t_lat[d]), x, **kw)[0]
        fd = (yp - ym) / (2 * h)
        assert float((dy[d] - fd).abs().max()) <= 1e-5 * float(fd.abs().max())
