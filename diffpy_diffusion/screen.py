"""Fast screening of raw proposals: batched pre-fit against the data, dedupe, rank, keep the top k.

Raw proposals (hundreds) are compared with the observation in two batched stages,
so that only a handful reach the (slow, exact) srfit refinement:

**Stage A — all candidates at once, no gradients.**  The expensive part of a
forward model (the structure factors / the pair list) is computed once per
candidate; then a grid over an isotropic lattice scale ``s`` (0.90–1.10, coarse
then fine), crystallite size (PXRD) or displacement width (PDF) is evaluated for
every candidate together:

* PXRD: merged Bragg peaks from :func:`physics.xrd.reflections`, moved to ``Q/s``,
  binned on a fine Q grid and convolved with the Scherrer (Lorentzian, FWHM_Q =
  2πK/L, Q-independent) kernel by FFT, times the Lorentz-polarisation factor; Kα2
  sticks at ``Q λ2/λ1``.
* PDF: a weighted pair-distance histogram ``R0(r)`` once per candidate; for a scale
  ``s``, ``G(r) = R0(r/s)/(s r) − 4π r ρ0/s³`` convolved with a Gaussian.

The scale of the pattern and the background (PXRD: Chebyshev, 4 terms; PDF: a
linear envelope ``a + b r`` standing in for qdamp/particle size) are solved in
closed form (linear least squares) for every grid point.

**Stage B — the best few, by gradient (PXRD).**  Adam on a symmetric lattice strain
(projected onto the candidate's point group, so cubic stays cubic), crystallite size
and zero shift through :func:`physics.xrd.xrd_profile` with the peak list fixed.

Candidates are then ranked by their screening Rwp (unit weights, on the data scale),
near-duplicates removed with pymatgen's ``StructureMatcher`` and the best ``k`` kept.
Candidates of several backends (``a+b``) are screened as each backend would be alone (stage B
takes each backend's leaders), then the backends' rankings are taken in turn, and each
backend's best ``backend_leaders`` survive the dedupe against the other backends.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .threads import map_in_threads
from .types import Observation, Proposal

#: Isotropic lattice scale grid of stage A: coarse, then fine around the best.
COARSE_SCALES = np.linspace(0.90, 1.10, 21)
FINE_STEP = 0.002
#: Relative scales tried around the first-peak match of a PDF screen (±5 %, 1 % steps).
FIRST_PEAK_REL_SCALES = np.linspace(0.95, 1.05, 11)
#: Chebyshev background terms of the PXRD screen.
N_BKG = 4
#: Uiso (Å²) used for every atom during screening.
SCREEN_UISO = 0.006
#: Overall intensity envelopes ``exp(−ΔU·Q²)`` (ΔU in Å², on top of :data:`SCREEN_UISO`) among which
#: the gradient stage's closed-form fit picks the best for each candidate, as a Rietveld fit refines
#: an overall displacement parameter.  A sample's real Uiso is unknown, and an intensity fall-off that
#: the fixed one does not describe is otherwise absorbed by the structure, which favours cells with
#: more free coordinates.  ``benchmarks/screen_envelope.py`` (12 validation structures, the true
#: structure screened at 1 nm): on pymatgen's patterns (no Debye–Waller factor; unit-area Gaussians
#: in 2θ, so the intensity per unit Q falls as cos θ) the median screening Rwp of the truth fell from
#: 0.018 to 0.011 (lower by > 5 % for 11 of 12, ΔU chosen +0.0025 to +0.0225 Å²); on our own
#: simulator's (Uiso 0.005) from 0.014 to 0.013 (ΔU −0.0075 to +0.010).  A step of 0.0025 Å² changes
#: the factor at Q = 6 Å⁻¹ by 9 %.
ENVELOPE_DU = np.linspace(-0.01, 0.03, 17)


@dataclass
class ScreenResult:
    """What screening made of the raw proposals.

    Attributes
    ----------
    kept : list[Proposal]
        The best ``k`` distinct candidates, best first (proposals of several backends: their
        rankings in turn, see ``fuse_backends``), structures strained/scaled to the fit,
        ``scores["screen_rwp"]`` set and ``provenance["screen"]`` holding the fitted
        ``scale``, ``size_nm``, ``zero_deg``, ``uiso`` and, for a PXRD candidate of the gradient
        stage, ``envelope_du`` (Å², :data:`ENVELOPE_DU`).
    ranked : list[Proposal]
        Every candidate that could be evaluated, best first (before dedupe).
    failed : int
        Candidates the forward model could not evaluate.
    duplicates : int
        Candidates dropped as duplicates of a better one.
    timings : dict
        Seconds per stage.
    """

    kept: list[Proposal]
    ranked: list[Proposal]
    failed: int = 0
    duplicates: int = 0
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

def _cheb_basis(x: np.ndarray, k: int) -> np.ndarray:
    t = 2 * (x - x[0]) / max(x[-1] - x[0], 1e-12) - 1
    T = [np.ones_like(t), t]
    while len(T) < k:
        T.append(2 * t * T[-1] - T[-2])
    return np.stack(T[:k], 0)


def _linear_fit(model: np.ndarray, y: np.ndarray, extra: np.ndarray, w: np.ndarray | None = None):
    """Least squares ``y ≈ c0·model + Σ c_k extra_k`` for a batch of models.

    model : (..., M); extra : (K, M) shared basis, or None; y : (M,).
    Returns (coefficients (..., 1+K), rwp (...)).

    The weighted residual is taken from the normal equations, ``yᵀWy − 2 cᵀb + cᵀAc`` (A and b
    without the ridge), instead of forming each model's prediction: the models are read three
    times (as matrix products) instead of seven, most of stage A's time.
    """
    sh = model.shape[:-1]
    m = model.reshape(-1, model.shape[-1])
    mw = m if w is None else m * w
    yw = y if w is None else w * y
    K = 0 if extra is None else extra.shape[0]
    # normal equations, assembled blockwise so the shared basis is not copied per model
    A = np.empty((m.shape[0], 1 + K, 1 + K))
    A[:, 0, 0] = np.einsum("ij,ij->i", m, mw)
    rhs = np.empty((m.shape[0], 1 + K))
    rhs[:, 0] = m @ yw
    if K:
        ew = extra if w is None else extra * w
        cross = mw @ extra.T  # (n, K)
        A[:, 0, 1:] = cross
        A[:, 1:, 0] = cross
        A[:, 1:, 1:] = ew @ extra.T
        rhs[:, 1:] = ew @ y
    yy = max(float(y @ yw), 1e-30)

    def exact_residual(rows, coef_rows):
        pred = coef_rows[:, :1] * m[rows] + (coef_rows[:, 1:] @ extra if K else 0.0)
        return (((y - pred) ** 2) * (1.0 if w is None else w)).sum(-1)

    coef, rwp = _solve_normal_equations(A, rhs, yy, exact_residual)
    return coef.reshape(*sh, 1 + K), rwp.reshape(sh)


def _solve_normal_equations(A: np.ndarray, rhs: np.ndarray, yy: float, exact_residual, exact_below: float = 1e-10):
    """Coefficients and Rwp of a batch of linear fits from their normal equations.

    A : (n, P, P) and rhs : (n, P), without a ridge; yy : the data's ``yᵀWy``.
    ``exact_residual(rows, coef)`` gives the weighted residual of the fits ``rows`` from their
    predictions: used for the near-exact fits, whose residual ``yᵀWy − 2cᵀb + cᵀAc`` is lost to
    cancellation, those below ``exact_below`` · yᵀWy (the relative precision of A and rhs: 1e-16
    in float64, ~1e-7 from float32 profiles).
    """
    P = A.shape[-1]
    scale = np.maximum(np.abs(np.diagonal(A, axis1=1, axis2=2)), 1e-30)
    ridge = 1e-10 * scale
    coef = np.linalg.solve(A + ridge[:, :, None] * np.eye(P)[None], rhs[..., None])[..., 0]
    res = yy - 2 * np.einsum("ij,ij->i", coef, rhs) + np.einsum("ij,ijk,ik->i", coef, A, coef)
    tiny = np.nonzero(res < exact_below * yy)[0]
    if len(tiny):
        res[tiny] = exact_residual(tiny, coef[tiny])
    return coef, np.sqrt(np.clip(res, 0.0, None) / yy)


def _downsample(x: np.ndarray, y: np.ndarray, max_points: int):
    if len(x) <= max_points:
        return x, y
    step = int(math.ceil(len(x) / max_points))
    n = len(x) // step * step
    return x[:n].reshape(-1, step).mean(1), y[:n].reshape(-1, step).mean(1)


def _point_group_ops(structure, symprec: float = 0.05) -> np.ndarray:
    """Rotation matrices (fractional basis of ``structure``) of its space group, (n, 3, 3)."""
    import spglib

    try:
        ds = spglib.get_symmetry_dataset(
            (structure.lattice.matrix, structure.frac_coords, [sp.Z for sp in structure.species]),
            symprec=symprec)
        rots = np.asarray(ds.rotations, dtype=float) if ds is not None else np.eye(3)[None]
    except Exception:  # noqa: BLE001 - spglib fails on odd cells: no constraint then
        rots = np.eye(3)[None]
    return np.unique(np.round(rots).astype(int), axis=0).astype(float)


def _scaled_structure(structure, s: float):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(structure.lattice.matrix * s), structure.species, structure.frac_coords,
                     site_properties=structure.site_properties or None)


# --------------------------------------------------------------------------- PXRD

class _XRDScreen:
    """Stage A and B of the PXRD screen for one observation."""

    def __init__(self, obs: Observation, max_points: int = 1000, known_phases=()):
        from .physics.xrd import size_fwhm_q

        self.obs = obs
        q = obs.q()
        order = np.argsort(q)
        q, y = q[order], obs.y[order]
        ok = np.isfinite(q) & np.isfinite(y)
        q, y = q[ok], y[ok]
        self.q, y = _downsample(q, y, max_points)
        self.ynorm = float(np.max(np.abs(y))) or 1.0
        self.y = y / self.ynorm
        self.lam = obs.wavelength
        self.lam2 = obs.wavelength2
        self.ka2 = float(obs.ka2_ratio) if obs.wavelength2 else 0.0
        # data counted per unit 2θ: a peak's area on the Q axis is its intensity times dQ/d(2θ) ∝ cos θ
        self.per_two_theta = obs.x_kind == "2theta"
        self.bkg = _cheb_basis(self.q, N_BKG)
        if obs.size_nm:
            self.sizes = np.array([0.6, 1.0, 1.6]) * float(obs.size_nm)
        else:
            self.sizes = np.array([1.5, 3.0, 6.0, 12.0, 30.0])
        # fine-grid step: a quarter of the narrowest Scherrer FWHM scanned, at most 0.004 Å⁻¹
        self.dq = float(min(0.004, float(size_fwhm_q(float(self.sizes.max()))) / 4))
        self.qmax_model = float(self.q[-1]) / COARSE_SCALES[0] + 0.05
        if self.lam:
            self.qmax_model = min(self.qmax_model, 4 * math.pi / self.lam * (1 - 1e-9))
        if self.lam2:
            self.qmax_model = min(self.qmax_model * self.lam2 / self.lam, 4 * math.pi / self.lam2 * (1 - 1e-9))
        pad = 3.0
        self.nq = int(2 ** math.ceil(math.log2((self.qmax_model + pad) / self.dq)))
        #: profiles of the known extra phases on ``self.q`` (rows), part of every linear fit's basis
        self.known = self._known_profiles(list(known_phases or []))
        if len(self.known):
            self.bkg = np.concatenate([self.bkg, self.known], 0)

    def _known_profiles(self, structures) -> np.ndarray:
        """Profiles (rows, max 1) of known extra phases (``--phase``), each at its own best lattice
        scale (±2 %) and size from a stage-A fit of that phase alone to the pattern.

        They join the background in every closed-form fit of the screen, so a candidate is judged
        on what the known phases leave of the pattern (an impurity's strong peaks otherwise decide
        the ranking of a mixture's main-phase candidates).
        """
        if not structures:
            return np.zeros((0, len(self.q)))
        peaks = self.peaks(structures)
        best = _refine_scales(lambda sc: self.stage_a(peaks, sc), len(peaks), coarse=np.linspace(0.98, 1.02, 9))
        rows = []
        for (qb, ib, _), b in zip(peaks, best, strict=True):
            if not np.isfinite(b[0]) or len(qb) == 0:
                continue
            row = self.profile(qb, ib, b[1], b[2], b[4])
            top = float(np.max(np.abs(row)))
            if top > 0:
                rows.append(row / top)
        return np.array(rows).reshape(-1, len(self.q))

    def profile(self, qb, ib, s: float, size_nm: float, kernel: str = "scherrer") -> np.ndarray:
        """The stage-A model (Kα1 [+ Kα2] sticks with LP, size kernel) of one peak list at lattice scale
        ``s`` and one size, on ``self.q``."""
        kern = self._kernels([size_nm])[SCREEN_KERNELS.index(kernel)]
        hist = self._stick_histogram(qb, ib, np.array([s]))[0]
        return self._on_q(np.fft.irfft(np.fft.rfft(hist) * kern, n=self.nq))

    def _stick_histogram(self, qb, ib, scales: np.ndarray) -> np.ndarray:
        """Kα1 [+ Kα2] sticks of one peak list with LP, at each lattice scale of ``scales`` (S,),
        binned on the FFT grid: (S, nq)."""
        return self._stick_histograms([(qb, ib)], np.asarray(scales)[None])[0]

    def _stick_histograms(self, peaks, scales: np.ndarray) -> np.ndarray:
        """:meth:`_stick_histogram` of several peak lists ``[(q, intensity), ...]`` (C), each at its own
        scales (C, S): (C, S, nq).  One Lorentz-polarisation call and one binning for all of them."""
        C, S = scales.shape
        counts = np.array([len(p[0]) for p in peaks])
        qb = np.concatenate([p[0] for p in peaks]) if C else np.zeros(0)
        ib = np.concatenate([p[1] for p in peaks]) if C else np.zeros(0)
        owner = np.repeat(np.arange(C), counts)
        pos = qb[None, :] / scales[owner].T  # (S, R): reflection r of list owner[r] at each of its scales
        row = (owner[None, :] * S + np.arange(S)[:, None]) * self.nq  # offset of its (list, scale) row
        sticks = [(pos, ib, 1.0)]
        if self.ka2:
            sticks.append((pos * (self.lam2 / self.lam), ib * self.ka2, self.lam2 / self.lam))
        flat, wts = [], []
        for pp, ii, ratio in sticks:
            # Lorentz-polarisation at each reflection's own angle (not on the grid: LP diverges at Q -> 0)
            w = ii[None, :] * self.lp_stick(pp / ratio, ratio)
            idx = np.rint(pp / self.dq).astype(int)
            ok = (idx >= 0) & (idx < self.nq) & np.isfinite(w)
            flat.append((row + idx)[ok])
            wts.append(w[ok])
        # bincount adds in the order given, as np.add.at did (Kα1 sticks, then Kα2)
        hist = np.bincount(np.concatenate(flat), weights=np.concatenate(wts), minlength=C * S * self.nq)
        return hist.reshape(C, S, self.nq)

    def _on_q(self, prof: np.ndarray) -> np.ndarray:
        """Profiles on the FFT grid (..., nq), linearly interpolated onto the data's ``self.q``."""
        grid_idx = self.q / self.dq
        i0 = np.floor(grid_idx).astype(int)
        frac = grid_idx - i0
        # np.take and in-place products: the same sums as fancy indexing, in two thirds of the time
        lo = np.take(prof, i0, axis=-1)
        lo *= 1 - frac
        hi = np.take(prof, np.minimum(i0 + 1, self.nq - 1), axis=-1)
        hi *= frac
        lo += hi
        return lo

    def fit_histograms(self, hist: np.ndarray, kern: np.ndarray):
        """Scale and background in closed form for stick histograms ``hist`` (..., S, nq) convolved
        with each size kernel ``kern`` (Z, nq//2+1, :meth:`_kernels`): ``(coef, rwp)`` of
        :func:`_linear_fit` of the profiles read out by :meth:`_on_q`, over (..., S, Z).

        The fits' normal equations are formed on the FFT grid (:meth:`_readout`) instead of
        interpolating every profile onto the data first: the same sums, without gathering ~900
        scattered values from each 4096-point profile (half of this method's time).
        """
        import torch

        # single precision for the FFTs, most of the screen's time: complex64 takes a third of the time
        # of numpy's complex128 (MKL through torch); its error, ~1e-7 of a profile's maximum, moves
        # Rwp by ~1e-7, far below the differences that rank candidates
        spec = torch.fft.rfft(torch.from_numpy(hist).to(torch.float32), dim=-1)
        k = torch.from_numpy(np.asarray(kern, dtype=np.float32))
        sh = (*spec.shape[:-1], k.shape[0])
        spec = spec.reshape(-1, spec.shape[-1])  # (N, F): every histogram
        g0, m0, m1, proj, gram, by, yy = self._readout()
        L, Z, K = len(m0), k.shape[0], gram.shape[0]

        def band(spectra):  # profiles of rfft spectra (..., F) on the grid nodes g0 .. g0 + L - 1
            return torch.fft.irfft(spectra, n=self.nq, dim=-1)[..., g0: g0 + L]

        n = spec.shape[0] * Z
        A = np.empty((n, 1 + K, 1 + K))
        pr = np.empty((n, 1 + K))
        # a few histograms at a time: each block's profiles stay in the CPU cache through the sums
        # below (all at once, or several candidates at once, was 1.5-3x slower: memory-bound)
        step = max(1, FIT_BLOCK_ROWS // Z)
        for h0 in range(0, spec.shape[0], step):
            p = band(spec[h0: h0 + step, None, :] * k).reshape(-1, L)
            blk = slice(h0 * Z, h0 * Z + p.shape[0])
            # |W p|² = Σ m0 p_g² + 2 Σ m1 p_g p_g+1 (W: the linear interpolation onto the data; WᵀW is
            # tridiagonal); products in float32 (exact to 6e-8 each), sums in float64
            A[blk, 0, 0] = ((p * p).double() @ m0 + 2 * ((p[:, :-1] * p[:, 1:]).double() @ m1)).numpy()
            pr[blk] = (p.double() @ proj).numpy()  # (W p)ᵀ y and (W p)ᵀ basis
        A[:, 0, 1:] = pr[:, 1:]
        A[:, 1:, 0] = pr[:, 1:]
        A[:, 1:, 1:] = gram
        rhs = np.empty((n, 1 + K))
        rhs[:, 0] = pr[:, 0]
        rhs[:, 1:] = by

        def exact_residual(rows, coef_rows):  # rows of the flattened (histogram, kernel) list
            full = np.zeros((len(rows), self.nq))
            r = torch.from_numpy(rows)
            full[:, g0: g0 + L] = band(spec[r // Z] * k[r % Z]).double().numpy()
            pred = coef_rows[:, :1] * self._on_q(full) + coef_rows[:, 1:] @ self.bkg
            return ((self.y - pred) ** 2).sum(-1)

        # A and rhs hold the float32 profiles' ~1e-7 relative error: fits with Rwp below ~3e-3 from the
        # prediction (the normal equations would give their Rwp to ~3e-4 only)
        coef, rwp = _solve_normal_equations(A, rhs, yy, exact_residual, exact_below=1e-5)
        return coef.reshape(*sh, 1 + K), rwp.reshape(sh)

    def _readout(self):
        """What :meth:`fit_histograms` needs of the interpolation W from the FFT grid onto ``self.q``:
        ``(g0, m0, m1, proj, gram, by, yy)``, the first grid node used, the diagonal and first
        off-diagonal of WᵀW from node g0 on, Wᵀ [y, basis rows] (L, 1+K), the basis' Gram matrix,
        basis · y and yᵀy.  Computed once per basis (the known phases' rows join it after their own fits)."""
        import torch

        cache = getattr(self, "_readout_cache", None)
        if cache is None or cache[0] is not self.bkg:
            grid_idx = self.q / self.dq
            i0 = np.floor(grid_idx).astype(int)
            f = grid_idx - i0
            i1 = np.minimum(i0 + 1, self.nq - 1)
            g0 = int(i0.min())
            L = int(i1.max()) + 1 - g0
            # W has 1 - f at (i, i0) and f at (i, i1) (the same node twice at the grid's end)
            m0 = np.zeros(L)
            np.add.at(m0, i0 - g0, (1 - f) ** 2)
            np.add.at(m0, i1 - g0, f**2)
            same = i1 == i0
            np.add.at(m0, i0[same] - g0, 2 * (1 - f[same]) * f[same])
            m1 = np.zeros(max(L - 1, 0))
            np.add.at(m1, i0[~same] - g0, (1 - f[~same]) * f[~same])
            rows = np.concatenate([self.y[None], self.bkg], 0).T  # (M, 1+K)
            proj = np.zeros((L, rows.shape[1]))
            np.add.at(proj, i0 - g0, (1 - f)[:, None] * rows)
            np.add.at(proj, i1 - g0, f[:, None] * rows)
            m0, m1, proj = (torch.from_numpy(v) for v in (m0, m1, proj))
            cache = (self.bkg, (g0, m0, m1, proj, self.bkg @ self.bkg.T, self.bkg @ self.y,
                                max(float(self.y @ self.y), 1e-30)))
            self._readout_cache = cache
        return cache[1]

    def basis_on(self, max_points: int) -> np.ndarray:
        """Background (and known-phase) basis rows on the ``_downsample(self.q, ., max_points)`` grid."""
        qg, _ = _downsample(self.q, self.y, max_points)
        rows = [_cheb_basis(qg, N_BKG)]
        if len(self.known):
            rows.append(np.stack([_downsample(self.q, r, max_points)[1] for r in self.known]))
        return np.concatenate(rows, 0)

    def lp_stick(self, q1, ratio: float = 1.0):
        """LP factor of reflections at Kα1-equivalent Q ``q1`` seen with wavelength ``λ1·ratio`` (0 if unreachable).

        Times cos θ for data per unit 2θ (``x_kind="2theta"``): the screen draws its peaks with unit
        area on the Q axis, and the data's peaks have area ∝ dQ/d(2θ) there, as the forward model's
        2θ patterns (:func:`~diffpy_diffusion.physics.xrd.xrd_pattern`).

        :func:`~diffpy_diffusion.physics.xrd.lorentz_polarization` written in sin θ alone
        (``cos 2θ = 1 − 2 sin²θ``, ``cos θ = √(1 − sin²θ)``): the same values without the arcsine
        and three trigonometric calls per reflection and lattice scale (a sixth of stage A's time).
        """
        if not self.lam:
            return np.ones_like(q1)
        lam = self.lam * ratio
        sin_t = q1 * lam / (4 * math.pi)
        out = np.zeros_like(q1)
        ok = (sin_t > 1e-3) & (sin_t < 1 - 1e-9)
        s2 = sin_t[ok] ** 2
        cos2t = 1 - 2 * s2
        num = 1 + cos2t * cos2t
        # (1 + cos²2θ)/(sin²θ cos θ), times cos θ per unit 2θ
        out[ok] = num / s2 if self.per_two_theta else num / (s2 * np.sqrt(1 - s2))
        return out

    def peaks(self, structures):
        """Merged peak lists (numpy) of every structure, Debye–Waller with SCREEN_UISO."""
        import torch

        from .physics.crystal import CrystalBatch
        from .physics.xrd import reflections

        batch = CrystalBatch.from_structures(structures, uiso=SCREEN_UISO, dtype=torch.float64)
        with torch.no_grad():
            refl = reflections(batch, self.qmax_model * 1.0, radiation=self.obs.radiation, merge=True)
        out = []
        q, inten, cr = refl.q.numpy(), refl.intensity.numpy(), refl.crystal.numpy()
        hkl = refl.hkl.numpy() if refl.hkl is not None else None
        for b in range(len(structures)):
            m = cr == b
            out.append((q[m], inten[m], None if hkl is None else hkl[m]))
        return out

    def _kernels(self, sizes):
        """rFFT of unit-area size kernels, shape (3 Z, nq//2+1): Scherrer Lorentzians, sinc², Gaussians.

        In the order of :data:`SCREEN_KERNELS`.  Lorentzian of the Scherrer FWHM
        (``physics.xrd.size_fwhm_q``): FT ``exp(-2π γ |k|)`` (γ the HWHM).  Laue function
        ``sinc²(L ΔQ/2)`` (PXRDnet's kernel): FT ``max(0, 1 − 2π|k|/L)`` (a triangle).  Gaussian of the
        Scherrer FWHM (pymatgen-style Scherrer broadening): FT ``exp(−2π² σ² k²)``.
        """
        from .physics.xrd import size_fwhm_q

        k = np.fft.rfftfreq(self.nq, d=self.dq)  # cycles per Å⁻¹
        L = 10.0 * np.asarray(sizes)  # Å
        fw = size_fwhm_q(np.asarray(sizes, dtype=float)).numpy()  # Scherrer FWHM, Å⁻¹
        lor = np.exp(-2 * math.pi * (fw / 2)[:, None] * k[None, :])
        tri = np.clip(1 - 2 * math.pi * k[None, :] / L[:, None], 0, None)
        sig = fw / (2 * math.sqrt(2 * math.log(2)))
        gau = np.exp(-2 * math.pi**2 * (sig[:, None] * k[None, :]) ** 2)
        return np.concatenate([lor, tri, gau], 0)

    def stage_a(self, peaks, scales_per_cand):
        """Rwp over (scale, size) grids; returns best (rwp, s, size, coef) per candidate.

        scales_per_cand : (B, S) scale grid per candidate.
        """
        B, S = scales_per_cand.shape
        kern = self._kernels(self.sizes)  # (Z, F)
        nz = len(self.sizes)
        self._readout()  # the shared read-out, built before the threads read it
        return map_in_threads(lambda rows: self._stage_a_rows(rows, peaks, scales_per_cand, kern, nz), B)

    def _stage_a_rows(self, rows, peaks, scales_per_cand, kern, nz):
        """:meth:`stage_a` of the candidates ``rows`` (one thread's share)."""
        best = []
        # one candidate per call: the fits are memory-bound, and 4 or 8 candidates at once (31-62 MB of
        # profiles) took 1.5 and 3.3 times as long (NaCu2P2 lab pattern, 200 templates, 2026-12-05)
        for b in rows:
            qb, ib, _ = peaks[b]
            if len(qb) == 0:
                best.append((np.inf, 1.0, self.sizes[0], None, "scherrer"))
                continue
            hist = self._stick_histogram(qb, ib, scales_per_cand[b])
            # intensity per unit cell volume² is irrelevant: the scale is fitted
            coef, rwp = self.fit_histograms(hist, kern)
            j = np.unravel_index(np.nanargmin(np.where(coef[..., 0] > 0, rwp, np.inf)), rwp.shape)
            if not np.isfinite(rwp[j]) or coef[j][0] <= 0:
                best.append((np.inf, 1.0, self.sizes[0], None, "scherrer"))
                continue
            best.append((float(rwp[j]), float(scales_per_cand[b][j[0]]), float(self.sizes[j[1] % nz]), coef[j],
                         SCREEN_KERNELS[j[1] // nz]))
        return best

    def lp_torch(self, q1, ratio: float = 1.0):
        """Lorentz-polarisation factor (torch, differentiable) of reflections at Kα1-equivalent Q ``q1``
        seen with wavelength ``λ1·ratio``, times cos θ for data per unit 2θ (:meth:`lp_stick`); ones
        without a wavelength."""
        import torch

        from .physics.xrd import lorentz_polarization

        if not self.lam:
            return torch.ones_like(q1)
        th = torch.asin((q1 * self.lam * ratio / (4 * math.pi)).clamp(1e-3, 1 - 1e-6))
        return lorentz_polarization(th) * (torch.cos(th) if self.per_two_theta else 1.0)

    def stage_b(self, structures, peaks, s0, size0, steps: int = 30, max_points: int = 500,
                max_peaks: int = 160, kernels=None):
        """Adam on symmetric strain, size and Q shift; returns (rwp, metrics, sizes, shifts, envelope ΔU).

        Each step's closed-form fit also picks the best overall envelope (:data:`ENVELOPE_DU`).

        The fixed peak list drawn with each candidate's size shape (stage A's choice) on a
        ≤ ``max_points`` grid, every peak within ± :data:`STAGE_C_WINDOW` FWHM of its position,
        for all candidates at once: cheap to differentiate.
        """
        import torch

        from .physics.xrd import size_fwhm_q

        B = len(structures)
        dt = torch.float32
        qg, yg = _downsample(self.q, self.y, max_points)
        lat0 = torch.tensor(np.stack([s.lattice.matrix * f for s, f in zip(structures, s0)]), dtype=torch.float64)
        ops = [torch.tensor(_point_group_ops(s), dtype=torch.float64) for s in structures]
        sets = []
        for b, (q, i, h) in enumerate(peaks):
            if h is None:
                return None
            keep = np.nonzero(q / s0[b] <= float(qg[-1]) + 0.5)[0]
            # the strongest peaks carry the fit; weak ones cost time
            keep = keep[np.argsort(-i[keep])[:max_peaks]]
            sets.append((i[keep], h[keep]))
        R = max(1, max(len(i) for i, _ in sets))
        inten = torch.zeros(B, R, dtype=dt)
        hkl = torch.zeros(B, R, 3, dtype=dt)
        for b, (i, h) in enumerate(sets):
            inten[b, : len(i)] = torch.tensor(i, dtype=dt)
            hkl[b, : len(i)] = torch.tensor(h, dtype=dt)
        inten = inten / inten.amax(1, keepdim=True).clamp_min(1e-30)
        # strongest peaks by LP-weighted intensity were chosen above; LP is applied per step
        x = torch.tensor(qg, dtype=dt)
        y = torch.tensor(yg, dtype=dt)
        bkg = torch.tensor(self.basis_on(max_points), dtype=dt)
        eps = torch.zeros(B, 3, 3, dtype=torch.float64, requires_grad=True)
        log_size = torch.tensor(np.log(size0), dtype=dt, requires_grad=True)
        shift = torch.zeros(B, dtype=dt, requires_grad=True)
        params = [(eps, 0.003), (log_size, 0.05), (shift, 0.002)]
        mom = [(torch.zeros_like(p), torch.zeros_like(p)) for p, _ in params]
        G0 = lat0 @ lat0.transpose(1, 2)
        ratio2 = (self.lam2 / self.lam) if self.ka2 else None
        kind = _kernel_codes(kernels, B)
        lp_t = self.lp_torch
        M = len(x)
        step = float(np.min(np.diff(qg))) if len(qg) > 1 else 1.0

        def model():
            G = _strained_metric(lat0, G0, eps, ops)
            Gs = torch.linalg.inv(G).to(dt)
            qv = 2 * math.pi * torch.sqrt(torch.einsum("bri,bij,brj->br", hkl, Gs, hkl).clamp_min(1e-12))
            qv = qv + shift[:, None]
            size_nm = torch.exp(log_size).clamp(0.5, 200.0)[:, None, None]
            L = 10.0 * size_nm  # Å
            gam = size_fwhm_q(size_nm) / 2  # Scherrer HWHM, Å⁻¹

            # each reflection is drawn on the K grid points nearest to it (± STAGE_C_WINDOW FWHM of the
            # broadest peak), B × R × K work instead of B × R × M: sharp (10 nm) patterns need a tenth
            K = min(M, 2 * math.ceil(STAGE_C_WINDOW * 2 * float(gam.detach().max()) / step) + 1)

            def add(qpos, w):
                if K >= M:
                    return (w[..., None] * _size_shape(x - qpos[..., None], gam, L, kind[:, None, None])).sum(1)
                start = (torch.searchsorted(x, qpos.detach().reshape(-1)).view(B, -1) - K // 2).clamp(0, M - K)
                idx = start[..., None] + torch.arange(K)  # (B, R, K)
                shape = _size_shape(x[idx] - qpos[..., None], gam, L, kind[:, None, None])
                flat = (torch.arange(B)[:, None, None] * M + idx).reshape(-1)
                return torch.zeros(B * M, dtype=dt).index_add(0, flat, (w[..., None] * shape).reshape(-1)).view(B, M)

            prof = add(qv, inten * lp_t(qv, 1.0))
            if ratio2:
                prof = prof + add(qv * ratio2, inten * lp_t(qv, ratio2) * self.ka2)
            return prof, G

        env = torch.exp(-torch.tensor(ENVELOPE_DU, dtype=dt)[:, None] * x[None, :] ** 2)  # (D, M)
        best = None
        for it in range(steps):
            prof, G = model()
            rwp, which = _enveloped_fit_rwp(prof, bkg, y, env)
            cur = (rwp.detach().clone(), G.detach().clone(), log_size.detach().clone(), shift.detach().clone(),
                   which.clone())
            if best is None:
                best = cur
            else:
                better = cur[0] < best[0]
                for t_best, t_cur in zip(best, cur):
                    t_best[better] = t_cur[better]
            if it == steps - 1:
                break
            loss = rwp.sum() + 10.0 * (eps**2).sum()
            _adam_step(params, mom, torch.autograd.grad(loss, [p for p, _ in params]), it)
            with torch.no_grad():
                eps.clamp_(-0.08, 0.08)
                shift.clamp_(-0.05, 0.05)
        # the stage-B Rwp is on a coarser grid: report it only as a relative improvement
        return (best[0].numpy(), best[1].numpy(), np.exp(best[2].numpy()), best[3].numpy(),
                ENVELOPE_DU[best[4].numpy()])


    def stage_c(self, structures, size0, shift0, steps: int = 30, max_points: int = 400, kernels=None):
        """Adam on every atom's coordinates, the metric, size and Q shift; returns (rwp, metrics, fracs, sizes, shifts).

        What stage B cannot do: a proposal whose atoms sit 0.1–0.3 Å off their true sites has the
        right peak positions but the wrong intensities, so its screening Rwp ranks it behind worse
        structures.  Here the structure factors are recomputed every step by
        :func:`physics.xrd.reflections` with autograd through the fractional coordinates (P1,
        unconstrained: a short local fit, not a refinement), the profile is the stage-B Scherrer
        Lorentzian with the Lorentz-polarisation factor (and Kα2), scale and background are solved
        linearly.  The metric moves within the candidate's point group as in stage B.
        """
        import torch

        from .physics.crystal import CrystalBatch
        from .physics.xrd import reflections, size_fwhm_q

        B = len(structures)
        dt = torch.float64
        qg, yg = _downsample(self.q, self.y, max_points)
        x = torch.tensor(qg, dtype=dt)
        y = torch.tensor(yg, dtype=dt)
        bkg = torch.tensor(self.basis_on(max_points), dtype=dt)
        base = CrystalBatch.from_structures(structures, uiso=SCREEN_UISO, dtype=dt)
        lat0 = base.lattice.detach()
        G0 = lat0 @ lat0.transpose(1, 2)
        ops = [torch.tensor(_point_group_ops(st), dtype=dt) for st in structures]
        eps = torch.zeros(B, 3, 3, dtype=dt, requires_grad=True)
        dfrac = torch.zeros_like(base.frac, requires_grad=True)
        log_size = torch.tensor(np.log(size0), dtype=dt, requires_grad=True)
        shift = torch.tensor(np.asarray(shift0, float), dtype=dt, requires_grad=True)
        # fractional step ≈ 0.01 Å per unit of lr in a 5 Å cell: atoms move a few tenths of an Å at most
        params = [(eps, 0.002), (dfrac, 0.004), (log_size, 0.05), (shift, 0.002)]
        mom = [(torch.zeros_like(p), torch.zeros_like(p)) for p, _ in params]
        q_hi = float(qg[-1]) + 0.3  # reflections just beyond the grid still have tails on it
        step = float(np.min(np.diff(qg))) if len(qg) > 1 else 1.0
        ratio2 = (self.lam2 / self.lam) if self.ka2 else None
        kind = _kernel_codes(kernels, B)
        lp_t = self.lp_torch

        def model():
            G = _strained_metric(lat0, G0, eps, ops)
            lat = torch.linalg.cholesky(G)  # rows: a lattice with metric G (Q and |F| need only G)
            refl = reflections(base.replace(lattice=lat, frac=base.frac + dfrac), q_hi, merge=False)
            qv = refl.q + shift[refl.crystal]
            inten = refl.intensity / refl.intensity.detach().amax().clamp_min(1e-30)
            size_nm = torch.exp(log_size).clamp(0.5, 200.0)[refl.crystal]
            gam = size_fwhm_q(size_nm) / 2  # Scherrer HWHM, Å⁻¹
            length = 10.0 * size_nm  # Å
            kind_r = kind[refl.crystal]

            # each reflection touches the K grid points nearest to it (± STAGE_C_WINDOW FWHM of the
            # broadest peak): R × K work instead of R × M
            M = len(x)
            K = min(M, 2 * math.ceil(STAGE_C_WINDOW * 2 * float(gam.detach().max()) / step) + 1)
            cols = torch.arange(K)

            def add(qpos, w):
                start = (torch.searchsorted(x, qpos.detach()) - K // 2).clamp(0, M - K)
                idx = start[:, None] + cols  # (R, K)
                shape = _size_shape(x[idx] - qpos[:, None], gam[:, None], length[:, None], kind_r[:, None])
                flat = (refl.crystal[:, None] * M + idx).reshape(-1)
                return torch.zeros(B * M, dtype=dt).index_add(0, flat, (w[:, None] * shape).reshape(-1)).view(B, M)

            prof = add(qv, inten * lp_t(qv, 1.0))
            if ratio2:
                prof = prof + add(qv * ratio2, inten * lp_t(qv, ratio2) * self.ka2)
            return prof, G

        best = None
        for it in range(steps):
            prof, G = model()
            rwp = _linear_fit_rwp(prof / prof.abs().amax(1, keepdim=True).clamp_min(1e-30), bkg, y)
            fr = (base.frac + dfrac).detach().clone()
            cur = (rwp.detach().clone(), G.detach().clone(), log_size.detach().clone(), shift.detach().clone())
            if best is None:
                best = [*cur, fr]
            else:
                better = cur[0] < best[0]
                for t_best, t_cur in zip(best[:4], cur):
                    t_best[better] = t_cur[better]
                best[4] = torch.where(better[base.batch][:, None], fr, best[4])
            if it == steps - 1:
                break
            loss = rwp.sum() + 10.0 * (eps**2).sum()
            _adam_step(params, mom, torch.autograd.grad(loss, [p for p, _ in params]), it)
            with torch.no_grad():
                eps.clamp_(-0.08, 0.08)
                shift.clamp_(-0.05, 0.05)
        counts = base.counts().tolist()
        fracs = list(torch.split(best[4], counts))
        return (best[0].numpy(), best[1].numpy(), [f.numpy() % 1.0 for f in fracs], np.exp(best[2].numpy()),
                best[3].numpy())


def _strained_metric(lat0, G0, eps, ops):
    """Metric G0 + δG of a symmetric strain ``eps`` (B, 3, 3), projected onto each candidate's point group.

    Invariant metrics satisfy Rᵀ G R = G, so the group average of Rᵀ δG R is the projection.
    """
    import torch

    e = 0.5 * (eps + eps.transpose(1, 2))
    dG = lat0 @ (2 * e) @ lat0.transpose(1, 2)
    return G0 + torch.stack([(Rop.transpose(1, 2) @ dG[b] @ Rop).mean(0) for b, Rop in enumerate(ops)])


#: Size-broadening shapes the screen tries (stage A picks one per candidate, stages B and C keep it):
#: the Scherrer Lorentzian, the sinc² Laue function and a Gaussian of the Scherrer FWHM, as the
#: refinement's ``size_kernel="auto"`` (:data:`diffpy_diffusion.refine.staged.SIZE_KERNELS`).
SCREEN_KERNELS = ("scherrer", "sinc2", "gauss")
#: Profiles per block of :meth:`_XRDScreen.fit_histograms` (64 × 4096 float32 = 1 MB, about a
#: core's L2 cache).
FIT_BLOCK_ROWS = 64
_SINC2, _GAUSS = SCREEN_KERNELS.index("sinc2"), SCREEN_KERNELS.index("gauss")


def _kernel_codes(kernels, n: int):
    """Index into :data:`SCREEN_KERNELS` of each candidate's kernel name (default Scherrer), as a tensor."""
    import torch

    return torch.tensor([SCREEN_KERNELS.index(k) for k in (kernels or ["scherrer"] * n)])


def _one_size_shape(dx, gam, length, code: int):
    """:func:`_size_shape` of a single kernel ``code`` (index into :data:`SCREEN_KERNELS`)."""
    import torch

    if code == _SINC2:
        u = 0.5 * length * dx
        safe_u = u.where(u.abs() >= 1e-6, torch.ones_like(u))
        sinc2 = torch.where(u.abs() < 1e-6, torch.ones_like(u), torch.sin(u) / safe_u) ** 2
        return sinc2 * (length / (2 * math.pi))  # unit area
    if code == _GAUSS:
        sig = gam / math.sqrt(2 * math.log(2))  # HWHM = σ √(2 ln 2)
        return torch.exp(-0.5 * (dx / sig) ** 2) / (sig * math.sqrt(2 * math.pi))
    return gam / math.pi / (dx**2 + gam**2)


def _size_shape(dx, gam, length, kind):
    """Unit-area size-broadening kernel at offsets ``dx`` (Å⁻¹) of shape ``kind`` (index into
    :data:`SCREEN_KERNELS`): the Scherrer Lorentzian of HWHM ``gam``, the Laue function
    sinc²(L ΔQ/2) of crystallite length ``length`` (Å), or the Gaussian of HWHM ``gam``.

    ``gam``, ``length`` and ``kind`` broadcast against ``dx``; ``kind`` may vary along the first
    axis only (one shape per candidate or per reflection).  Each shape is evaluated only on the rows
    that use it: evaluating all three everywhere and picking with ``where`` cost three times the
    work in stage B, most of the screen's time.
    """
    import torch

    codes = kind.reshape(kind.shape[0], -1)[:, 0]
    present = torch.unique(codes).tolist()
    if len(present) == 1:
        return _one_size_shape(dx, gam, length, int(present[0]))
    n = dx.shape[0]

    def rows(t, idx):
        return t.index_select(0, idx) if t.dim() == dx.dim() and t.shape[0] == n else t

    parts, order = [], []
    for c in present:
        idx = torch.nonzero(codes == c)[:, 0]
        parts.append(_one_size_shape(rows(dx, idx), rows(gam, idx), rows(length, idx), int(c)))
        order.append(idx)
    inverse = torch.empty(n, dtype=torch.long)
    inverse[torch.cat(order)] = torch.arange(n)
    return torch.cat(parts, 0).index_select(0, inverse)


def _enveloped_fit_rwp(prof, bkg, y, env):
    """:func:`_linear_fit_rwp` of each row of ``prof`` (B, M) times each envelope of ``env`` (D, M), the
    best per row: (rwp (B,), index of its envelope (B,)).  Differentiable through the chosen one."""
    B, M = prof.shape
    rwp = _linear_fit_rwp((prof[:, None, :] * env[None]).reshape(B * env.shape[0], M), bkg, y)
    best, which = rwp.view(B, -1).min(1)
    return best, which


def _linear_fit_rwp(prof, bkg, y):
    """Rwp (unit weights) of ``y ≈ c0 prof + Σ c_k bkg_k`` per row of ``prof`` (B, M), solved in closed form."""
    import torch

    basis = torch.cat([prof[:, None, :], bkg[None].expand(prof.shape[0], -1, -1)], 1)  # (B, 1+K, M)
    A = basis @ basis.transpose(1, 2)
    ridge = 1e-6 * torch.diagonal(A, dim1=1, dim2=2).clamp_min(1e-12)
    A = A + torch.diag_embed(ridge)
    c = torch.linalg.solve(A, (basis @ y)[..., None])[..., 0]
    pred = (c[:, :, None] * basis).sum(1)
    return torch.sqrt(((pred - y) ** 2).sum(-1) / (y * y).sum())


def _adam_step(params, mom, grads, it: int, b1: float = 0.9, b2: float = 0.999) -> None:
    """One plain Adam update in place (torch.optim imports torch._dynamo: seconds); ``params`` are (tensor, lr)."""
    import torch

    with torch.no_grad():
        for (p, lr), (m1, m2), g in zip(params, mom, grads):
            m1.mul_(b1).add_(g, alpha=1 - b1)
            m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            mh = m1 / (1 - b1 ** (it + 1))
            vh = m2 / (1 - b2 ** (it + 1))
            p.sub_(lr * mh / (vh.sqrt() + 1e-12))


def _leaders(rwp, props, fuse_backends: bool, limit: int | None) -> list[int]:
    """Indices of the best ``limit`` (None: all) finite-Rwp candidates, of each backend when
    ``fuse_backends`` (as if each backend were screened alone), best first."""
    per_backend: dict[str, list[int]] = {}
    for i in np.argsort(rwp, kind="stable"):
        if np.isfinite(rwp[i]):
            lst = per_backend.setdefault(props[i].backend if fuse_backends else "", [])
            if limit is None or len(lst) < limit:
                lst.append(int(i))
    return sorted((i for lst in per_backend.values() for i in lst), key=lambda i: rwp[i])


#: Candidates per batched stage-C call (memory: reflections × grid points per batch).
STAGE_C_CHUNK = 32
#: Stage C draws each peak within ± this many FWHM (of the broadest peak of the batch): a Lorentzian
#: keeps ≈ 1 − 1/(π·8) = 96 % of its area there, the same for every candidate.
STAGE_C_WINDOW = 8


def _stage_c(scr, props, new_structs, info, rwp, steps, top, fuse_backends) -> None:
    """Run stage C on the leaders (in place: ``rwp``, ``new_structs``, ``info`` where it fits better)."""
    from pymatgen.core import Structure

    lead = _leaders(rwp, props, fuse_backends, top)
    for c in range(0, len(lead), STAGE_C_CHUNK):
        chunk = lead[c: c + STAGE_C_CHUNK]
        structs = [new_structs[i] for i in chunk]
        try:
            r, Gs, fracs, sizes, shifts = scr.stage_c(
                structs, np.array([info[i].get("size_nm") or 10.0 for i in chunk], float),
                np.array([info[i].get("zero_q", 0.0) for i in chunk], float), steps=steps,
                kernels=[info[i].get("size_kernel", "scherrer") for i in chunk])
        except Exception as exc:  # noqa: BLE001 - stage C is an optional improvement
            warnings.warn(f"screen: coordinate stage skipped ({exc})", stacklevel=3)
            return
        for j, i in enumerate(chunk):
            if np.isfinite(r[j]) and r[j] < rwp[i]:
                rwp[i] = r[j]
                st = _with_metric(structs[j], Gs[j])
                new_structs[i] = Structure(st.lattice, st.species, fracs[j],
                                           site_properties=st.site_properties or None)
                info[i].update(size_nm=float(sizes[j]), zero_q=float(shifts[j]), stage="coordinates")


def _lattice_from_metric(G: np.ndarray):
    from pymatgen.core import Lattice

    a, b, c = np.sqrt(np.diag(G))
    al = math.degrees(math.acos(np.clip(G[1, 2] / (b * c), -1, 1)))
    be = math.degrees(math.acos(np.clip(G[0, 2] / (a * c), -1, 1)))
    ga = math.degrees(math.acos(np.clip(G[0, 1] / (a * b), -1, 1)))
    return Lattice.from_parameters(a, b, c, al, be, ga)


def _with_metric(structure, G):
    """Same fractional coordinates, lattice with metric G, orientation of the original cell."""
    from pymatgen.core import Lattice, Structure

    lat = _lattice_from_metric(G)
    # keep the original orientation: polar decomposition of the deformation
    F = np.linalg.solve(structure.lattice.matrix, lat.matrix)  # rows: L_new = L_old @ F
    u, _, vt = np.linalg.svd(F)
    rot = u @ vt
    return Structure(Lattice(lat.matrix @ rot.T), structure.species, structure.frac_coords,
                     site_properties=structure.site_properties or None)


# --------------------------------------------------------------------------- PDF

class _PDFScreen:
    """Stage A of the PDF screen: pair histograms once, isotropic scale × width grid."""

    def __init__(self, obs: Observation, rmax: float = 15.0, max_points: int = 1200):
        r, y = obs.x, obs.y
        ok = np.isfinite(r) & np.isfinite(y) & (r >= 1.0) & (r <= rmax)
        if ok.sum() < 20:
            ok = np.isfinite(r) & np.isfinite(y) & (r > 0)
        self.r, y = _downsample(r[ok], y[ok], max_points)
        self.ynorm = float(np.max(np.abs(y))) or 1.0
        self.y = y / self.ynorm
        self.radiation = obs.radiation
        self.dr = 0.005
        self.rcap = float(self.r[-1]) / COARSE_SCALES[0] + 1.0
        self.nr = int(self.rcap / self.dr) + 1
        self.rg = np.arange(self.nr) * self.dr
        self.uisos = np.array([0.002, 0.005, 0.010])
        self.env = np.stack([self.r * 0 + 1.0, self.r])  # linear envelope a + b r, times G

    def histograms(self, structures):
        """Per structure: (R0 histogram on rg, without 1/r; number density ρ0)."""
        import torch

        from .physics.scattering import forward_weight

        out = []
        for s in structures:
            z = torch.tensor([sp.Z for sp in s.species])
            w = forward_weight(z, self.radiation, dtype=torch.float64).numpy()
            wavg = w.mean()
            n = len(s)
            ci, pi, _, d = s.get_neighbor_list(self.rcap)
            h = np.zeros(self.nr)
            idx = np.rint(d / self.dr).astype(int)
            ok = idx < self.nr
            np.add.at(h, idx[ok], (w[ci] * w[pi])[ok] / wavg**2 / n)
            out.append((h, n / s.volume))
        return out

    def first_peak_scales(self, hists, rel: np.ndarray = FIRST_PEAK_REL_SCALES) -> np.ndarray | None:
        """Scales that put each candidate's shortest distance on the first peak of the observed G(r).

        The atomic-volume prior misjudges open structures (diamond Si needs its cell 17 %
        larger than the prior's), beyond the ±10 % coarse scan; the nearest-neighbour peak
        fixes the scale directly.  Returns (B, len(rel)), or None without a clear first peak.
        """
        near = (self.r >= 1.0) & (self.r <= 5.0)
        r, y = self.r[near], self.y[near]
        if len(y) < 5 or not np.any(y > 0):
            return None
        thr = 0.4 * float(np.max(y))
        peaks = [i for i in range(1, len(y) - 1) if y[i] > thr and y[i] >= y[i - 1] and y[i] >= y[i + 1]]
        if not peaks:
            return None
        r1 = float(r[peaks[0]])
        out = np.ones((len(hists), len(rel)))
        for b, (h, _) in enumerate(hists):
            nz = np.flatnonzero(h[int(0.5 / self.dr):]) + int(0.5 / self.dr)
            if len(nz):
                out[b] = np.clip(r1 / (nz[0] * self.dr) * rel, 0.5, 2.0)
        # G(r; s) reads the histogram at r/s: below r_last/rcap it would run past what was histogrammed
        return np.maximum(out, float(self.r[-1]) / (self.rcap - self.dr))

    def stage_a(self, hists, scales_per_cand):
        B, S = scales_per_cand.shape
        r = self.r
        best = []
        k = np.fft.rfftfreq(self.nr * 2, d=self.dr)
        for b in range(B):
            h, rho = hists[b]
            if not h.any():
                best.append((np.inf, 1.0, self.uisos[0], None))
                continue
            spec = np.fft.rfft(h, n=2 * self.nr)
            sig = np.sqrt(2 * self.uisos)  # pair width for equal Uiso, Å
            gk = np.exp(-2 * (math.pi * k[None, :] * sig[:, None]) ** 2)
            R0 = np.fft.irfft(spec[None] * gk, n=2 * self.nr)[:, : self.nr] / self.dr  # (U, nr) density per Å
            sc = scales_per_cand[b]
            # G(r; s) = R0(r/s)/(s r) - 4π r ρ0 / s³
            rr = r[None, :] / sc[:, None]  # (S, M)
            Rint = np.stack([np.interp(rr, self.rg, R0[u]) for u in range(len(self.uisos))], 1)  # (S, U, M)
            G = Rint / (sc[:, None, None] * r) - 4 * math.pi * r * rho / sc[:, None, None] ** 3
            model = np.stack([G, G * r], -2)  # (S, U, 2, M)
            coef, rwp = _fit_envelope(model, self.y)
            j = np.unravel_index(np.nanargmin(np.where(coef[..., 0] > 0, rwp, np.inf)), rwp.shape)
            if not np.isfinite(rwp[j]):
                best.append((np.inf, 1.0, self.uisos[0], None))
                continue
            best.append((float(rwp[j]), float(sc[j[0]]), float(self.uisos[j[1]]), coef[j]))
        return best


def _fit_envelope(model: np.ndarray, y: np.ndarray):
    """y ≈ a·G + b·r·G for a batch of models (..., 2, M); returns coef (..., 2), rwp (...)."""
    A = np.einsum("...im,...jm->...ij", model, model) + 1e-12 * np.eye(2)
    rhs = np.einsum("...im,m->...i", model, y)
    coef = np.linalg.solve(A, rhs[..., None])[..., 0]
    pred = np.einsum("...i,...im->...m", coef, model)
    rwp = np.sqrt(((pred - y) ** 2).sum(-1) / max(float((y * y).sum()), 1e-30))
    return coef, rwp


# --------------------------------------------------------------------------- public API

def _refine_scales(evaluate, n: int, coarse=COARSE_SCALES, extra: np.ndarray | None = None):
    """Coarse scale scan for all candidates, then a fine scan around each best scale.

    ``extra`` (n, k) adds per-candidate scales to the coarse scan (e.g. from the first PDF peak).
    """
    grid = np.tile(coarse, (n, 1))
    if extra is not None:
        grid = np.concatenate([grid, np.asarray(extra, float).reshape(n, -1)], 1)
    best = evaluate(grid)
    centers = np.array([b[1] for b in best])
    fine = centers[:, None] + FINE_STEP * np.arange(-5, 6)[None, :]
    best2 = evaluate(fine)
    return [b2 if b2[0] <= b1[0] else b1 for b1, b2 in zip(best, best2)]


def fuse_by_backend(ranked: list[Proposal]) -> list[Proposal]:
    """Interleave the backends' rankings: the best of each, then the second of each, and so on.

    Screening Rwp is not comparable across backends: a template is an idealised, symmetric
    structure that fits a pattern's peak positions well even when it is the wrong one, while a
    sampled structure that is right can still carry coordinate noise.  Taking turns (the
    backend whose best candidate screens best goes first) keeps each backend's leaders in a
    short list, as reciprocal-rank fusion does with one list per backend.  ``ranked`` is
    ordered best first; with one backend it is returned unchanged.
    """
    by: dict[str, list[Proposal]] = {}
    for p in ranked:
        by.setdefault(p.backend, []).append(p)
    if len(by) < 2:
        return list(ranked)
    lists = list(by.values())  # insertion order = order of each backend's best candidate in `ranked`
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]


def structure_key(structure) -> bytes:
    """A hashable fingerprint of a structure as stored (cell, coordinates, species): equal keys, equal structures.

    Used to remember :func:`dedupe`'s ``StructureMatcher`` verdicts between calls on the same
    structures (``match_cache``); 1e-8 Å / 1e-10 (fractional) roundings only absorb float noise.
    """
    lat = np.round(np.asarray(structure.lattice.matrix, float), 8)
    frac = np.round(np.asarray(structure.frac_coords, float), 10)
    z = np.array([sp.Z for sp in structure.species], np.int16)
    return lat.tobytes() + frac.tobytes() + z.tobytes()


def dedupe(proposals, k: int | None = None, *, ltol: float = 0.2, stol: float = 0.3, angle_tol: float = 5.0,
           max_compare: int = 50, own_backend_only: set[int] | None = None, match_cache: dict | None = None):
    """Drop proposals that pymatgen's ``StructureMatcher`` finds equal to a better one (list order = rank).

    ``own_backend_only`` holds ``id()`` s of proposals that are compared only with better ones
    of their own backend (see :func:`screen`'s ``backend_leaders``).
    ``match_cache`` (optional, owned by the caller): the matcher's verdict per pair of
    :func:`structure_key` s with these tolerances, so a caller that dedupes a growing list again
    (``propose`` after each refined candidate) compares each pair once.  Same result either way.
    Returns (kept, number dropped).  Stops after ``k`` kept when ``k`` is given.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol, primitive_cell=True, scale=True,
                          attempt_supercell=False)
    own = own_backend_only or set()
    kept, dropped = [], 0
    for p in proposals:
        dup = False
        for q in kept[:max_compare]:
            if p.structure.composition.reduced_formula != q.structure.composition.reduced_formula:
                continue
            if id(p) in own and q.backend != p.backend:
                continue
            key = None
            if match_cache is not None:
                key = (structure_key(p.structure), structure_key(q.structure), ltol, stol, angle_tol)
                if key in match_cache:
                    if match_cache[key]:
                        dup = True
                        break
                    continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    same = bool(sm.fit(p.structure, q.structure))
            except Exception:  # noqa: BLE001 - matcher failures: treat as distinct
                same = False
            if key is not None:
                match_cache[key] = same
            if same:
                dup = True
                break
        if dup:
            dropped += 1
            continue
        kept.append(p)
        if k is not None and len(kept) >= k:
            break
    return kept, dropped


def _unique_axis(lattice, tol: float = 1e-3) -> int | None:
    """Index of the unique axis of a tetragonal/hexagonal-like cell (two equal lengths, the third
    different and at 90° to both), else None."""
    abc = np.array(lattice.abc)
    ang = np.array(lattice.angles)  # alpha (b,c), beta (a,c), gamma (a,b)
    for k in range(3):
        o = [j for j in range(3) if j != k]
        if abs(abc[o[0]] - abc[o[1]]) > tol * abc[o[0]] or abs(abc[k] - abc[o[0]]) <= tol * abc[o[0]]:
            continue
        if all(abs(ang[j] - 90.0) < 0.01 for j in o):  # the angles that involve axis k
            return k
    return None


def _single_torch_thread(fn):
    """Run ``fn`` with torch on one thread (restored afterwards).

    The screen's tensors are small: extra intra-op threads only add synchronisation, and once the
    thread count has been changed, torch's idle OpenMP workers keep spinning and take the cores
    from the NumPy FFTs of stage A (measured: a second screen of 64 candidates on a loaded
    2-core machine took 48 s instead of 15 s).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        n = torch.get_num_threads()
        if n == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)

    return wrapper


#: Isotropic lattice scales of :func:`prescreen`: ±8 % in 1 % steps.  Retrieved templates are
#: rescaled to the target's atomic volumes (``backends.templates.substitute``), which leaves their
#: cells within a few per cent; a 1 % step is below the relative Scherrer width of 10 nm peaks
#: (FWHM_Q / Q ≈ 2 % at Q = 3 Å⁻¹), so a cell between two grid points still overlaps its peaks.
PRESCREEN_SCALES = np.linspace(0.92, 1.08, 17)
#: Crystallite sizes (nm) :func:`prescreen` tries when the observation gives none.
PRESCREEN_SIZES_NM = (2.0, 6.0, 20.0)


@_single_torch_thread
def prescreen(observation: Observation, structures, *, chunk: int = 32) -> np.ndarray:
    """Rough screening Rwp of many structures against a PXRD pattern, for choosing which to screen.

    Stage A reduced to what ranks a large set cheaply: the structure's merged peaks, isotropic
    lattice scales :data:`PRESCREEN_SCALES`, the Scherrer (Lorentzian) kernel at the
    observation's crystallite size (or :data:`PRESCREEN_SIZES_NM`), Chebyshev background and scale
    in closed form on at most 400 points; no axial ratios, no gradient stage, no dedupe.  About
    1–3 ms per structure on one core.

    Parameters
    ----------
    observation : Observation
        A PXRD pattern (``kind == "xrd"``).
    structures : sequence of pymatgen Structure
    chunk : int
        Structures whose profiles are computed together (memory ∝ chunk).

    Returns
    -------
    numpy.ndarray
        The best Rwp over the grid per structure (``inf`` for one without peaks in range).
    """
    if observation.kind != "xrd":
        raise ValueError("prescreen: a PXRD observation is needed")
    structures = list(structures)
    if not structures:
        return np.zeros(0)
    scr = _XRDScreen(observation, max_points=400)
    sizes = [float(observation.size_nm)] if observation.size_nm else list(PRESCREEN_SIZES_NM)
    kern = scr._kernels(sizes)[: len(sizes)]  # the Scherrer Lorentzians (first block of SCREEN_KERNELS)
    scales = PRESCREEN_SCALES
    scr._readout()  # the shared read-out, built before the threads read it

    def chunk_rwp(chunks):
        res = []
        for c in chunks:
            part = structures[c * chunk: (c + 1) * chunk]
            peaks = scr.peaks(part)
            hist = scr._stick_histograms([(qb, ib) for qb, ib, _ in peaks], np.tile(scales, (len(peaks), 1)))
            coef, rwp = scr.fit_histograms(hist, kern)  # (C, S, Z)
            ok = (coef[..., 0] > 0) & np.isfinite(rwp)
            rwp = np.where(ok, rwp, np.inf).reshape(len(part), -1)
            empty = np.array([len(qb) == 0 for qb, _, _ in peaks])
            res.append(np.where(empty, np.inf, rwp.min(axis=1)))
        return res

    n_chunks = -(-len(structures) // chunk)
    return np.concatenate(map_in_threads(chunk_rwp, n_chunks, min_per_thread=2))


@_single_torch_thread
def screen(observation: Observation, proposals: list[Proposal], k: int = 5, *, gradient_steps: int = 40,
           gradient_top: int | None = None, do_dedupe: bool = True,
           axial_ratios: tuple[float, ...] = (0.85, 0.92, 1.08, 1.15), fuse_backends: bool = True,
           backend_leaders: int = 1, coordinate_steps: int = 0, coordinate_top: int | None = None,
           known_phases=()) -> ScreenResult:
    """Pre-fit all proposals against ``observation``, rank by screening Rwp, dedupe, keep the best ``k``.

    Parameters
    ----------
    observation : Observation
        PXRD (2θ needs a wavelength) or PDF.
    proposals : list of Proposal
        Raw proposals (any backend).
    k : int
        How many distinct candidates to keep.
    gradient_steps : int
        Adam steps of stage B (PXRD); 0 skips stage B.
    gradient_top : int, optional
        How many stage-A leaders enter stage B (default ``max(3 k, 12)``); of each backend when
        ``fuse_backends`` merges several.
    do_dedupe : bool
        Remove StructureMatcher duplicates.
    axial_ratios : tuple of float
        Extra scales of the unique axis tried for tetragonal/hexagonal cells in stage A (PXRD).
    fuse_backends : bool
        When the proposals come from several backends (``a+b``), fill ``kept`` from each
        backend's own ranking in turn (:func:`fuse_by_backend`) instead of by one screening Rwp.
    backend_leaders : int
        With ``fuse_backends``: each backend's best this many distinct candidates stay in
        ``kept`` even when ``StructureMatcher`` finds them equal to another backend's, so a
        merged short list holds what each backend alone would have put first.  Two backends'
        near-identical screened structures can refine apart (an H ordering, a small
        distortion the pattern shows only once refined); refined duplicates are removed after
        refinement (:func:`diffpy_diffusion.pipeline.rank_refined`).
    coordinate_steps : int
        Adam steps of stage C (PXRD): every atom's coordinates, the metric, size and zero fitted
        through differentiable structure factors (:meth:`_XRDScreen.stage_c`); 0 (default) skips it.
    coordinate_top : int, optional
        How many candidates (of each backend when ``fuse_backends``), best first after stage B,
        enter stage C; default all.
    known_phases : sequence of pymatgen Structure
        Known extra phases of a PXRD pattern (``propose --phase``): their profiles, fitted once,
        join the background in every linear fit, so candidates are screened against what the
        known phases leave of the pattern.  Ignored for a PDF.

    Returns
    -------
    ScreenResult
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    props = [p for p in proposals if p is not None and p.structure is not None and len(p.structure) > 0]
    if not props:
        return ScreenResult([], [], failed=len(proposals), timings={"total": 0.0})
    structs = [p.structure for p in props]
    failed = len(proposals) - len(props)
    if observation.kind == "xrd":
        scr = _XRDScreen(observation, known_phases=known_phases)
        peaks = scr.peaks(structs)
        timings["peaks"] = time.perf_counter() - t0
        # uniaxial cells (tetragonal/hexagonal): also try other axial ratios (c/a of a template
        # of another chemistry can be far off; one isotropic scale cannot fix it)
        vpeaks, owner, ratio = list(peaks), list(range(len(structs))), [1.0] * len(structs)
        for i, st in enumerate(structs):
            ax = _unique_axis(st.lattice)
            if ax is None or peaks[i][2] is None or not axial_ratios:
                continue
            gstar = np.linalg.inv(st.lattice.matrix @ st.lattice.matrix.T)
            h = peaks[i][2].astype(float)
            for t in axial_ratios:
                d = np.ones(3)
                d[ax] = 1.0 / t
                qt = 2 * math.pi * np.sqrt(np.einsum("ri,ij,rj->r", h, gstar * d[:, None] * d[None, :], h))
                vpeaks.append((qt, peaks[i][1], peaks[i][2]))
                owner.append(i)
                ratio.append(float(t))
        vbest = _refine_scales(lambda sc: scr.stage_a(vpeaks, sc), len(vpeaks))
        best = [None] * len(structs)
        chosen = [1.0] * len(structs)
        for v, b in enumerate(vbest):
            i = owner[v]
            if best[i] is None or b[0] < best[i][0]:
                best[i] = b
                chosen[i] = ratio[v]
                peaks[i] = vpeaks[v]
        from pymatgen.core import Lattice, Structure

        for i, t in enumerate(chosen):
            if t != 1.0:
                ax = _unique_axis(structs[i].lattice)
                m = structs[i].lattice.matrix.copy()
                m[ax] *= t
                structs[i] = Structure(Lattice(m), structs[i].species, structs[i].frac_coords)
    else:
        scr = _PDFScreen(observation)
        hists = scr.histograms(structs)
        timings["pairs"] = time.perf_counter() - t0
        best = _refine_scales(lambda sc: scr.stage_a(hists, sc), len(structs), extra=scr.first_peak_scales(hists))
    timings["stage_a"] = time.perf_counter() - t0
    rwp = np.array([b[0] for b in best])
    new_structs: dict[int, object] = {}
    info: dict[int, dict] = {}
    for i, b in enumerate(best):
        if np.isfinite(b[0]):
            new_structs[i] = _scaled_structure(structs[i], b[1])
            if observation.kind == "xrd":
                info[i] = {"lattice_scale": b[1], "size_nm": b[2], "size_kernel": b[4],
                           "axial_ratio": chosen[i]}
            else:
                info[i] = {"lattice_scale": b[1], "uiso": b[2]}
    # stage B: gradient strain/size/zero for the leaders (PXRD)
    if observation.kind == "xrd" and gradient_steps > 0:
        # merged backends: each backend's own leaders, as if screened alone (stage B is per candidate)
        lead = _leaders(rwp, props, fuse_backends, gradient_top or max(3 * k, 12))
        if lead:
            try:  # on one torch thread, as the whole screen (_single_torch_thread)
                res = scr.stage_b([structs[i] for i in lead], [peaks[i] for i in lead],
                                  np.array([best[i][1] for i in lead]), np.array([best[i][2] for i in lead]),
                                  steps=gradient_steps, kernels=[best[i][4] for i in lead])
            except Exception as exc:  # noqa: BLE001 - stage B is an optional improvement
                warnings.warn(f"screen: gradient stage skipped ({exc})", stacklevel=2)
                res = None
            if res is not None:
                r2, Gs, sizes, zeros, dus = res
                for j, i in enumerate(lead):
                    if np.isfinite(r2[j]) and r2[j] < rwp[i]:
                        rwp[i] = r2[j]
                        new_structs[i] = _with_metric(structs[i], Gs[j])
                        info[i].update(size_nm=float(sizes[j]), zero_q=float(zeros[j]), stage="gradient",
                                       envelope_du=float(dus[j]))
        timings["stage_b"] = time.perf_counter() - t0
    if observation.kind == "xrd" and coordinate_steps > 0:
        _stage_c(scr, props, new_structs, info, rwp, coordinate_steps, coordinate_top, fuse_backends)
        timings["stage_c"] = time.perf_counter() - t0
    order = np.argsort(rwp, kind="stable")
    ranked = []
    for i in order:
        if not np.isfinite(rwp[i]):
            failed += 1
            continue
        p = props[i]
        q = Proposal(structure=new_structs[i], backend=p.backend, seed=p.seed,
                     scores={**p.scores, "screen_rwp": float(rwp[i])}, refined=dict(p.refined),
                     provenance={**p.provenance, "screen": {k2: (float(v) if isinstance(v, (float, np.floating)) else v)
                                                            for k2, v in info[i].items()}})
        ranked.append(q)
    order = fuse_by_backend(ranked) if fuse_backends else ranked
    if do_dedupe:
        own: set[int] = set()
        backends = list(dict.fromkeys(p.backend for p in ranked))
        if fuse_backends and len(backends) > 1 and backend_leaders > 0:
            for b in backends:
                leaders, _ = dedupe([p for p in ranked if p.backend == b], backend_leaders)
                own.update(id(p) for p in leaders)
        kept, dropped = dedupe(order, k, own_backend_only=own)
    else:
        kept, dropped = order[:k], 0
    timings["total"] = time.perf_counter() - t0
    return ScreenResult(kept, ranked, failed=failed, duplicates=dropped, timings=timings)
