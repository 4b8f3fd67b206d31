"""Powder X-ray (and neutron) diffraction patterns of crystals, batched and differentiable.

Two layers:

1. :func:`reflections` enumerates the reciprocal lattice of every crystal of a
   :class:`~diffpy_diffusion.physics.crystal.CrystalBatch` up to ``q_max`` and
   returns the Bragg peaks as flat tensors (Q in Å⁻¹, |F|² summed over the
   reflections that share a Q, crystal index).  No Lorentz-polarisation and no
   profile: precompute it once per structure.
2. :func:`xrd_profile` puts such a peak list onto a 2θ (degrees) or Q (Å⁻¹)
   grid: Lorentz-polarisation (optional monochromator), Kα1/Kα2, zero shift,
   pseudo-Voigt with Caglioti U, V, W, finite-size broadening (Scherrer or the
   sinc² kernel), scale and a Chebyshev background.  Cheap enough to call with
   random broadening in a training loop.

:func:`xrd_pattern` chains the two; :func:`xrd_peaks` returns stick patterns
in the conventions of pymatgen's ``XRDCalculator`` for comparisons.

Conventions
-----------
Q = 4π sinθ/λ.  Intensity of a reflection: ``|F|²`` with
``F = Σ_j occ_j f_j(Q) exp(−Uiso_j Q²/2) exp(2πi h·x_j)`` (Friedel mates
included, i.e. every point of the reciprocal lattice counted once, so the
multiplicity is implicit as in pymatgen).  Lorentz-polarisation is pymatgen's
``(1 + cos²2θ)/(sin²θ cosθ)``; with a monochromator at 2θ_m it becomes
``2 (1 + cos²2θ_m cos²2θ)/((1 + cos²2θ_m) sin²θ cosθ)``.

Peak widths (FWHM, in degrees 2θ): instrument ``H_i² = U tan²θ + V tanθ + W``;
size (Scherrer) ``H_s = K λ/(L cosθ)`` (radians), L the crystallite size.  The
instrument profile is a pseudo-Voigt of FWHM ``H_i`` and Lorentzian fraction
``eta``; the Scherrer size profile is a Lorentzian of FWHM ``H_s``.  Their
convolution is evaluated as ``(1−η)·V(H_i, H_s) + η·L(H_i + H_s)`` where the
Gauss–Lorentz Voigt ``V`` is the Thompson–Cox–Hastings pseudo-Voigt.  On a Q
grid all widths are converted with dQ = (2π/λ) cosθ d(2θ); the Scherrer width
is then Q-independent, FWHM_Q = 2πK/L.

``size_kernel="sinc"`` is the size kernel of PXRDnet's data pipeline (Guo et
al., Nature Materials 2025; ``create_sinc_filter`` in gabeguo/cdvae_xrd): a
unit-area ``L·sinc(L ΔQ)`` with numpy's normalised sinc, i.e.
``sin(π L ΔQ)/(π ΔQ)`` on a Q grid (FWHM_Q = 1.2067/L; their "sinc10" and
"sinc100" are L = 10 and 100 Å).  PXRDnet then divides by the maximum and
clips to [0, 1]; doing that on the output reproduces their patterns to ~2 %
(their filter is truncated to the span of the Q grid, ours is not).
``size_kernel="sinc2"`` is the Laue interference function of a slab of
thickness L, ``sinc²(L ΔQ/2)`` (FWHM_Q = 4·1.39156/L) -- see
:func:`size_fwhm_q`.  ``size_kernel="gauss"`` is a Gaussian of the Scherrer
FWHM (2πK/L), the size profile of codes that broaden every peak by a Scherrer
Gaussian (pymatgen-based pipelines, many nanocrystal simulations).  Which
kernel describes a sample is a question for the data: the refinement picks
the one that fits best (:func:`diffpy_diffusion.refine.refine_structure`,
``size_kernel="auto"``).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwad

from .crystal import CrystalBatch
from .scattering import MAX_Z, neutron_length, xray_form_factor

_TWO_PI = 2.0 * math.pi
_FOUR_PI = 4.0 * math.pi
_DEG = 180.0 / math.pi
# Half-width at half maximum of sinc²(x) = sin²x/x²: x = 1.391557...
_SINC2_HWHM = 1.3915573782515103
# sin(u)/u = 1/2 at u = 1.895494...
_SINC_HALF = 1.8954942670339809
_SIZE_KERNELS = ("scherrer", "gauss", "sinc", "sinc2")
#: Sub-peaks per reflection of the simple axial-divergence model (``axial_deg`` of :func:`xrd_profile`).
AXIAL_NODES = 6
# Quantile midpoints u_j of the kernel density u^(-1/2) - 1 on (0, 1] (CDF 2√u - u):
# √u = 1 - √(1 - p) at p = (j + 1/2)/n, scaled so that their mean is the kernel's first moment 1/6
# (the peak centroid then moves exactly as under the continuous kernel; unscaled: 0.159 for n = 6).
_AXIAL_U0 = [(1.0 - math.sqrt(1.0 - (j + 0.5) / AXIAL_NODES)) ** 2 for j in range(AXIAL_NODES)]
_AXIAL_U = tuple(u * (AXIAL_NODES / 6.0) / sum(_AXIAL_U0) for u in _AXIAL_U0)
#: A reflection whose axial kernel spans at most this fraction of its FWHM (|εm| ≤ 0.025 H) is one
#: sub-peak at the kernel's mean εm/6: the kernel's variance 7εm²/180 then changes the profile by
#: at most 0.156 (εm/H)² < 1e-4 of its height (Lorentzian; 0.108 (εm/H)² Gaussian: second-order
#: expansion, checked against the exact convolution in the tests), the size of the error of the
#: six sub-peaks themselves at 0.06 H.  Synchrotron peaks with a small refined asymmetry then cost
#: one sub-peak instead of six.
AXIAL_ONE_NODE = 0.025


# ---------------------------------------------------------------------------
# input checks


def _check_grid(x: torch.Tensor, name: str) -> None:
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"{name}: need a non-empty 1-D grid, got shape {tuple(x.shape)}")
    if x.numel() > 1 and not bool((x[1:] > x[:-1]).all()):
        raise ValueError(f"{name}: grid must be strictly increasing")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: grid has non-finite values")


def _check_batch(batch: CrystalBatch) -> None:
    if not isinstance(batch, CrystalBatch):
        raise ValueError(f"batch: expected a CrystalBatch, got {type(batch).__name__}")
    if batch.num_crystals == 0 or batch.frac.shape[0] == 0:
        raise ValueError("batch: empty structure (no crystals or no atoms)")
    vol = torch.linalg.det(batch.lattice.detach())
    if not bool(torch.isfinite(vol).all()) or bool((vol.abs() < 1e-6).any()):
        raise ValueError("lattice: zero, negative-length or non-finite lattice vectors")
    lengths = batch.lattice.detach().norm(dim=-1)
    if bool((lengths <= 0).any()):
        raise ValueError("lattice: lattice vector of zero length")
    counts = batch.counts()
    if bool((counts == 0).any()):
        b = int(torch.nonzero(counts == 0)[0])
        raise ValueError(f"batch: crystal {b} is an empty structure (no atoms)")


def _as_param(value, batch_size: int, dtype, device, name: str) -> torch.Tensor:
    """Scalar or (B,) tensor -> (B,) tensor (keeps autograd)."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        return t.expand(batch_size)
    t = t.reshape(-1)
    if t.numel() == 1:
        return t.expand(batch_size)
    if t.numel() != batch_size:
        raise ValueError(f"{name}: need a scalar or one value per crystal ({batch_size}), got {t.numel()}")
    return t


def _tracked(v) -> bool:
    """True when ``v`` is a tensor whose derivative is wanted: autograd, or a forward-mode tangent."""
    return isinstance(v, torch.Tensor) and (v.requires_grad or fwad.unpack_dual(v).tangent is not None)


def _is_zero(v) -> bool:
    if isinstance(v, torch.Tensor):
        return (not _tracked(v)) and bool((v == 0).all())
    return float(v) == 0.0


def _is_one(v) -> bool:
    if isinstance(v, torch.Tensor):
        return (not _tracked(v)) and bool((v == 1).all())
    return bool(np.all(np.asarray(v, dtype=float) == 1.0))


# ---------------------------------------------------------------------------
# reflections


@dataclass
class Reflections:
    """Bragg peaks of B crystals as flat tensors.

    Attributes
    ----------
    q : torch.Tensor, shape (R,)
        Peak positions, Q in Å⁻¹.
    intensity : torch.Tensor, shape (R,)
        |F|² summed over all reciprocal-lattice points at this Q (multiplicity
        and Friedel mates included), electrons² (X-ray) or fm² (neutron).
        No Lorentz-polarisation, no profile.  Debye–Waller from ``uiso`` is
        included when :func:`reflections` was called with ``debye_waller=True``.
    crystal : torch.LongTensor, shape (R,)
        Index of the crystal of each peak.
    num_crystals : int
    hkl : torch.LongTensor, shape (R, 3), optional
        One Miller index per peak (a representative when merged).
    multiplicity : torch.LongTensor, shape (R,), optional
        Number of reciprocal-lattice points merged into the peak.
    """

    q: torch.Tensor
    intensity: torch.Tensor
    crystal: torch.Tensor
    num_crystals: int
    hkl: torch.Tensor | None = None
    multiplicity: torch.Tensor | None = None

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per crystal ``(q, intensity)`` pairs (e.g. to cache peak lists)."""
        out = []
        for b in range(self.num_crystals):
            m = self.crystal == b
            out.append((self.q[m], self.intensity[m]))
        return out

    @classmethod
    def from_lists(
        cls,
        qs: Sequence,
        intensities: Sequence,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Reflections:
        """Build from per-crystal arrays of Q (Å⁻¹) and intensity (cached peak lists)."""
        q = [torch.as_tensor(np.asarray(a), dtype=dtype, device=device).reshape(-1) for a in qs]
        i = [torch.as_tensor(np.asarray(a), dtype=dtype, device=device).reshape(-1) for a in intensities]
        crystal = torch.cat(
            [torch.full((len(a),), b, dtype=torch.long, device=device) for b, a in enumerate(q)]
        )
        return cls(torch.cat(q), torch.cat(i), crystal, len(q))

    def to(self, device=None, dtype=None) -> Reflections:
        f = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        i = lambda t: None if t is None else t.to(device=device)  # noqa: E731
        return Reflections(f(self.q), f(self.intensity), i(self.crystal), self.num_crystals, i(self.hkl),
                           i(self.multiplicity))


def _enumerate_hkl(lattice: torch.Tensor, q_max: torch.Tensor, q_min: torch.Tensor, columns: bool = False,
                   order: torch.Tensor | None = None):
    """All reciprocal-lattice points of one Friedel half-space with q_min <= Q <= q_max.

    Enumerates (h, k) columns and solves the quadratic |G|² <= g_max² for the
    l range of each, so only points inside the sphere are generated.
    Returns (hkl (R,3) long, crystal (R,) long), computed without autograd; with ``columns``
    also (column of each point (R,), and h, k, crystal and a bound on |l| of each column): the
    points of a column are contiguous, with consecutive l.  The points are grouped by crystal,
    the crystals in the order ``order`` (a permutation; default: batch order); a crystal's
    points come in the same order whatever ``order`` is.
    """
    device = lattice.device
    with torch.no_grad():
        lat = lattice.detach().to(torch.float64)
        if order is not None:
            lat, q_max, q_min = lat.index_select(0, order), q_max.index_select(0, order), q_min.index_select(0, order)
        recip = torch.linalg.inv(lat).transpose(-1, -2)
        gm = recip @ recip.transpose(-1, -2)  # (B,3,3) reciprocal metric, 1/Å²
        B = lat.shape[0]
        coef = torch.stack(
            [gm[:, 0, 0], gm[:, 1, 1], gm[:, 2, 2], 2 * gm[:, 0, 1], 2 * gm[:, 0, 2], 2 * gm[:, 1, 2]], -1
        )
        g_max = q_max.to(torch.float64) / _TWO_PI
        g_min = q_min.to(torch.float64) / _TWO_PI
        amax = torch.floor(g_max[:, None] * lat.norm(dim=-1) + 1e-9).long()  # |h_i| <= g_max |a_i|
        H, K = amax[:, 0], amax[:, 1]
        nhk = (H + 1) * (2 * K + 1)
        cb = torch.repeat_interleave(torch.arange(B, device=device), nhk)
        off = torch.cumsum(nhk, 0) - nhk
        loc = torch.arange(int(nhk.sum()), device=device) - off.index_select(0, cb)
        Kc = K.index_select(0, cb)
        kk = 2 * Kc + 1
        h = torch.div(loc, kk, rounding_mode="floor")
        k = loc - h * kk - Kc
        cc = coef.index_select(0, cb)
        hf, kf = h.to(torch.float64), k.to(torch.float64)
        a = cc[:, 2]
        bq = 0.5 * (hf * cc[:, 4] + kf * cc[:, 5])
        c_hk = hf * hf * cc[:, 0] + kf * kf * cc[:, 1] + hf * kf * cc[:, 3]
        c = c_hk - g_max.index_select(0, cb) ** 2
        disc = bq * bq - a * c
        sq = torch.sqrt(disc.clamp_min(0))
        lmin = torch.ceil((-bq - sq) / a - 1e-9).long()
        lmax = torch.floor((-bq + sq) / a + 1e-9).long()
        # Friedel half-space: h > 0, or h == 0 and k > 0, or h == k == 0 and l > 0
        lmin = torch.where((h == 0) & (k == 0), lmin.clamp_min(1), lmin)
        ok = (disc >= 0) & ((h > 0) | (k >= 0)) & (lmax >= lmin)
        idx = torch.nonzero(ok).squeeze(-1)
        h, k, cb, lmin, lmax, a, bq, c_hk = (t.index_select(0, idx) for t in (h, k, cb, lmin, lmax, a, bq, c_hk))
        l_bound = torch.maximum(lmin.abs(), lmax.abs())
        nl = lmax - lmin + 1
        n_pts = int(nl.sum())
        rep = torch.repeat_interleave(torch.arange(len(nl), device=device), nl, output_size=n_pts)
        off = torch.cumsum(nl, 0) - nl
        l = torch.arange(n_pts, device=device) - (off - lmin).index_select(0, rep)
        # |G|² = c_hk + l (2 bq + a l): the column's terms once per column
        lf = l.to(torch.float64)
        g2 = c_hk.index_select(0, rep) + lf * ((2 * bq).index_select(0, rep) + a.index_select(0, rep) * lf)
        g2_hi, g2_lo = (g_max**2 * (1 + 1e-12)).index_select(0, cb), (g_min**2).index_select(0, cb)
        keep = (g2 <= g2_hi.index_select(0, rep)) & (g2 >= g2_lo.index_select(0, rep))
        if not bool(keep.all()):
            idx = torch.nonzero(keep).squeeze(-1)
            rep, l = rep.index_select(0, idx), l.index_select(0, idx)
        if order is not None:
            cb = order.index_select(0, cb)  # batch index of every column's crystal
        hkl = torch.stack([h.index_select(0, rep), k.index_select(0, rep), l], -1)
        crystal = cb.index_select(0, rep)
    if columns:
        return hkl, crystal, (rep, h, k, cb, l_bound)
    return hkl, crystal


def _padded_atoms(batch: CrystalBatch):
    """Atom slot of every atom inside its crystal, and the max atom count."""
    counts = batch.counts()
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch.frac.shape[0], device=batch.device) - first[batch.batch]
    return slot, int(counts.max())


# Reflections are bucketed by the atom count of their crystal; each bucket is padded to its own largest
# cell (the atom counts of MP-20 and similar sets spread over 1-20+ atoms: padding every crystal to the
# batch's largest cell doubled the (reflection, atom) pairs).
_ATOM_BUCKETS = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
# (reflection, atom) pairs per chunk of the no-grad structure factors: the chunk's work arrays (a few
# hundred kB each) stay in the core's cache.  On the bench's 256 MP-20 structures (AMD EPYC, 1 MiB L2 per
# core) 2^16-2^17 pairs were the fastest in interleaved runs; 2^14 and 2^19 or more were 1.2-1.4× slower.
_CHUNK_PAIRS = 1 << 17


def _bucket_order(batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The crystals ordered by atom-count bucket (stable), and the bucket of every crystal."""
    bucket = torch.bucketize(batch.counts(), torch.tensor(_ATOM_BUCKETS, device=batch.device))
    return torch.argsort(bucket, stable=True), bucket


def _ranges(first: torch.Tensor, count: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenation of ``arange(first[i], first[i] + count[i])`` over i."""
    start = torch.cumsum(count, 0) - count
    return torch.arange(total, device=count.device) + torch.repeat_interleave(first - start, count, output_size=total)


def _species_slots(batch: CrystalBatch):
    """Per-crystal species table: ``(spec_crystal, spec_numbers, spec_slot, atom_slot, S)``, the crystal,
    atomic number and slot within its crystal of every (crystal, element) pair, each atom's species
    slot, and the most species of a crystal (scattering factors are computed once per species)."""
    key = batch.batch * 256 + batch.numbers
    uniq, atom_species = torch.unique(key, return_inverse=True)
    spec_crystal = uniq // 256
    spec_numbers = uniq % 256
    spec_counts = torch.bincount(spec_crystal, minlength=batch.num_crystals)
    spec_first = torch.cumsum(spec_counts, 0) - spec_counts
    spec_slot = torch.arange(len(uniq), device=batch.device) - spec_first[spec_crystal]
    return spec_crystal, spec_numbers, spec_slot, spec_slot[atom_species], int(spec_counts.max())


def _intensity_fast(batch: CrystalBatch, q: torch.Tensor, hkl: torch.Tensor, crystal: torch.Tensor, columns,
                    table: str, debye_waller: bool, chunk_elements: int, corder: torch.Tensor,
                    bucket: torch.Tensor) -> torch.Tensor:
    """|F|² (Friedel mates included) of X-ray reflections without autograd; same result as
    :func:`_intensity_padded`, computed for speed.

    ``hkl``, ``crystal`` and ``columns`` as :func:`_enumerate_hkl` returns them with
    ``order=corder``, ``corder`` and ``bucket`` from :func:`_bucket_order` (points grouped by
    crystal in bucket order, and by (h, k) column with consecutive l).  The phase factor of
    atom j is the product of its column factor exp(2πi(h x_j + k y_j)) (once per column) and
    exp(2πi l z_j) (a table of the l values of each crystal): one complex product per
    (reflection, atom) instead of a sine and a cosine; F is the complex sum of these products
    times the atoms' scattering factors.  The crystals are ordered by atom-count bucket, each
    bucket padded to its own largest cell, so that each bucket's reflections and columns are
    contiguous slices (the enumeration produces them in that order: no permutation of the
    reflections).  Form factors come from :func:`_form_factor_table` (linear interpolation in
    s², relative error < 1e-5), cut to the batch's elements and stored s²-major, so that the
    few species of a reflection are read from one or two cache lines instead of one table row
    each.  Padding atoms have a zero form factor; unit occupancies are not multiplied.
    """
    B, dtype, device = batch.num_crystals, q.dtype, q.device
    col, col_h, col_k, col_crystal, col_l = columns
    spec_crystal, spec_numbers, spec_slot, atom_slot, S = _species_slots(batch)
    slot, nmax = _padded_atoms(batch)
    # form factors: (T, E + 1) table of the batch's E elements, column E zero (padding)
    elements = torch.unique(spec_numbers)
    E = int(elements.numel())
    s2_top = float((q.max() / _FOUR_PI) ** 2)
    n_t = int(math.ceil(s2_top / _FTAB_DS2)) + 3  # i0 + 1 with a margin for rounding
    ftab = _form_factor_table(elements, s2_top, table, dtype, device)
    tab = torch.zeros(n_t, E + 1, dtype=dtype, device=device)
    tab[:, :E] = ftab[elements, :n_t].t()
    tab = tab.reshape(-1)
    tab_next = tab[E + 1:]  # the next s² row: the same index reads the upper interpolation node
    col_pad = torch.full((B, S + 1), E, dtype=torch.long, device=device)  # table column of each species slot
    col_pad[spec_crystal, spec_slot] = torch.searchsorted(elements, spec_numbers)
    sslot_pad = torch.full((B, nmax), S, dtype=torch.long, device=device)  # species slot of each atom; S: padding
    sslot_pad[batch.batch, slot] = atom_slot
    # fractional coordinates in radians per Miller index, one (B, nmax) array per axis
    xyz_pad = batch.frac.new_zeros(3, B, nmax)
    xyz_pad[:, batch.batch, slot] = (_TWO_PI * batch.frac).t()
    occ_pad = None
    if not bool((batch.occupancy == 1).all()):
        occ_pad = batch.occupancy.new_zeros(B, nmax).index_put((batch.batch, slot), batch.occupancy)
    u_pad = None
    if debye_waller and bool((batch.uiso != 0).any()):
        u_pad = batch.uiso.new_zeros(B, nmax).index_put((batch.batch, slot), batch.uiso)

    # crystals, reflections and columns in bucket order
    counts = batch.counts()
    cpos = torch.empty_like(corder).index_copy_(0, corder, torch.arange(B, device=device))  # crystal -> position
    r_count = torch.bincount(crystal, minlength=B)
    k_count = torch.bincount(col_crystal, minlength=B)
    rpos = cpos.index_select(0, crystal)  # crystal position of each reflection
    rcol, q_all, l_all = col, q, hkl[:, 2]
    kh = torch.stack([col_h, col_k]).to(dtype)  # (2, n_col)
    kpos_cr = cpos.index_select(0, col_crystal)
    nb = len(_ATOM_BUCKETS) + 1
    b_sorted = bucket.index_select(0, corder)
    z = torch.zeros(nb, dtype=torch.long, device=device)
    b_cry = torch.bincount(b_sorted, minlength=nb).tolist()
    b_rows = z.index_add(0, b_sorted, r_count.index_select(0, corder)).tolist()
    b_cols = z.index_add(0, b_sorted, k_count.index_select(0, corder)).tolist()
    b_atoms = z.scatter_reduce(0, b_sorted, counts.index_select(0, corder), reduce="amax").tolist()
    # most species of a crystal in each bucket: the (reflection, species) work has that many columns
    s_count = torch.bincount(spec_crystal, minlength=B)
    b_spec = z.scatter_reduce(0, b_sorted, s_count.index_select(0, corder), reduce="amax").tolist()
    # l tables of all crystals in bucket order, each its own l = -L .. L (L: a bound on the crystal's |l|):
    # rows zoff .. zoff + 2 L of a crystal; the table row of each reflection
    l_max = torch.zeros(B, dtype=torch.long, device=device).scatter_reduce(0, col_crystal, col_l, reduce="amax")
    l_max = l_max.index_select(0, corder)
    n_l = 2 * l_max + 1
    zend = torch.cumsum(n_l, 0)
    zmid = zend - n_l + l_max  # row of l = 0
    n_z = int(zend[-1])
    zpos = torch.repeat_interleave(torch.arange(B, device=device), n_l, output_size=n_z)  # crystal position of a row
    lrow = (torch.arange(n_z, device=device) - zmid.index_select(0, zpos)).to(dtype)
    zrow = zmid.index_select(0, rpos) + l_all
    zcut = torch.cat([zend.new_zeros(1), zend]).index_select(
        0, torch.tensor([0] + b_cry, device=device).cumsum(0)).tolist()  # first row of each bucket
    # form-factor table row and weight of every reflection
    t = q_all * q_all * (1.0 / (_FOUR_PI * _FOUR_PI * _FTAB_DS2))
    i0 = t.long()
    wt_all, row_all = (t - i0.to(dtype))[:, None], (i0 * (E + 1))[:, None]
    parts = []  # (r,) per chunk: F = Σ w e^{iα} e^{iβ} over the atoms
    c0 = k0 = s0 = 0
    for bi, (n_cry, n_rows, n_cols, n_b, s_b) in enumerate(zip(b_cry, b_rows, b_cols, b_atoms, b_spec)):
        if n_rows == 0:
            c0, k0 = c0 + n_cry, k0 + n_cols
            continue
        xyz = xyz_pad.index_select(1, corder[c0:c0 + n_cry])[:, :, :n_b]  # (3, crystals, n_b)
        # species slots s_b .. S are padding (table column E, zero): padding atoms read slot s_b
        sslot_b = sslot_pad.index_select(0, corder[c0:c0 + n_cry])[:, :n_b].clamp_max(s_b)
        occ_b, u_b = (None if v is None else v.index_select(0, corder[c0:c0 + n_cry])[:, :n_b].contiguous()
                      for v in (occ_pad, u_pad))
        col_b = col_pad.index_select(0, corder[c0:c0 + n_cry])[:, :s_b + 1]
        # column factors exp(i(h x + k y)) and the l table exp(i l z), l = -L .. L, of every crystal
        kc = kpos_cr[k0:k0 + n_cols] - c0
        ang = xyz[0].index_select(0, kc) * kh[0, k0:k0 + n_cols, None]
        ang.addcmul_(xyz[1].index_select(0, kc), kh[1, k0:k0 + n_cols, None])
        # complex factors: per (reflection, atom) one complex product of the gathered rows and the weight, and a
        # complex sum over the atoms (real (cos, sin) rows with the weights multiplied in and a 2 × 2 product
        # per reflection were 5-8 % slower on the whole reflection list: small batched products are slow)
        colf = torch.complex(torch.cos(ang), torch.sin(ang))  # (columns, n_b)
        z0, z1 = zcut[bi], zcut[bi + 1]
        zang = xyz[2].index_select(0, zpos[z0:z1] - c0) * lrow[z0:z1, None]
        lf = torch.complex(torch.cos(zang), torch.sin(zang))  # (rows, n_b)
        # each reflection's crystal, column-factor row and l-table row within the bucket
        pc_b = rpos[s0:s0 + n_rows] - c0
        zrow_b = zrow[s0:s0 + n_rows] - z0
        krow_b = rcol[s0:s0 + n_rows] - k0
        rows = max(1, min(chunk_elements // (s_b + 1), _CHUNK_PAIRS) // n_b)
        for a in range(0, n_rows, rows):
            e = min(a + rows, n_rows)
            pc = pc_b[a:e]
            base = col_b.index_select(0, pc) + row_all[s0 + a:s0 + e]  # (r, s_b + 1)
            f0 = tab.index_select(0, base.reshape(-1)).view(base.shape)
            f1 = tab_next.index_select(0, base.reshape(-1)).view(base.shape)
            f_spec = torch.addcmul(f0, f1 - f0, wt_all[s0 + a:s0 + e])
            w = torch.gather(f_spec, 1, sslot_b.index_select(0, pc))  # (r, n_b)
            if occ_b is not None:
                w = w * occ_b.index_select(0, pc)
            if u_b is not None:
                w = w * torch.exp(-0.5 * u_b.index_select(0, pc) * q_all[s0 + a:s0 + e, None] ** 2)
            ph = colf.index_select(0, krow_b[a:e]).mul_(lf.index_select(0, zrow_b[a:e]))
            parts.append(ph.mul_(w).sum(-1))
        c0, k0, s0 = c0 + n_cry, k0 + n_cols, s0 + n_rows
    m = torch.cat(parts) if len(parts) > 1 else parts[0]
    re, im = m.real, m.imag
    return 2.0 * (re * re + im * im)  # x2: the Friedel mate -h


def _intensity_padded(batch: CrystalBatch, q: torch.Tensor, hklf: torch.Tensor, crystal: torch.Tensor,
                      radiation: str, table: str, debye_waller: bool, chunk_elements: int) -> torch.Tensor:
    """|F|² (Friedel mates included), atoms padded to the largest cell, per reflection (with autograd).

    The no-grad X-ray path is :func:`_intensity_fast`.
    """
    B, dtype, device = batch.num_crystals, q.dtype, q.device
    R = q.shape[0]
    # scattering factors once per (reflection, species)
    spec_crystal, spec_numbers, spec_slot, atom_spec_slot, S = _species_slots(batch)
    spec_pad = torch.ones(B, S, dtype=torch.long, device=device)  # pad with H (unused)
    spec_pad[spec_crystal, spec_slot] = spec_numbers

    slot, nmax = _padded_atoms(batch)
    frac_pad = batch.frac.new_zeros(B, nmax, 3).index_put((batch.batch, slot), batch.frac)
    occ_pad = batch.occupancy.new_zeros(B, nmax).index_put((batch.batch, slot), batch.occupancy)
    u_pad = batch.uiso.new_zeros(B, nmax).index_put((batch.batch, slot), batch.uiso)
    sslot_pad = torch.zeros(B, nmax, dtype=torch.long, device=device)
    sslot_pad[batch.batch, slot] = atom_spec_slot
    use_dw = debye_waller and (_tracked(batch.uiso) or bool((batch.uiso != 0).any()))
    if radiation == "neutron":
        b_spec = neutron_length(spec_pad.reshape(-1), dtype=dtype).reshape(B, S)

    out = []
    rows = max(1, chunk_elements // max(nmax * max(S, 1), 1))
    for s in range(0, R, rows):
        sl = slice(s, s + rows)
        cr, qq = crystal[sl], q[sl]
        r = cr.shape[0]
        if radiation == "xray":
            f_spec = xray_form_factor(
                spec_pad.index_select(0, cr).reshape(-1), qq.repeat_interleave(S)[:, None], table=table
            ).reshape(r, S)
        else:
            f_spec = b_spec.index_select(0, cr)
        f_atom = torch.gather(f_spec, 1, sslot_pad.index_select(0, cr))  # (r, nmax)
        w = f_atom * occ_pad.index_select(0, cr)
        if use_dw:
            w = w * torch.exp(-0.5 * u_pad.index_select(0, cr) * qq[:, None] ** 2)
        phase = torch.bmm(frac_pad.index_select(0, cr), hklf[sl, :, None]).squeeze(-1)  # (r, nmax)
        phase = _TWO_PI * phase
        a = (w * torch.cos(phase)).sum(-1)
        b = (w * torch.sin(phase)).sum(-1)
        out.append(2.0 * (a * a + b * b))  # x2: the Friedel mate -h
    return torch.cat(out) if out else q.new_zeros(0)


# X-ray form factors of every element on a fixed grid in s² = (Q/4π)², per (table, dtype, device):
# linear interpolation with Δs² = 2e-4 Å⁻² has a relative error < 1e-5.
_FTAB_DS2 = 2e-4
_FTAB_CACHE: dict = {}


def _form_factor_table(numbers: torch.Tensor, s2_top: float, table: str, dtype, device) -> torch.Tensor:
    """(Z_max + 1, T) table of f0(s²) at s² = k·_FTAB_DS2 covering [0, s2_top] for the elements ``numbers``.

    Row 0 is zeros (padding).  Rows are filled on first use and kept between calls.
    """
    key = (table, dtype, str(device))
    tab, done = _FTAB_CACHE.get(key, (None, None))
    n_tab = max(int(math.ceil(s2_top / _FTAB_DS2)) + 2, 256)
    if tab is None or tab.shape[1] < n_tab:
        n_tab = 1 << (n_tab - 1).bit_length()  # grow in powers of two
        tab = torch.zeros(MAX_Z + 1, n_tab, dtype=dtype, device=device)
        done = torch.zeros(MAX_Z + 1, dtype=torch.bool)
    need = torch.unique(numbers.cpu())
    need = need[~done[need]]
    if len(need):
        s = _FOUR_PI * torch.sqrt(torch.arange(tab.shape[1], dtype=torch.float64, device=device) * _FTAB_DS2)
        tab[need.to(device)] = xray_form_factor(need.to(device), s, table=table).to(dtype)
        done[need] = True
    _FTAB_CACHE[key] = (tab, done)
    return tab


# Atomic numbers whose X-ray form factors each table has (checked once, not on every call).
_XRAY_CHECKED: dict[str, set] = {}


def reflections(
    batch: CrystalBatch,
    q_max: float | torch.Tensor,
    *,
    q_min: float | torch.Tensor = 0.0,
    radiation: str = "xray",
    table: str = "wk",
    debye_waller: bool = True,
    merge: bool | None = None,
    chunk_elements: int = 1 << 22,
) -> Reflections:
    """Bragg reflections of every crystal up to ``q_max``.

    Parameters
    ----------
    batch : CrystalBatch
    q_max, q_min : float or (B,) tensor
        Q range in Å⁻¹.
    radiation : {"xray", "neutron"}
    table : {"wk", "pymatgen"}
        X-ray form-factor table (:mod:`.scattering`).
    debye_waller : bool
        Multiply each atom's scattering by ``exp(−Uiso Q²/2)``.
    merge : bool, optional
        Sum reflections of a crystal that share Q (symmetry equivalents) into
        one peak at their mean Q.  Default: merge unless autograd needs
        per-reflection positions (a symmetry-breaking strain splits them).
    chunk_elements : int
        Bound on the (reflections × atoms) work arrays held at once.

    Returns
    -------
    Reflections
    """
    _check_batch(batch)
    if radiation not in ("xray", "neutron"):
        raise ValueError(f"radiation: must be 'xray' or 'neutron', got {radiation!r}")
    B, dtype, device = batch.num_crystals, batch.dtype, batch.device
    q_max_t = _as_param(q_max, B, dtype, device, "q_max").detach()
    q_min_t = _as_param(q_min, B, dtype, device, "q_min").detach()
    if bool((q_max_t <= 0).any()):
        raise ValueError("q_max: must be positive")
    need_grad = torch.is_grad_enabled() and (
        batch.lattice.requires_grad or batch.frac.requires_grad or batch.uiso.requires_grad
        or batch.occupancy.requires_grad
    )
    fast = radiation == "xray" and not need_grad
    # the no-grad structure factors take the crystals in atom-count-bucket order
    corder, bucket = _bucket_order(batch) if fast else (None, None)
    hkl, crystal, columns = _enumerate_hkl(batch.lattice, q_max_t, q_min_t, columns=True, order=corder)
    R = hkl.shape[0]
    if merge is None:
        merge = not (
            torch.is_grad_enabled()
            and (batch.lattice.requires_grad or batch.frac.requires_grad or batch.uiso.requires_grad)
        )

    # Q with autograd (w.r.t. the lattice), from the reciprocal metric tensor
    recip = torch.linalg.inv(batch.lattice).transpose(-1, -2)  # (B, 3, 3)
    gm = recip @ recip.transpose(-1, -2)
    coef = torch.stack([gm[:, 0, 0], gm[:, 1, 1], gm[:, 2, 2], gm[:, 0, 1], gm[:, 0, 2], gm[:, 1, 2]], -1)
    hklf = None if fast else hkl.to(dtype)
    if fast:
        # the terms without l once per (h, k) column, then per point: the same operations in the same
        # order as the general formula below (bit-identical Q), on contiguous operands
        col, col_h, col_k, col_crystal, _ = columns
        hc, kc = col_h.to(dtype), col_k.to(dtype)
        ccol = coef.index_select(0, col_crystal).t()
        c_hk, c_h_k = hc * hc * ccol[0] + kc * kc * ccol[1], hc * kc * ccol[3]
        h_, k_, c2, c4, c5, c_hk, c_h_k = (t.contiguous().index_select(0, col)
                                           for t in (hc, kc, ccol[2], ccol[4], ccol[5], c_hk, c_h_k))
        l_ = hkl[:, 2].to(dtype)
        g2 = c_hk + l_ * l_ * c2 + 2 * (c_h_k + h_ * l_ * c4 + k_ * l_ * c5)
    else:
        cc = coef.index_select(0, crystal)
        h_, k_, l_ = hklf.unbind(-1)
        g2 = (
            h_ * h_ * cc[:, 0] + k_ * k_ * cc[:, 1] + l_ * l_ * cc[:, 2]
            + 2 * (h_ * k_ * cc[:, 3] + h_ * l_ * cc[:, 4] + k_ * l_ * cc[:, 5])
        )
    q = _TWO_PI * torch.sqrt(g2)  # (R,)

    if radiation == "xray":  # unknown elements fail here, even when no reflection is in range
        z = torch.unique(batch.numbers)
        checked = _XRAY_CHECKED.setdefault(table, set())
        if not checked.issuperset(z.tolist()):
            xray_form_factor(z, q.new_zeros(1).detach(), table=table)
            checked.update(z.tolist())
    if fast and R > 0:
        intensity = _intensity_fast(batch, q, hkl, crystal, columns, table, debye_waller, chunk_elements, corder,
                                    bucket)
    else:
        hklf = hkl.to(dtype) if hklf is None else hklf
        intensity = _intensity_padded(batch, q, hklf, crystal, radiation, table, debye_waller, chunk_elements)
    mult = torch.full((R,), 2, dtype=torch.long, device=device)

    if merge and R > 0:  # the merged peaks are sorted by crystal and Q, whatever the order of the points
        return _merge(Reflections(q, intensity, crystal, B, hkl, mult))
    if corder is not None and R > 0:  # points of the crystals in batch order
        r_count = torch.bincount(crystal, minlength=B)
        first = torch.empty_like(r_count).index_copy_(0, corder, torch.cumsum(r_count[corder], 0) - r_count[corder])
        perm = _ranges(first, r_count, R)
        q, intensity, crystal, hkl = (t.index_select(0, perm) for t in (q, intensity, crystal, hkl))
    return Reflections(q, intensity, crystal, B, hkl, mult)


def _merge(refl: Reflections) -> Reflections:
    """Sum the points of each crystal that share Q (rounded to 1e-7 Å⁻¹) into one peak at their mean Q.

    With forward-mode tangents on Q (:func:`xrd_pattern_jvp`), points that share Q but move
    apart along a tangent (an accidental overlap) are not merged: ``refl`` is returned as is.
    """
    q, intensity, crystal, hkl = refl.q, refl.intensity, refl.crystal, refl.hkl
    R, device = q.shape[0], q.device
    qkey = torch.round(q.detach().to(torch.float64) * 1e7).long()
    # a stable sort and run detection instead of torch.unique (which takes twice as long on CPU); the
    # first point of a run is its smallest index, the representative hkl as before
    shift = int(qkey.max()).bit_length() if R else 0  # (crystal, Q) in as few bits as they need: fewer sort passes
    skey, order = torch.sort((crystal << shift) + qkey, stable=True)
    ukey, sinv, counts = torch.unique_consecutive(skey, return_inverse=True, return_counts=True)
    inv = torch.empty_like(sinv).index_copy_(0, order, sinv)
    U = len(ukey)
    dq = fwad.unpack_dual(q).tangent
    if dq is not None and R > 0:
        lo = dq.new_full((U,), math.inf).scatter_reduce(0, inv, dq, reduce="amin")
        hi = dq.new_full((U,), -math.inf).scatter_reduce(0, inv, dq, reduce="amax")
        if bool((hi - lo > 1e-9 * (dq.abs().max() + 1e-300)).any()):
            return refl
    cnt = counts.to(q.dtype)
    q = torch.zeros(U, dtype=q.dtype, device=device).index_add(0, inv, q) / cnt
    intensity = torch.zeros(U, dtype=intensity.dtype, device=device).index_add(0, inv, intensity)
    hkl = hkl.index_select(0, order.index_select(0, torch.cumsum(counts, 0) - counts))
    mult = 2 * cnt.round().long()
    crystal = ukey >> shift
    return Reflections(q, intensity, crystal, refl.num_crystals, hkl, mult)


# ---------------------------------------------------------------------------
# profile


def lorentz_polarization(theta: torch.Tensor, monochromator_2theta_deg: float | None = None) -> torch.Tensor:
    """Lorentz-polarisation factor of a powder reflection at Bragg angle ``theta``.

    Without a monochromator: pymatgen's ``(1 + cos²2θ)/(sin²θ cosθ)``; with a
    monochromator crystal at 2θ_m: ``2 (1 + cos²2θ_m cos²2θ)/((1 + cos²2θ_m) sin²θ cosθ)``
    (equal to the former at 2θ_m = 0).

    Parameters
    ----------
    theta : torch.Tensor
        Bragg angle θ (half the scattering angle), radians, any shape.
    monochromator_2theta_deg : float, optional
        Scattering angle 2θ_m of the monochromator, degrees.

    Returns
    -------
    torch.Tensor
        The factor, same shape as ``theta`` (diverges at θ → 0 and θ → 90°;
        callers cap it where a reflection can sit there).
    """
    theta = torch.as_tensor(theta)
    cos2t = torch.cos(2 * theta)
    sint = torch.sin(theta)
    cost = torch.cos(theta)
    if monochromator_2theta_deg is None:
        return (1 + cos2t**2) / (sint**2 * cost)
    cm2 = math.cos(math.radians(float(monochromator_2theta_deg))) ** 2
    return 2 * (1 + cm2 * cos2t**2) / ((1 + cm2) * sint**2 * cost)


# why: xrd_profile and xrd_pattern take a bool argument of the same name that shadows the function
_lorentz_polarization = lorentz_polarization


def debye_waller(q: torch.Tensor, uiso) -> torch.Tensor:
    """Isotropic Debye–Waller factor of an intensity, ``exp(−Uiso Q²)``.

    The square of the per-atom amplitude factor ``exp(−Uiso Q²/2)`` that
    :func:`reflections` applies with ``debye_waller=True`` (all atoms with the
    same Uiso).

    Parameters
    ----------
    q : torch.Tensor
        Q in Å⁻¹.
    uiso : float or torch.Tensor
        Isotropic displacement parameter in Å² (broadcast against ``q``).
    """
    return torch.exp(-torch.as_tensor(uiso) * q * q)


def pseudo_voigt(dx: torch.Tensor, fwhm, eta) -> torch.Tensor:
    """Unit-area pseudo-Voigt ``(1 − η) G + η L`` at offsets ``dx`` from the peak.

    Parameters
    ----------
    dx : torch.Tensor
        Offset from the peak centre (same unit as ``fwhm``).
    fwhm : float or torch.Tensor
        Full width at half maximum of both components (broadcast against ``dx``).
    eta : float or torch.Tensor
        Lorentzian fraction of the area, 0 (Gaussian) … 1 (Lorentzian).

    Returns
    -------
    torch.Tensor
        Profile in 1/(unit of ``dx``), integrating to 1.
    """
    fwhm = torch.as_tensor(fwhm, dtype=dx.dtype, device=dx.device)
    eta = torch.as_tensor(eta, dtype=dx.dtype, device=dx.device)
    return _pv(dx * dx, fwhm, eta)


def _gauss(dx, h):
    return (2.0 / h) * math.sqrt(math.log(2) / math.pi) * torch.exp(-4 * math.log(2) * (dx / h) ** 2)


def _lorentz(dx, h):
    return (2.0 / (math.pi * h)) / (1 + 4 * (dx / h) ** 2)


_G_NORM = 2.0 * math.sqrt(math.log(2) / math.pi)
_G_EXP = 4.0 * math.log(2)
_L_NORM = 2.0 / math.pi


def _gauss2(dx2, h, w=1.0):
    """w · unit-area Gaussian of FWHM h at squared offsets dx2 (h, w: (n, 1))."""
    return torch.exp(dx2 * (-_G_EXP / (h * h))) * (w * _G_NORM / h)


def _lorentz2(dx2, h, w=1.0):
    """w · unit-area Lorentzian of FWHM h at squared offsets dx2."""
    return (w * _L_NORM / h) / (1 + dx2 * (4.0 / (h * h)))


def _pv(dx2, h, eta, w=1.0):
    """w · pseudo-Voigt (1-η) G + η L of FWHM h."""
    return _gauss2(dx2, h, w * (1 - eta)) + _lorentz2(dx2, h, w * eta)


def _sinc(dx, h):
    """Unit-area sin(π L dx)/(π dx) with FWHM h (PXRDnet's kernel): π L = 2·u½/h."""
    a = 2 * _SINC_HALF / h  # = π L
    x = a * dx
    safe = torch.where(x.abs() < 1e-6, torch.ones_like(x), x)
    s = torch.where(x.abs() < 1e-6, 1 - x * x / 6, torch.sin(safe) / safe)
    return s * a / math.pi


def _sinc2(dx, h):
    # unit-area sinc²: FWHM h  ->  x = 2·HWHM_x·dx/h
    a = 2 * _SINC2_HWHM / h
    x = a * dx
    safe = torch.where(x.abs() < 1e-6, torch.ones_like(x), x)
    s = torch.where(x.abs() < 1e-6, 1 - x * x / 3, (torch.sin(safe) / safe) ** 2)
    return s * a / math.pi


def _tch(hg, hl):
    """Thompson–Cox–Hastings pseudo-Voigt FWHM and Lorentz fraction of a Voigt."""
    h5 = (
        hg**5
        + 2.69269 * hg**4 * hl
        + 2.42843 * hg**3 * hl**2
        + 4.47163 * hg**2 * hl**3
        + 0.07842 * hg * hl**4
        + hl**5
    )
    h = h5.clamp_min(1e-300) ** 0.2
    ratio = hl / h
    eta = 1.36603 * ratio - 0.47719 * ratio**2 + 0.11116 * ratio**3
    return h, eta


def size_fwhm_q(size_nm, shape_factor: float = 0.9, size_kernel: str = "scherrer"):
    """Size-broadening FWHM in Q (Å⁻¹) for crystallite size ``size_nm``.

    Scherrer (Lorentzian) and Gaussian: 2πK/L.  sinc (PXRDnet): 2·1.8955/(πL) = 1.2067/L.
    sinc²: the FWHM of sinc²(L·ΔQ/2), 4·1.3916/L
    (independent of K).  L = 10·size_nm Å.
    """
    L = 10.0 * torch.as_tensor(size_nm)
    if size_kernel in ("scherrer", "gauss"):
        return _TWO_PI * shape_factor / L
    if size_kernel == "sinc2":
        return 4 * _SINC2_HWHM / L
    if size_kernel == "sinc":
        return 2 * _SINC_HALF / (math.pi * L)
    raise ValueError(f"size_kernel: must be one of {_SIZE_KERNELS}, got {size_kernel!r}")


def _chebyshev(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Σ_k c_k T_k(t), t = x mapped to [-1, 1]; coeffs (B, K) -> (B, M)."""
    t = 2 * (x - x[0]) / (x[-1] - x[0]).clamp_min(1e-30) - 1 if x.numel() > 1 else x * 0
    tk = [torch.ones_like(t), t]
    K = coeffs.shape[-1]
    while len(tk) < K:
        tk.append(2 * t * tk[-1] - tk[-2])
    T = torch.stack(tk[:K], 0)  # (K, M)
    return coeffs @ T


def xrd_profile(
    refl: Reflections,
    x: torch.Tensor,
    *,
    x_kind: str = "2theta",
    wavelength: float = 1.540598,
    wavelength2: float | None = None,
    ka2_ratio: float = 0.5,
    size_nm=None,
    shape_factor: float = 0.9,
    size_kernel: str = "scherrer",
    U=0.0,
    V=0.0,
    W=0.0,
    eta=0.5,
    zero_deg=0.0,
    background: torch.Tensor | None = None,
    scale=1.0,
    lorentz_polarization: bool = True,
    monochromator_2theta_deg: float | None = None,
    peak_window: float = 20.0,
    min_fwhm: float | None = None,
    chunk_elements: int = 1 << 22,
    method: str = "auto",
    peak_shape: str = "pv",
    X=0.0,
    Y=0.0,
    axial_deg=0.0,
    displacement_deg=0.0,
    record: list | None = None,
) -> torch.Tensor:
    """Powder pattern on a grid from a peak list.

    Parameters
    ----------
    refl : Reflections
        Peak list (:func:`reflections` or :meth:`Reflections.from_lists`).
    x : torch.Tensor, shape (M,)
        Strictly increasing grid: 2θ in degrees (``x_kind="2theta"``) or Q in
        Å⁻¹ (``"q"``).
    wavelength, wavelength2 : float
        Kα1 (or monochromatic) and optional Kα2 wavelengths, Å.  On a Q grid
        the Kα2 peaks appear at the Q the Kα1 wavelength assigns to their 2θ.
    ka2_ratio : float
        Kα2/Kα1 intensity ratio.
    size_nm : float or (B,) tensor, optional
        Crystallite size L in nm (None: no size broadening).
    shape_factor : float
        Scherrer constant K.
    size_kernel : {"scherrer", "gauss", "sinc", "sinc2"}
        Lorentzian (Scherrer), Gaussian of the Scherrer FWHM, PXRDnet's sinc, or the sinc² Laue
        function.
    U, V, W : float or (B,) tensor
        Caglioti coefficients, degrees².
    eta : float or (B,) tensor
        Lorentzian fraction of the instrument pseudo-Voigt.
    zero_deg : float or (B,) tensor
        Zero shift in degrees 2θ (peaks at 2θ + zero).
    background : (B, K) tensor, optional
        Chebyshev coefficients over the grid range (added after ``scale``).
    scale : float or (B,) tensor
    lorentz_polarization : bool
    monochromator_2theta_deg : float, optional
    peak_window : float
        Profiles are evaluated within ± ``peak_window`` FWHM of each peak.
    min_fwhm : float, optional
        Width (grid units) used when neither instrument nor size broadening is
        given; default 2 × the mean grid step.
    method : {"auto", "window", "fft"}
        ``"window"`` evaluates every peak profile within ``peak_window``
        (instrument ⊗ size by the Thompson–Cox–Hastings approximation).
        ``"fft"`` (needs ``size_nm``) deposits the peaks as sticks on a uniform
        Q work grid (cubic B-spline weights) and applies the size kernel, whose
        width is Q-independent, and each peak's instrument pseudo-Voigt (U, V,
        W; its exact transform, interpolated between a few instrument-width
        nodes) in Fourier space; 2θ grids are read out with the Jacobian
        dQ/d2θ.  The instrument profile is not truncated.  Agrees with the
        exact (Voigt) convolution to ~3e-4 of the maximum and with "window" to
        ~1 % (TCH approximation there).  "auto" uses "fft" whenever
        ``size_nm`` is given (falling back to "window" when the work grid would
        be too large).
    peak_shape : {"pv", "tch"}
        ``"pv"``: the instrument profile is a pseudo-Voigt of FWHM √(U tan²θ + V tanθ + W)
        and Lorentzian fraction ``eta``.  ``"tch"``: the Thompson–Cox–Hastings
        pseudo-Voigt (J. Appl. Cryst. 20, 79 (1987)) of a Gaussian of FWHM
        √(U tan²θ + V tanθ + W) and a Lorentzian of FWHM X/cosθ + Y tanθ;
        FWHM and mixing per peak from TCH's formulas, ``eta`` ignored.
    X, Y : float or (B,) tensor
        Lorentzian widths (degrees 2θ) of ``peak_shape="tch"``: X/cosθ (size-like)
        and Y tanθ (strain-like).
    axial_deg : float or (B,) tensor
        Axial-divergence asymmetry A (degrees 2θ): each peak is convolved with the
        "simple axial" aberration kernel ``1/√(ε εm) − 1/εm`` on ε ∈ [0, εm] with
        ``εm = −A cot 2θ`` (Cheary & Coelho, J. Appl. Cryst. 31, 851 (1998): the
        axial-divergence aberration of a point source and receiving slit; a tail
        to low angle below 90° 2θ, to high angle above), discretised as
        :data:`AXIAL_NODES` equal-weight sub-peaks at the kernel's quantile
        midpoints (scaled to the kernel's mean), or one sub-peak at the mean where
        the kernel is much narrower than the peak (:data:`AXIAL_ONE_NODE`).  Its
        centroid shift is εm/6.
    displacement_deg : float or (B,) tensor
        Specimen displacement: peaks move by ``displacement_deg · cosθ`` degrees
        2θ (for a displacement s on a goniometer of radius R,
        displacement_deg = −(360/π) s/R).
    record : list, optional
        Window method only: instead of profiling the peaks, append one tuple per set of peaks
        (wavelength, axial sub-peak) with what the profile of each would be computed from, in grid
        units: ``(pos, intensity, h_inst, h_size, eta, no_inst, min_fwhm)`` (for
        :func:`xrd_pattern_window_jvp`); the pattern returned is then zero.

    Returns
    -------
    torch.Tensor, shape (B, M)
    """
    if x_kind not in ("2theta", "q"):
        raise ValueError(f"x_kind: must be '2theta' or 'q', got {x_kind!r}")
    if peak_shape not in ("pv", "tch"):
        raise ValueError(f"peak_shape: must be 'pv' or 'tch', got {peak_shape!r}")
    dtype, device = refl.q.dtype, refl.q.device
    x = torch.as_tensor(x, dtype=dtype, device=device).contiguous()
    _check_grid(x, "x")
    if x_kind == "2theta" and (float(x[0]) < 0 or float(x[-1]) >= 180):
        raise ValueError("x: 2θ grid must lie within [0, 180) degrees")
    if not (float(wavelength) > 0):
        raise ValueError(f"wavelength: must be positive, got {wavelength}")
    if wavelength2 is not None and not (float(wavelength2) > 0):
        raise ValueError(f"wavelength2: must be positive, got {wavelength2}")
    if size_kernel not in _SIZE_KERNELS:
        raise ValueError(f"size_kernel: must be one of {_SIZE_KERNELS}, got {size_kernel!r}")
    B = refl.num_crystals
    M = x.numel()
    size_t = None
    if size_nm is not None:
        size_t = _as_param(size_nm, B, dtype, device, "size_nm")
        if bool((size_t.detach() <= 0).any()) or not bool(torch.isfinite(size_t.detach()).all()):
            raise ValueError(f"size_nm: crystallite size must be positive, got {size_nm}")
    tch = peak_shape == "tch"
    no_inst = _is_zero(U) and _is_zero(V) and _is_zero(W) and (not tch or (_is_zero(X) and _is_zero(Y)))
    Ut, Vt, Wt = (_as_param(v, B, dtype, device, n) for v, n in ((U, "U"), (V, "V"), (W, "W")))
    eta_t = _as_param(eta, B, dtype, device, "eta")
    if tch:
        Xt, Yt = _as_param(X, B, dtype, device, "X"), _as_param(Y, B, dtype, device, "Y")
    elif not (_is_zero(X) and _is_zero(Y)):
        raise ValueError("X, Y: Lorentzian widths need peak_shape='tch'")
    axial_t = None if _is_zero(axial_deg) else _as_param(axial_deg, B, dtype, device, "axial_deg")
    disp_t = None if _is_zero(displacement_deg) else _as_param(displacement_deg, B, dtype, device,
                                                                 "displacement_deg")
    zero_t = _as_param(zero_deg, B, dtype, device, "zero_deg")
    scale_t = _as_param(scale, B, dtype, device, "scale")
    if min_fwhm is None:
        min_fwhm = 2.0 * float(x[-1] - x[0]) / max(M - 1, 1)
    if method not in ("auto", "window", "fft"):
        raise ValueError(f"method: must be 'auto', 'window' or 'fft', got {method!r}")
    if method == "fft" and size_t is None:
        raise ValueError("method: 'fft' needs size broadening (size_nm)")
    use_fft = method == "fft" or (method == "auto" and size_t is not None and M > 1)
    if record is not None and use_fft:
        raise ValueError("record: the window method only")

    out = None if use_fft else torch.zeros(B * M, dtype=dtype, device=device)  # the window path's sum
    comps = [(float(wavelength), 1.0)]
    if wavelength2 is not None and ka2_ratio:
        comps.append((float(wavelength2), float(ka2_ratio)))
    c = refl.crystal
    lam1 = float(wavelength)
    # per-peak quantities that only the window path reads are skipped on the FFT path, and factors of
    # exactly 1 and shifts of exactly 0 are not applied (the same values, fewer passes over the peaks)
    window = not use_fft
    unit_scale = not _tracked(scale_t) and bool((scale_t == 1).all())
    no_zero = not _tracked(zero_t) and bool((zero_t == 0).all())
    sticks = []
    for lam, weight in comps:
        s = lam * refl.q / _FOUR_PI
        valid = (s < 1 - 1e-9) & (s > 0)
        s = torch.where(valid, s, torch.full_like(s, 0.5))
        theta = torch.asin(s)
        inten = refl.intensity if weight == 1.0 else refl.intensity * weight
        if not unit_scale:
            inten = inten * scale_t[c]
        if lorentz_polarization:
            inten = inten * _lorentz_polarization(theta, monochromator_2theta_deg)
        inten = torch.where(valid, inten, torch.zeros_like(inten))
        tt = 2 * theta * _DEG  # observed 2θ, degrees
        if not no_zero:
            tt = tt + zero_t[c]
        if disp_t is not None:
            tt = tt + disp_t[c] * torch.cos(theta)
        # widths in degrees 2θ
        tan = None if no_inst else torch.tan(theta)
        eta_p = eta_t[c] if window or tch else None  # the FFT path's pseudo-Voigt takes eta per crystal
        if no_inst:
            h_inst = torch.zeros_like(theta)
        else:
            h2 = Ut[c] * tan**2 + Vt[c] * tan + Wt[c]
            pos = h2 > 0
            h_inst = torch.where(pos, torch.sqrt(torch.where(pos, h2, torch.ones_like(h2))), torch.zeros_like(h2))
            if tch:
                h_lor = (Xt[c] / torch.cos(theta) + Yt[c] * tan).clamp_min(0.0)
                h_inst, eta_p = _tch(h_inst, h_lor)
                eta_p = eta_p.clamp(0.0, 1.0)
        if size_t is not None and (window or axial_t is not None):
            L = 10.0 * size_t[c]
            if size_kernel in ("scherrer", "gauss"):
                h_size = shape_factor * lam / (L * torch.cos(theta)) * _DEG
            else:
                # sinc kernels have a Q-independent FWHM, converted to 2θ
                h_size = size_fwhm_q(size_t[c], shape_factor, size_kernel) / ((_TWO_PI / lam) * torch.cos(theta)) * _DEG
        else:
            h_size = None
        h_inst_deg = h_inst
        if axial_t is not None:  # the narrowest width of the peak (degrees 2θ): which kernels act as a shift
            h_low = h_inst if h_size is None else (h_size if no_inst else torch.maximum(h_inst, h_size))
        if x_kind == "q" and window:
            # positions: Q that the Kα1 wavelength assigns to the observed 2θ
            tt_rad = (tt / _DEG).clamp(0, math.pi)
            pos_x = _FOUR_PI * torch.sin(tt_rad / 2) / lam1
            conv = (_TWO_PI / lam1) * torch.cos(tt_rad / 2) / _DEG  # dQ per degree 2θ
            h_inst = h_inst * conv
            if h_size is not None:
                h_size = h_size * conv
        else:
            pos_x = tt
        if axial_t is not None:
            # simple axial model: equal-weight sub-peaks at ε = εm·u_j, εm = −A cot 2θ
            eps_m = -axial_t[c] / torch.tan(2 * theta)
            one = eps_m.detach().abs() <= AXIAL_ONE_NODE * h_low.detach()
            if bool(one.all()):
                subs = [(tt + eps_m / 6.0, inten)]
            else:
                wide = torch.where(one, torch.zeros_like(inten), inten / len(_AXIAL_U))  # zero: skipped
                subs = [(tt + eps_m * u, wide) for u in _AXIAL_U]
                if bool(one.any()):
                    subs.append((tt + eps_m / 6.0, torch.where(one, inten, torch.zeros_like(inten))))
        else:
            subs = [(tt, inten)]
        for tt_j, inten_j in subs:
            if use_fft:
                sticks.append((tt_j, inten_j, None if no_inst else h_inst_deg, eta_p))
                continue
            if x_kind == "q":
                pos_j = _FOUR_PI * torch.sin((tt_j / _DEG).clamp(0, math.pi) / 2) / lam1
            else:
                pos_j = tt_j
            if axial_t is None:
                pos_j = pos_x
            if record is not None:
                record.append((pos_j, inten_j, h_inst, h_size, eta_p, no_inst, min_fwhm))
                continue
            _add_peaks(
                out, x, c, pos_j, inten_j, h_inst, h_size, eta_p, no_inst, size_kernel,
                min_fwhm, peak_window, M, chunk_elements,
            )
    y = None
    if use_fft:
        y = _profile_fft(
            sticks, c, B, x, x_kind, lam1, size_t, shape_factor, size_kernel, None if tch else eta_t, peak_window,
            chunk_elements, force=method == "fft",
        )
    if y is None:  # the window path (also when the FFT work grid would be too large)
        if out is None:
            out = torch.zeros(B * M, dtype=dtype, device=device)
        for tt, inten, h_i, eta_s in sticks:
            eta_s = eta_t[c] if eta_s is None else eta_s
            pos_x, h_i_x, h_s_x = _positions_widths(tt, h_i, size_t[c], x_kind, lam1, shape_factor, size_kernel)
            _add_peaks(
                out, x, c, pos_x, inten, h_i_x if h_i is not None else torch.zeros_like(tt), h_s_x,
                eta_s, h_i is None, size_kernel, min_fwhm, peak_window, M, chunk_elements,
            )
        y = out.view(B, M)
    return y if background is None else _add_background(y, x, background)


def _add_background(y: torch.Tensor, x: torch.Tensor, background) -> torch.Tensor:
    """``y`` (B, M) plus the Chebyshev background of (K,) or (B, K) coefficients over the grid ``x``."""
    B = y.shape[0]
    bg = torch.as_tensor(background, dtype=y.dtype, device=y.device)
    if bg.dim() == 1:
        bg = bg[None].expand(B, -1)
    if bg.dim() != 2 or bg.shape[0] != B:
        raise ValueError(f"background: need (B, K) Chebyshev coefficients, got {tuple(bg.shape)}")
    return y + _chebyshev(x, bg)


def _positions_widths(tt, h_inst_deg, size_c, x_kind, lam1, shape_factor, size_kernel):
    """Peak positions and FWHMs (instrument, size) in grid units for the window path."""
    theta_obs = torch.deg2rad(tt.clamp(0, 179.999)) / 2
    conv = (_TWO_PI / lam1) * torch.cos(theta_obs) / _DEG  # dQ per degree 2θ
    h_s_q = size_fwhm_q(size_c, shape_factor, size_kernel)
    if x_kind == "q":
        return _FOUR_PI * torch.sin(theta_obs) / lam1, (None if h_inst_deg is None else h_inst_deg * conv), h_s_q
    return tt, h_inst_deg, h_s_q / conv


# Spacing of the instrument-width nodes of the FFT path in v = ln(h + dq) (h: FWHM in Å⁻¹): the kernel
# transform of any width is cubic-Lagrange interpolated between the four nearest nodes, with a
# maximum error of 4e-5 (Gaussian) and 3e-6 (Lorentzian) of the peak's transform at any frequency.
_NODE_DV = 0.1
# Work-grid step of the FFT path: a power of two at most 1/12 of the narrowest peak FWHM in Q, so the
# cubic B-spline deposit and read-out (each corrected in Fourier space) alias at most ~1e-5 of a peak.
_STEPS_PER_FWHM = 12.0
# Lorentzian tails decay as (FWHM/2D)²: the periodic images of the FFT lie at least 50 FWHM away (1e-4 of a peak).
_WRAP_FWHM = 50.0
# Work-grid values (crystals × node rows × FFT points) transformed at once by the FFT path: chunks of
# about 2 MB in float32 were 1.2-1.5× faster than the bench's whole 11 MB grid (2 cores, 1 MiB L2 each,
# interleaved runs of 2^17-2^20 values and the whole batch).
_CHUNK_VALUES = 1 << 19


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c ≥ n (fast sizes for pocketfft and cuFFT)."""
    best = 1 << max(int(n) - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _bspline3(f: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Cubic B-spline weights of the four nodes i0-1 .. i0+2 at fractional offset f ∈ [0, 1) from i0, stacked
    along ``dim``: (..., 4) by default."""
    g = 1 - f
    f2, f3 = f * f, f * f * f
    return torch.stack([g * g * g / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6], dim)


def _lagrange4(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Cubic Lagrange weights of nodes 0, 1, 2, 3 at t ∈ [1, 2), stacked along ``dim``: (..., 4) by default."""
    t0, t1, t2, t3 = t, t - 1, t - 2, t - 3
    return torch.stack([-t1 * t2 * t3 / 6, t0 * t2 * t3 / 2, -t0 * t1 * t3 / 2, t0 * t1 * t2 / 6], dim)


def _profile_fft(sticks, c, B, x, x_kind, lam1, size_t, shape_factor, size_kernel, eta_crystal, peak_window,
                 chunk_elements, force=False, max_work=1 << 25):
    """Size- and instrument-broadened pattern by one FFT convolution on a uniform Q grid (see ``xrd_profile``).

    Each stick is deposited onto a uniform Q work grid with cubic B-spline weights.  The
    Q-independent size kernel and each stick's instrument pseudo-Voigt (whose FWHM in Q varies
    from peak to peak) are applied in Fourier space with their exact transforms: a stick's
    intensity is shared between a few instrument-width nodes (cubic Lagrange weights in
    ln(h + dq)), each node's grid is transformed and multiplied by its node kernel, and one
    inverse FFT gives cubic B-spline coefficients that are read out at the grid points.  The
    instrument profile is not truncated (the window path cuts it at ± ``peak_window`` FWHM).

    ``eta_crystal``: (B,) Lorentzian fraction of every crystal ("pv" shape: one set of nodes),
    or None when every stick has its own (TCH: a Gaussian and a Lorentzian set).
    Returns None when the work grids would exceed ``max_work`` values (the caller falls back
    to the window path) unless ``force``.
    """
    dtype, device = x.dtype, x.device
    fw = size_fwhm_q(size_t, shape_factor, size_kernel)  # (B,) FWHM in Q, Å⁻¹
    fw_d = fw.detach()
    fw_min, fw_max = float(fw_d.min()), float(fw_d.max())
    qx = x if x_kind == "q" else _FOUR_PI * torch.sin(torch.deg2rad(x) / 2) / lam1
    qx0, qx1 = float(qx[0]), float(qx[-1])
    pad = 2.0 ** math.ceil(math.log2(10 * fw_max))  # sticks this far beyond the grid still count
    lo_q, hi_q = qx0 - pad, qx1 + pad
    # stick positions (Q that the Kα1 wavelength assigns to the observed 2θ) and instrument FWHM in Q
    any_inst = any(h_i is not None for _tt, _i, h_i, _e in sticks)
    tt = torch.cat([s[0] for s in sticks])
    th = torch.deg2rad(tt.clamp(0, 179.999)) / 2
    pos = _FOUR_PI * torch.sin(th) / lam1
    inten = torch.cat([s[1] for s in sticks])
    cs = c if len(sticks) == 1 else c.repeat(len(sticks))
    pos_d = pos.detach()
    on = (pos_d >= lo_q) & (pos_d < hi_q) & (inten.detach() != 0)
    idx = None if bool(on.all()) else torch.nonzero(on).squeeze(-1)  # None: every stick (no gathers)
    if idx is not None:
        pos, inten, cs, pos_d, th = pos[idx], inten[idx], cs[idx], pos_d[idx], th[idx]
    n_on = int(pos.numel())
    hq = None
    if any_inst and n_on:
        h_i = torch.cat([s[2] for s in sticks])
        hq = (h_i if idx is None else h_i[idx]) * (_TWO_PI / lam1) * torch.cos(th) / _DEG
    # narrowest and broadest peak FWHM in Q: the size kernel's plus the instrument's
    h_min = float(hq.detach().min().clamp_min(0.0)) if hq is not None else 0.0
    h_max = float(hq.detach().max().clamp_min(0.0)) if hq is not None else 0.0
    # step: the largest 2^e·(1 + m/4) ≤ FWHM/_STEPS_PER_FWHM (a fixed set of steps, so that the
    # grid does not move under small changes of the widths)
    target = (fw_min + h_min) / _STEPS_PER_FWHM
    e2 = 2.0 ** math.floor(math.log2(target))
    dq = e2 * (1 + math.floor(4 * (target / e2 - 1) + 1e-9) / 4)
    # the work grid spans the output range and the sticks that reach it
    span_lo = min(qx0, float(pos_d.min())) if n_on else qx0
    span_hi = max(qx1, float(pos_d.max())) if n_on else qx1
    q0 = math.floor(span_lo / dq) * dq - 2 * dq
    # period of the FFT: the images of the sticks stay far from the grid (sinc kernels, whose tails
    # decay as 1/D, keep the previous rule of a period twice the work range)
    wrap = span_hi - q0 if size_kernel == "sinc" else _WRAP_FWHM * (fw_max + h_max)
    nfft = _fft_size(int(math.ceil((max(span_hi - qx0, qx1 - q0) + wrap) / dq)) + 4)

    # instrument-width nodes: v = ln(h + dq) on a fixed lattice of step _NODE_DV (nodes do not move
    # when the widths change; a node below h = 0 is the analytic continuation of the kernel)
    tch = eta_crystal is None
    sets, J = 1, 1
    if hq is not None:
        v = torch.log(hq.clamp_min(0.0) + dq) / _NODE_DV
        iv = torch.floor(v.detach()).long()
        big = torch.iinfo(torch.long).max
        n_lo = torch.full((B,), big, dtype=torch.long, device=device).scatter_reduce(0, cs, iv, reduce="amin")
        n_hi = torch.full((B,), -big, dtype=torch.long, device=device).scatter_reduce(0, cs, iv, reduce="amax")
        has = n_hi >= n_lo
        n_lo = torch.where(has, n_lo, n_lo.new_zeros(())) - 1  # lattice index of every crystal's node 0
        J = int(torch.where(has, n_hi - n_lo, n_lo.new_zeros(())).max()) + 3
        g_lo, g_hi = int(n_lo[has].min()), int(n_hi[has].max())
        if g_hi - g_lo + 3 <= J + 2:  # nearly the same nodes for all crystals: share them (one kernel table)
            n_lo = torch.full_like(n_lo, g_lo)
            J = g_hi - g_lo + 3
        jrel = iv - 1 - n_lo[cs]  # node of a stick's first Lagrange weight
        wnode = _lagrange4(v - (iv - 1).to(dtype), dim=0)  # (4, P)
        sets = 2 if tch else 1
    if B * sets * J * nfft > max_work and not force:
        return None

    # deposit: stick p adds inten · (node weight) · (B-spline weight) at (crystal, set, node, grid point)
    t = (pos - q0) / dq
    i0 = torch.floor(t.detach()).long()
    # (values per stick, P) layout: the long axis innermost, so that the small products vectorise
    wq = _bspline3(t - i0.to(dtype), dim=0)  # (4, P)
    gidx = i0 + torch.arange(-1, 3, device=device)[:, None]  # (4, P)
    if n_on and (int(i0.min()) < 1 or int(i0.max()) + 2 >= nfft):  # periodic images (no stick reaches them here)
        gidx = torch.remainder(gidx, nfft)
    rows = sets * J
    if hq is None:
        flat = gidx + cs * nfft
        vals = wq * inten
    else:
        row = (cs * rows + jrel) * nfft + nfft * torch.arange(4, device=device)[:, None]  # (4, P) set 0
        vals = (wnode * inten)[:, None, :] * wq[None, :, :]  # (node, grid point, P)
        flat = row[:, None, :] + gidx[None, :, :]
        if tch:  # set 0: Gaussian nodes, weight 1 - η; set 1: Lorentzian nodes, weight η
            eta_p = torch.cat([s[3] for s in sticks])
            eta_p = eta_p if idx is None else eta_p[idx]
            vals = torch.stack([vals * (1 - eta_p), vals * eta_p])
            flat = torch.stack([flat, flat + J * nfft])
    flat, vals = flat.reshape(-1, n_on), vals.reshape(-1, n_on)  # one column per stick
    k = _TWO_PI * torch.fft.rfftfreq(nfft, d=dq).to(dtype=dtype, device=device)  # angular frequency, Å
    if hq is not None:
        # node kernels on the lattice rows that any crystal uses, then per crystal
        n0 = int(n_lo.min())
        n_rows = int(n_lo.max()) - n0 + J
        h_nodes = (torch.exp(_NODE_DV * torch.arange(n0, n0 + n_rows, dtype=torch.float64)) - dq).to(dtype=dtype,
                                                                                                       device=device)
        hk = h_nodes[:, None] * k  # (rows, K)
        gauss = torch.exp(hk * hk * (-1.0 / (16 * math.log(2))))  # FT of a unit-area Gaussian of FWHM h
        lor = torch.exp(-0.5 * hk)  # FT of a unit-area Lorentzian of FWHM h
        per_crystal = int(n_lo.max()) != n0
        if not per_crystal:  # every crystal starts at the same node: (J, K) tables
            gauss, lor = gauss[:J], lor[:J]
        else:
            jsel = (n_lo - n0)[:, None] + torch.arange(J, device=device)  # (B, J)
            gauss, lor = gauss[jsel], lor[jsel]
        mixed = None
        if not tch:
            e = eta_crystal.detach()
            if not _tracked(eta_crystal) and bool((e == e[0]).all()):  # one mixed table
                mixed = gauss + e[0] * (lor - gauss)
    # the sticks' transforms, crystals a chunk at a time so that the node grids and their transforms
    # stay in cache (the whole batch's are ~10 MB for the bench)
    if n_on > 1 and not bool((cs[1:] >= cs[:-1]).all()):
        order = torch.argsort(cs, stable=True)
        cs, flat, vals = cs[order], flat[:, order], vals[:, order]
    per = max(1, _CHUNK_VALUES // (rows * nfft))
    bounds = torch.searchsorted(cs, torch.arange(0, B + per, per, device=device).clamp_max(B)).tolist()
    parts = []
    # without derivatives and instrument nodes, the transforms go straight into one spectrum array (no
    # concatenation of the chunks' spectra, and the filter below is applied in place)
    plain = hq is None and not _tracked(vals)
    spec = torch.empty(B, nfft // 2 + 1, dtype=k.dtype.to_complex(), device=device) if plain else None
    for ci, b0 in enumerate(range(0, B, per)):
        b1, p0, p1 = min(B, b0 + per), bounds[ci], bounds[ci + 1]
        grid = torch.zeros((b1 - b0) * rows * nfft, dtype=dtype, device=device).index_add_(
            0, (flat[:, p0:p1] - b0 * rows * nfft).reshape(-1), vals[:, p0:p1].reshape(-1))
        if plain:
            torch.fft.rfft(grid.view(b1 - b0, nfft), dim=-1, out=spec[b0:b1])
            continue
        sp = torch.fft.rfft(grid.view(b1 - b0, rows, nfft), dim=-1)
        if hq is None:
            parts.append(sp[:, 0])
            continue
        g, lo = (gauss[b0:b1], lor[b0:b1]) if per_crystal else (gauss, lor)
        if tch:
            parts.append(_node_sum(sp[:, :J], g) + _node_sum(sp[:, J:], lo))
        elif mixed is not None:
            parts.append(_node_sum(sp, mixed[b0:b1] if per_crystal else mixed))
        else:
            parts.append(_node_sum(sp, g) + eta_crystal[b0:b1, None] * _node_sum(sp, lo - g))
    if not plain:
        spec = torch.cat(parts) if len(parts) > 1 else parts[0]
    same_size = bool((fw_d == fw_d[0]).all()) and not _tracked(fw)
    f = fw[:1] if same_size else fw
    if size_kernel == "scherrer":
        kern = torch.exp(-0.5 * f[:, None] * k[None, :])  # FT of a unit-area Lorentzian of FWHM fw
    elif size_kernel == "gauss":
        fk = f[:, None] * k[None, :]
        kern = torch.exp(fk * fk * (-1.0 / (16 * math.log(2))))  # FT of a unit-area Gaussian of FWHM fw
    elif size_kernel == "sinc2":
        a = 2 * _SINC2_HWHM / f  # sinc²(a ΔQ): a = L/2
        kern = (1 - k[None, :] / (2 * a[:, None])).clamp_min(0)  # FT of unit-area sinc²: a triangle
    else:
        a = 2 * _SINC_HALF / f  # sin(a ΔQ)/(π ΔQ): a = π L; its transform is a box |k| < a
        kern = torch.sigmoid((a[:, None] - k[None, :]) / (0.5 * (k[1] - k[0])))  # box, smoothed over one bin
    # undo the cubic B-spline of the deposit and prefilter for the cubic B-spline read-out (each the
    # transform sinc⁴(k dq / 2π)); 1/dq: the deposited sticks become a density per Å⁻¹
    b4 = torch.sinc(k * (dq / _TWO_PI)) ** 4
    filt = kern / (b4 * b4 * dq)
    spec = spec.mul_(filt) if plain and not _tracked(filt) else spec * filt
    prof = torch.fft.irfft(spec, n=nfft, dim=-1)  # (B, nfft) spline coefficients
    # read-out: cubic B-spline at the grid points, as a sparse (M, nfft) matrix (4 values a row)
    tx = (qx.detach() - q0) / dq
    j0 = torch.floor(tx).long()
    wx = _bspline3(tx - j0.to(dtype))  # (M, 4)
    jx = torch.remainder(j0[:, None] + torch.arange(-1, 3, device=device), nfft)
    if x_kind == "2theta":
        wx = wx * ((_TWO_PI / lam1) * torch.cos(torch.deg2rad(x.detach()) / 2) / _DEG)[:, None]  # dQ/d(2θ°)
    M = qx.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        read = torch.sparse_csr_tensor(torch.arange(0, 4 * M + 1, 4, device=device), jx.reshape(-1),
                                       wx.reshape(-1), (M, nfft))
        return _apply_linear(read, prof)


def _node_sum(spec: torch.Tensor, kern: torch.Tensor) -> torch.Tensor:
    """``(spec * kern).sum(1)`` for spec (B, J, K) and kern (J, K) or (B, J, K), one node at a time (the
    broadcast product and its reduction over the middle axis are several times slower on CPU)."""
    s2 = torch.view_as_real(spec)  # real arithmetic: complex × real products promote the real factor first
    k2 = kern[..., None].expand(*kern.shape, 2).contiguous()
    out = s2[:, 0] * k2[..., 0, :, :]
    for j in range(1, spec.shape[1]):
        out = out + s2[:, j] * k2[..., j, :, :]
    return torch.view_as_complex(out)


def _apply_linear(op: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(op @ v.T).T`` for a sparse ``op``; with a forward-mode (dual) ``v`` the primal and the
    tangent are multiplied separately (sparse CSR products have no forward-mode derivative)."""
    primal, tangent = fwad.unpack_dual(v)
    if tangent is None:
        return (op @ v.t()).t()
    return fwad.make_dual((op @ primal.t()).t(), (op @ tangent.t()).t())


def _add_peaks(out, x, c, pos, inten, h_inst, h_size, eta, no_inst, kernel, min_fwhm, window, M, chunk_elements):
    """Accumulate the profile of each peak onto ``out`` (flat (B*M,)) within a window."""
    if h_size is None:
        h_i = h_inst if not no_inst else torch.full_like(pos, min_fwhm)
        parts = [("pv", h_i)]
        width = h_i
    elif no_inst:
        parts = [("size", h_size)]
        width = h_size
    else:
        parts = [("conv", None)]
        width = h_inst + h_size
    width_d = width.detach().clamp_min(1e-12)
    lo = torch.searchsorted(x, (pos.detach() - window * width_d).contiguous())
    hi = torch.searchsorted(x, (pos.detach() + window * width_d).contiguous(), right=True)
    n = (hi - lo).clamp_min(0)
    keep = (n > 0) & (inten.detach() != 0)
    if not bool(keep.any()):
        return
    idx_keep = torch.nonzero(keep).squeeze(-1)
    n_k = n[idx_keep]
    order = torch.argsort(n_k)
    idx_sorted = idx_keep[order]
    n_sorted = n_k[order].cpu().numpy()
    start = 0
    total = len(n_sorted)
    while start < total:
        # largest chunk [start, end) with (end-start)*n[end-1] <= budget
        lw_max = int(n_sorted[start])
        end = start + 1
        lo_e, hi_e = start + 1, total
        while lo_e <= hi_e:
            mid = (lo_e + hi_e) // 2
            if (mid - start) * int(n_sorted[mid - 1]) <= chunk_elements:
                end = mid
                lo_e = mid + 1
            else:
                hi_e = mid - 1
        lw_max = int(n_sorted[end - 1])
        sel = idx_sorted[start:end]
        ar = torch.arange(lw_max, device=x.device)
        gi = lo[sel][:, None] + ar[None, :]
        valid = gi < hi[sel][:, None]
        gi = gi.clamp_max(M - 1)
        dx = x[gi] - pos[sel][:, None]
        dx2 = dx * dx
        # per-peak constants on (n, 1) so that only a few operations touch (n, L) arrays
        if parts[0][0] == "pv":
            h = parts[0][1][sel][:, None]
            e = eta[sel][:, None]
            prof = _pv(dx2, h, e)
        elif parts[0][0] == "size":
            h = h_size[sel][:, None]
            if kernel == "scherrer":
                prof = _lorentz2(dx2, h)
            elif kernel == "gauss":
                prof = _gauss2(dx2, h)
            else:
                prof = _sinc2(dx, h) if kernel == "sinc2" else _sinc(dx, h)
        else:
            hi_ = h_inst[sel][:, None]
            hs = h_size[sel][:, None]
            e = eta[sel][:, None]
            if kernel == "scherrer":
                hv, ev = _tch(hi_, hs)
                prof = _pv(dx2, hv, ev, 1 - e) + _lorentz2(dx2, hi_ + hs, e)
            elif kernel == "gauss":
                # Gaussian part ⊗ Gaussian size: a Gaussian (widths in quadrature); Lorentzian
                # part ⊗ Gaussian size: a Voigt, as its TCH pseudo-Voigt
                hv, ev = _tch(hs, hi_)
                prof = _gauss2(dx2, torch.sqrt(hi_**2 + hs**2), 1 - e) + _pv(dx2, hv, ev, e)
            else:
                # sinc or sinc² size kernel ⊗ instrument pseudo-Voigt: approximate the kernel by a
                # Gaussian of the same FWHM and combine widths in quadrature (Gaussian part)
                # and linearly (Lorentzian part).
                hg = torch.sqrt(hi_**2 + hs**2)
                prof = _gauss2(dx2, hg, 1 - e) + _lorentz2(dx2, hi_ + hs, e)
        vals = prof * inten[sel][:, None] * valid
        flat = (c[sel][:, None] * M + gi).reshape(-1)
        out.index_add_(0, flat, vals.reshape(-1).to(out.dtype))
        start = end


# ---------------------------------------------------------------------------
# full pattern


def _q_of_2theta(tt_deg: float, lam: float) -> float:
    return _FOUR_PI * math.sin(math.radians(min(tt_deg, 179.999) / 2)) / lam


def _pattern_reflections(batch: CrystalBatch, x: torch.Tensor, *, x_kind, wavelength, size_nm, zero_deg, radiation,
                         lorentz_polarization, q_max, table, march_dollase, po_hkl) -> Reflections:
    """The peak list :func:`xrd_pattern` profiles: reflections over the grid's Q range (plus a margin for
    the tails of size-broadened peaks), weighted by preferred orientation."""
    _check_grid(x, "x")
    if x_kind not in ("2theta", "q"):
        raise ValueError(f"x_kind: must be '2theta' or 'q', got {x_kind!r}")
    if size_nm is not None:
        st = torch.as_tensor(size_nm).detach()
        if bool((st <= 0).any()):
            raise ValueError(f"size_nm: crystallite size must be positive, got {size_nm}")
    lam = float(wavelength)
    if not lam > 0:
        raise ValueError(f"wavelength: must be positive, got {wavelength}")
    if q_max is None:
        if x_kind == "2theta":
            zmin = float(torch.as_tensor(zero_deg).detach().min())
            qm = _q_of_2theta(float(x[-1]) - min(zmin, 0.0) + 1.0, lam)
            q_lo = _q_of_2theta(max(float(x[0]) - abs(zmin) - 1.0, 0.0), lam)
        else:
            qm = float(x[-1]) + 0.05
            q_lo = max(float(x[0]) - 0.05, 0.0)
        # per-crystal margin for the tails of size-broadened peaks (so a crystal's
        # pattern does not depend on the other crystals of the batch)
        B = batch.num_crystals
        if size_nm is not None:
            st = _as_param(size_nm, B, torch.float64, "cpu", "size_nm").detach()
            margin = 3.0 * _TWO_PI / (10.0 * st)
        else:
            margin = torch.zeros(B, dtype=torch.float64)
        q_cap = _FOUR_PI / lam * (1 - 1e-9)
        q_max = (qm + margin).clamp(max=q_cap) if (lorentz_polarization or x_kind == "2theta") else qm + margin
        q_min = (q_lo - margin).clamp(min=0.0)
        q_max = q_max.to(dtype=batch.dtype, device=batch.device)
        q_min = q_min.to(dtype=batch.dtype, device=batch.device)
    else:
        q_min = 0.0
    use_po = not _is_one(march_dollase)
    # preferred orientation weights each reciprocal-lattice point by its own angle: no merging
    refl = reflections(batch, q_max, q_min=q_min, radiation=radiation, table=table,
                       **({"merge": False} if use_po else {}))
    if use_po:
        refl = _march_dollase(refl, batch, march_dollase, po_hkl)
        if not (torch.is_grad_enabled() and (batch.lattice.requires_grad or batch.frac.requires_grad)):
            refl = _merge(refl)  # weighted: equivalents can now be summed into one peak
    return refl


def xrd_pattern(
    batch: CrystalBatch,
    x,
    *,
    x_kind: str = "2theta",
    wavelength: float = 1.540598,
    wavelength2: float | None = None,
    ka2_ratio: float = 0.5,
    size_nm=None,
    shape_factor: float = 0.9,
    size_kernel: str = "scherrer",
    U=0.0,
    V=0.0,
    W=0.0,
    eta=0.5,
    zero_deg=0.0,
    background: torch.Tensor | None = None,
    scale=1.0,
    radiation: str = "xray",
    lorentz_polarization: bool = True,
    monochromator_2theta_deg: float | None = None,
    q_max: float | None = None,
    table: str = "wk",
    peak_window: float = 20.0,
    method: str = "auto",
    peak_shape: str = "pv",
    X=0.0,
    Y=0.0,
    axial_deg=0.0,
    displacement_deg=0.0,
    march_dollase=1.0,
    po_hkl: Sequence[int] = (0, 0, 1),
) -> torch.Tensor:
    """Powder diffraction patterns of a batch of crystals on a common grid.

    Differentiable w.r.t. ``batch.lattice``, ``batch.frac``, ``batch.uiso`` and
    every float/tensor parameter.  See the module docstring for conventions and
    :func:`xrd_profile` for the parameters.

    Parameters
    ----------
    batch : CrystalBatch
    x : array-like, shape (M,)
        2θ in degrees or Q in Å⁻¹, strictly increasing.
    q_max : float, optional
        Largest Q (Å⁻¹) of the enumerated reflections; default: the grid end
        plus a margin for the tails of broad peaks.
    table : {"wk", "pymatgen"}
        X-ray form-factor table.
    method : {"auto", "window", "fft"}
        Profile evaluation (see :func:`xrd_profile`).
    peak_shape, X, Y, axial_deg, displacement_deg
        Thompson–Cox–Hastings profile, axial asymmetry and specimen displacement
        (see :func:`xrd_profile`).
    march_dollase : float or (B,) tensor
        March–Dollase preferred-orientation ratio r (1: random powder): every
        reciprocal-lattice point is weighted by
        ``(r² cos²α + sin²α / r)^(−3/2)``, α its angle to the normal of the
        ``po_hkl`` planes (Dollase, J. Appl. Cryst. 19, 267 (1986)); summed over
        the symmetry equivalents this is the multiplicity-averaged correction.
    po_hkl : (h, k, l)
        Miller indices of the preferred-orientation planes.

    Returns
    -------
    torch.Tensor, shape (B, M)
    """
    _check_batch(batch)
    x = torch.as_tensor(x, dtype=batch.dtype, device=batch.device)
    refl = _pattern_reflections(batch, x, x_kind=x_kind, wavelength=wavelength, size_nm=size_nm, zero_deg=zero_deg,
                                radiation=radiation, lorentz_polarization=lorentz_polarization, q_max=q_max,
                                table=table, march_dollase=march_dollase, po_hkl=po_hkl)
    return xrd_profile(
        refl, x, x_kind=x_kind, wavelength=wavelength, wavelength2=wavelength2, ka2_ratio=ka2_ratio,
        size_nm=size_nm, shape_factor=shape_factor, size_kernel=size_kernel, U=U, V=V, W=W, eta=eta,
        zero_deg=zero_deg, background=background, scale=scale, lorentz_polarization=lorentz_polarization,
        monochromator_2theta_deg=monochromator_2theta_deg, peak_window=peak_window, method=method,
        peak_shape=peak_shape, X=X, Y=Y, axial_deg=axial_deg, displacement_deg=displacement_deg,
    )


#: Largest profile matrix (reflections x grid points) :func:`xrd_pattern_fixed_peaks` builds: 2**24
#: float64 values, 128 MiB (a triclinic 20-atom cell to 0.7 Å on a 5,000-point scan needs ~1e7);
#: beyond it the patterns are computed as :func:`xrd_pattern` does.
FIXED_PEAKS_MAX_ELEMENTS = 1 << 24

# Profile terms that must be one number for the whole batch of xrd_pattern_fixed_peaks (scale may vary).
_PEAK_TERMS = ("size_nm", "U", "V", "W", "eta", "X", "Y", "zero_deg", "axial_deg", "displacement_deg",
               "march_dollase")
# xrd_pattern's arguments that choose the peak list rather than shape the profile.
_REFLECTION_ARGS = ("radiation", "q_max", "table", "march_dollase", "po_hkl")


def xrd_pattern_fixed_peaks(batch: CrystalBatch, x, *, scale=1.0, **kwargs) -> torch.Tensor:
    """Patterns of crystals whose peaks lie at the same places with the same shapes, as a matrix product.

    The crystals share one lattice and every profile term; they differ only in what sets the
    peak intensities (fractional coordinates, Uiso, occupancies, elements) and in ``scale``.
    Each reflection's profile on the grid (Kα2, asymmetry, Lorentz-polarisation included) is
    then computed once, at unit intensity, as a (R, M) matrix P, and the patterns are
    ``scale · |F|² @ P``.  A finite-difference Jacobian's coordinate, ADP and scale columns are
    such a batch: each costs a structure-factor sum and a row of a matrix product instead of a
    profile evaluation (RuBi2's triclinic candidates: ~45 of ~60 columns).

    Equals :func:`xrd_pattern` (same arguments) up to rounding.  Only the window method gains:
    where :func:`xrd_pattern` would use the FFT path (``method="fft"``, or ``"auto"`` with a
    size), and where P would exceed :data:`FIXED_PEAKS_MAX_ELEMENTS`, the patterns are computed
    by :func:`xrd_pattern` itself.

    Parameters
    ----------
    batch : CrystalBatch
        Crystals with identical lattices (no autograd on the lattice).
    x : array-like, shape (M,)
    scale : float or (B,) tensor
    **kwargs
        Keyword arguments of :func:`xrd_pattern`; the profile terms (size_nm, U, V, W, eta, X,
        Y, zero_deg, axial_deg, displacement_deg, march_dollase) as single numbers.

    Returns
    -------
    torch.Tensor, shape (B, M)

    Raises
    ------
    ValueError
        Crystals with different lattices, or a profile term with one value per crystal.
    """
    _check_batch(batch)
    B = batch.num_crystals
    lat = batch.lattice
    if _tracked(lat):
        raise ValueError("batch: the lattice must not carry derivatives (use xrd_pattern)")
    if not bool((lat == lat[:1]).all()):
        raise ValueError("batch: the crystals must share one lattice (use xrd_pattern)")
    for key in _PEAK_TERMS:
        v = kwargs.get(key)
        if v is not None and torch.as_tensor(v).numel() > 1:
            raise ValueError(f"{key}: must be one number for the whole batch, got {torch.as_tensor(v).numel()}")
    x = torch.as_tensor(x, dtype=batch.dtype, device=batch.device).contiguous()  # checked by either path below
    M = x.numel()
    method = kwargs.get("method", "auto")
    if method == "fft" or (method == "auto" and kwargs.get("size_nm") is not None and M > 1):
        return xrd_pattern(batch, x, scale=scale, **kwargs)
    defaults = {k: v.default for k, v in inspect.signature(xrd_pattern).parameters.items()
                if v.default is not inspect.Parameter.empty}
    ref_kw = {k: kwargs.get(k, defaults[k]) for k in _REFLECTION_ARGS}
    ref_kw.update({k: kwargs.get(k, defaults[k]) for k in ("x_kind", "wavelength", "size_nm", "zero_deg",
                                                            "lorentz_polarization")})
    refl = _pattern_reflections(batch, x, **ref_kw)
    counts = torch.bincount(refl.crystal, minlength=B)
    R0 = int(counts[0])
    if R0 * M > FIXED_PEAKS_MAX_ELEMENTS:
        return xrd_pattern(batch, x, scale=scale, **kwargs)
    order = torch.argsort(refl.crystal, stable=True)
    q = refl.q[order].view(B, R0) if bool((counts == R0).all()) else None
    if q is None or not torch.equal(q, q[:1].expand(B, R0)):  # one lattice gives one peak list
        raise RuntimeError("xrd_pattern_fixed_peaks: crystals of one lattice gave different peak lists")
    unit = Reflections(q[0], torch.ones_like(q[0]), torch.arange(R0, device=q.device), R0)
    prof_kw = {k: v for k, v in kwargs.items() if k not in _REFLECTION_ARGS and k != "background"}
    P = xrd_profile(unit, x, scale=1.0, background=None, **prof_kw)  # (R0, M): each peak at unit |F|²
    y = (refl.intensity[order].view(B, R0) @ P) * _as_param(scale, B, P.dtype, P.device, "scale")[:, None]
    background = kwargs.get("background")
    return y if background is None else _add_background(y, x, background)


#: Scalar parameters of :func:`xrd_pattern` that :func:`xrd_pattern_jvp` differentiates.
JVP_PARAMETERS = ("scale", "size_nm", "U", "V", "W", "eta", "X", "Y", "zero_deg", "axial_deg", "displacement_deg",
                  "march_dollase")


def xrd_pattern_jvp(batch: CrystalBatch, x, tangents: dict[str, torch.Tensor], **kwargs
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pattern of one crystal and its exact derivatives along D directions (forward-mode AD).

    The crystal is repeated D times in one batch; copy d carries the forward-mode tangent of
    direction d (:mod:`torch.autograd.forward_ad`), so one batched pass gives every directional
    derivative of the same forward model as :func:`xrd_pattern` (reflections, Lorentz-polarisation,
    Kα2, profile, size kernel, asymmetry, preferred orientation), without finite-difference steps.
    Reflection positions, work grids and windows are chosen from the primal values (so the
    derivative is that of the model at fixed choices, as central differences see it between
    two such choices).

    Parameters
    ----------
    batch : CrystalBatch
        One crystal, float64.
    x : array-like, shape (M,)
        Grid, as for :func:`xrd_pattern`.
    tangents : dict
        Directions, each with a leading dimension D: ``"lattice"`` (D, 3, 3) of the lattice rows
        (Å), ``"frac"`` (D, N, 3), ``"uiso"`` (D, N) in Å², and (D,) for any of
        :data:`JVP_PARAMETERS` given as a number in ``kwargs`` (or at its default).  Missing
        keys do not move.
    **kwargs
        Keyword arguments of :func:`xrd_pattern` (scalars).

    Returns
    -------
    y : torch.Tensor, shape (M,)
        The pattern, equal to ``xrd_pattern(batch, x, **kwargs)[0]`` up to rounding.
    dy : torch.Tensor, shape (D, M)
        Its derivatives along the D directions.
    """
    _check_batch(batch)
    if batch.num_crystals != 1:
        raise ValueError(f"batch: need one crystal, got {batch.num_crystals}")
    unknown = set(tangents) - {"lattice", "frac", "uiso", *JVP_PARAMETERS}
    if unknown:
        raise ValueError(f"tangents: cannot differentiate {sorted(unknown)}")
    sizes = {int(torch.as_tensor(t).shape[0]) for t in tangents.values()}
    if len(sizes) > 1:
        raise ValueError(f"tangents: need one leading dimension D, got {sorted(sizes)}")
    D = sizes.pop() if sizes else 0
    if D == 0:
        with torch.no_grad():
            y = xrd_pattern(batch, x, **kwargs)[0]
        return y, y.new_zeros(0, y.shape[-1])
    if "size_nm" in tangents and kwargs.get("size_nm") is None:
        raise ValueError("tangents: size_nm moves but the pattern has no size broadening (size_nm=None)")
    dtype, device = batch.dtype, batch.device
    n = batch.frac.shape[0]

    def tan(key, shape):
        t = tangents.get(key)
        if t is None:
            return torch.zeros(shape, dtype=dtype, device=device)
        return torch.as_tensor(t, dtype=dtype, device=device).reshape(shape)

    defaults = {k: v.default for k, v in inspect.signature(xrd_pattern).parameters.items() if k in JVP_PARAMETERS}
    with torch.no_grad(), fwad.dual_level():
        rep = CrystalBatch(
            fwad.make_dual(batch.lattice.expand(D, 3, 3).contiguous(), tan("lattice", (D, 3, 3))),
            fwad.make_dual(batch.frac.repeat(D, 1), tan("frac", (D * n, 3))),
            batch.numbers.repeat(D),
            torch.arange(D, device=device).repeat_interleave(n),
            batch.occupancy.repeat(D),
            fwad.make_dual(batch.uiso.repeat(D), tan("uiso", (D * n,))),
        )
        kw = dict(kwargs)
        for key in JVP_PARAMETERS:
            if key in tangents:
                value = float(kw.get(key, defaults[key]))
                kw[key] = fwad.make_dual(torch.full((D,), value, dtype=dtype, device=device), tan(key, (D,)))
        out = fwad.unpack_dual(xrd_pattern(rep, x, **kw))
    dy = out.tangent if out.tangent is not None else torch.zeros_like(out.primal)
    return out.primal[0], dy


def _window_terms(kind: str, hi, hs, eta, kernel: str, min_fwhm: float):
    """The peak profile of :func:`_add_peaks` as Gaussian and Lorentzian terms ``(kind, fwhm, weight)``
    (``kind`` "g" or "l", arrays of the peaks' FWHM and weight), and the window half-width unit; None
    for a sinc size kernel alone."""
    if hs is None:
        h = torch.full_like(eta, min_fwhm) if kind == "none" else hi
        return [("g", h, 1 - eta), ("l", h, eta)], h
    if kind == "none":
        if kernel in ("scherrer", "gauss"):
            return [("l" if kernel == "scherrer" else "g", hs, torch.ones_like(hs))], hs
        return None
    if kernel == "scherrer":
        hv, ev = _tch(hi, hs)
        return [("g", hv, (1 - eta) * (1 - ev)), ("l", hv, (1 - eta) * ev), ("l", hi + hs, eta)], hi + hs
    if kernel == "gauss":
        hv, ev = _tch(hs, hi)
        return [("g", torch.sqrt(hi * hi + hs * hs), 1 - eta), ("g", hv, eta * (1 - ev)), ("l", hv, eta * ev)], hi + hs
    return [("g", torch.sqrt(hi * hi + hs * hs), 1 - eta), ("l", hi + hs, eta)], hi + hs


#: Window values per block of :func:`xrd_pattern_window_jvp` (peaks x window points).
_WINDOW_BLOCK = 1 << 16


#: Peaks whose intensity stays below this fraction of the strongest in every state need not match between
#: the states of :func:`xrd_pattern_window_jvp`: float64 rounding of a |F|² that symmetry makes zero is
#: ~1e-31 of a typical one, far below it, and such peaks add nothing to the pattern or its derivatives.
_NEGLIGIBLE_INTENSITY = 1e-12


def xrd_pattern_window_jvp(batch: CrystalBatch, x, weights, **kwargs) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Pattern of one state and its derivatives along D directions, for window-method profiles.

    What each peak's profile is computed from (position, intensity, Gaussian and Lorentzian FWHMs
    and weights, in grid units) is a smooth function of the state, cheap per peak: its derivatives
    are differences between moved states (central, or one-sided second order at a bound, where
    the model may clamp a width: weights[d] say how).  The profiles themselves, the
    expensive part, are differentiated analytically on the windows of the unmoved state
    (∂/∂position and ∂/∂FWHM of the Gaussian and Lorentzian kernels of :func:`_add_peaks`), so
    all D columns cost one pass over the windows with 3 kernels per term instead of one profile
    evaluation per direction; no forward-mode AD.  The derivative is that of the model at the
    unmoved state's windows, as :func:`xrd_pattern_jvp` gives; the per-peak differences add a
    relative error of order (step)² (second-order differences of smooth functions).

    Parameters
    ----------
    batch : CrystalBatch
        1 + 2D crystals, float64: the state, then D moved states A_d, then D moved states B_d.
    x : array-like, shape (M,)
        Grid, as for :func:`xrd_pattern`.
    weights : array-like, shape (D, 3)
        The derivative of a per-peak quantity Z along direction d is
        ``weights[d] · (Z(state), Z(A_d), Z(B_d))``: for central differences with A_d, B_d the
        state moved by ±h, (0, 1/2h, −1/2h); one-sided with A_d, B_d at +h, +2h,
        (−3/2h, 4/2h, −1/2h).
    **kwargs
        Keyword arguments of :func:`xrd_pattern`; each profile term a number or a (1 + 2D,) tensor
        (its value in each crystal).

    Returns
    -------
    (y, dy) or None
        y (M,) the state's pattern, dy (D, M) its derivatives; None where this does not apply:
        an FFT profile, a sinc size kernel alone, or moved states whose peak lists do not
        correspond to the state's (a reflection enters or leaves the range, an accidental
        overlap splits, an axial sub-peak appears, a peak's intensity turns zero).
    """
    _check_batch(batch)
    dtype, device = batch.dtype, batch.device
    weights = torch.as_tensor(weights, dtype=dtype, device=device).reshape(-1, 3)
    D, S = weights.shape[0], batch.num_crystals
    if S != 1 + 2 * D:
        raise ValueError(f"batch: need 1 + 2·{D} crystals, got {S}")
    x = torch.as_tensor(x, dtype=dtype, device=device).contiguous()
    M = x.numel()
    method = kwargs.get("method", "auto")
    if method == "fft" or (method == "auto" and kwargs.get("size_nm") is not None and M > 1):
        return None
    defaults = {k: v.default for k, v in inspect.signature(xrd_pattern).parameters.items()
                if v.default is not inspect.Parameter.empty}
    ref_kw = {k: kwargs.get(k, defaults[k]) for k in (*_REFLECTION_ARGS, "x_kind", "wavelength", "size_nm",
                                                      "zero_deg", "lorentz_polarization")}
    refl = _pattern_reflections(batch, x, **ref_kw)
    counts = torch.bincount(refl.crystal, minlength=S)
    R = int(counts[0])
    if not bool((counts == R).all()):
        return None
    order = torch.argsort(refl.crystal, stable=True)
    for ids in (refl.hkl, refl.multiplicity):
        if ids is not None:
            ids = ids[order].reshape(S, R, -1)
            if not torch.equal(ids, ids[:1].expand_as(ids)):
                return None
    record: list = []
    prof_kw = {k: v for k, v in kwargs.items() if k not in _REFLECTION_ARGS and k != "background"}
    xrd_profile(refl, x, background=None, record=record, **prof_kw)
    kernel = kwargs.get("size_kernel", defaults["size_kernel"])
    window = float(kwargs.get("peak_window", defaults["peak_window"]))
    y = x.new_zeros(M)
    dy = x.new_zeros(D, M)

    def per_state(t):
        return t[order].view(S, R)

    def diff(t):  # (S, ·) -> (D, ·): the differences of ``weights``
        return weights[:, :1] * t[:1] + weights[:, 1:2] * t[1 : 1 + D] + weights[:, 2:] * t[1 + D :]

    for pos, inten, h_inst, h_size, eta, no_inst, min_fwhm in record:
        pos, inten, eta, hi = per_state(pos), per_state(inten), per_state(eta), per_state(h_inst)
        hs = None if h_size is None else per_state(h_size)
        out = _window_terms("none" if no_inst else "inst", hi, hs, eta, kernel, min_fwhm)
        if out is None:
            return None
        terms, width = out
        wd = width[0].clamp_min(1e-12)
        lo = torch.searchsorted(x, (pos[0] - window * wd).contiguous())
        n = (torch.searchsorted(x, (pos[0] + window * wd).contiguous(), right=True) - lo).clamp_min(0)
        # a zero intensity marks a peak not drawn (an axial sub-peak folded into one): the states must agree,
        # except on peaks negligible in every state (a systematically absent reflection's |F|² is rounding,
        # ~1e-31 in one state and exactly 0 in another)
        nz = inten != 0
        chk = (n > 0) & (inten.abs().amax(0) > _NEGLIGIBLE_INTENSITY * inten.abs().max())
        if not bool((nz[:, chk] == nz[:1, chk]).all()):
            return None
        keep = torch.nonzero((n > 0) & nz[0]).squeeze(-1)
        if keep.numel() == 0:
            continue
        keep = keep[torch.argsort(n[keep])]  # blocks of similar window lengths
        i0, d_i, d_pos = inten[0], diff(inten), diff(pos)
        tv = [(kind, h[0], w[0], diff(h), diff(w)) for kind, h, w in terms]
        n_k = n[keep].tolist()
        start = 0
        while start < len(keep):
            end = start + 1
            while end < len(keep) and (end + 1 - start) * n_k[end] <= _WINDOW_BLOCK:
                end += 1
            sel = keep[start:end]
            L = n_k[end - 1]
            start = end
            gi = lo[sel, None] + torch.arange(L, device=device)
            valid = (gi < (lo[sel] + n[sel])[:, None]).to(dtype)
            gi = gi.clamp_max(M - 1)
            dx = x[gi] - pos[0, sel, None]
            dx2 = dx * dx
            kern, coef = [], []
            val = torch.zeros_like(dx)
            for kind, h0, w0, dh, dw in tv:
                h = h0[sel, None]
                iw = i0[sel] * w0[sel]
                if kind == "g":
                    f = torch.exp(dx2 * (-_G_EXP / (h * h))) * (_G_NORM / h)
                    f_pos = f * dx * (2 * _G_EXP / (h * h))  # ∂f/∂position
                    f_h = f * (dx2 * (2 * _G_EXP) / (h * h * h) - 1 / h)  # ∂f/∂FWHM
                else:
                    q = 1 / (1 + dx2 * (4 / (h * h)))
                    f = q * (_L_NORM / h)
                    f_pos = f * q * dx * (8 / (h * h))
                    f_h = f * (q * dx2 * (8 / (h * h * h)) - 1 / h)
                val += iw[:, None] * f
                kern += [f, f_pos, f_h]
                coef += [d_i[:, sel] * w0[sel] + i0[sel] * dw[:, sel], iw * d_pos[:, sel], iw * dh[:, sel]]
            K = torch.stack(kern, 1) * valid[:, None]  # (peaks, kernels, L)
            C = torch.stack(coef, 2).transpose(0, 1)  # (peaks, D, kernels)
            idx = gi.reshape(-1)
            y.index_add_(0, idx, (val * valid).reshape(-1))
            dy.index_add_(1, idx, torch.bmm(C, K).transpose(0, 1).reshape(D, -1))
    return y, dy


def march_dollase_factor(cos_alpha: torch.Tensor, r) -> torch.Tensor:
    """March–Dollase preferred-orientation weight ``(r² cos²α + sin²α / r)^(−3/2)``.

    Parameters
    ----------
    cos_alpha : torch.Tensor
        Cosine of the angle between a scattering vector and the preferred-orientation axis.
    r : float or torch.Tensor
        March–Dollase ratio (r < 1: platelets with the axis along the diffraction
        vector, r > 1: needles); r = 1 gives 1.  Its average over all orientations is 1.
    """
    r = torch.as_tensor(r, dtype=cos_alpha.dtype, device=cos_alpha.device)
    c2 = cos_alpha * cos_alpha
    return (r * r * c2 + (1 - c2) / r) ** -1.5


def _march_dollase(refl: Reflections, batch: CrystalBatch, r, po_hkl) -> Reflections:
    """``refl`` (unmerged) with every point's intensity times the March–Dollase weight."""
    B = refl.num_crystals
    r_t = _as_param(r, B, refl.q.dtype, refl.q.device, "march_dollase")
    if bool((r_t.detach() <= 0).any()):
        raise ValueError(f"march_dollase: ratio must be positive, got {r}")
    ph = torch.as_tensor([float(v) for v in po_hkl], dtype=batch.dtype, device=batch.device)
    if ph.numel() != 3 or not bool(ph.abs().sum() > 0):
        raise ValueError(f"po_hkl: need three Miller indices, not all zero, got {po_hkl}")
    recip = torch.linalg.inv(batch.lattice).transpose(-1, -2)  # rows: reciprocal vectors (1/Å)
    g = torch.einsum("ri,rij->rj", refl.hkl.to(batch.dtype), recip.index_select(0, refl.crystal))
    gp = torch.einsum("i,bij->bj", ph, recip).index_select(0, refl.crystal)
    cos_a = (g * gp).sum(-1) / (g.norm(dim=-1) * gp.norm(dim=-1)).clamp_min(1e-30)
    w = march_dollase_factor(cos_a.clamp(-1.0, 1.0), r_t.index_select(0, refl.crystal))
    return Reflections(refl.q, refl.intensity * w, refl.crystal, B, refl.hkl, refl.multiplicity)


def xrd_peaks(
    batch: CrystalBatch,
    wavelength: float = 1.540598,
    two_theta_range: tuple[float, float] = (0, 90),
    *,
    table: str = "wk",
    radiation: str = "xray",
    debye_waller: bool = False,
    scaled: bool = True,
) -> list[dict]:
    """Stick patterns in the conventions of pymatgen's ``XRDCalculator.get_pattern``.

    Reflections whose 2θ agree within 1e-5° are merged (pymatgen's
    ``TWO_THETA_TOL`` binning), intensities include pymatgen's
    Lorentz-polarisation factor, are scaled to 100 for the strongest peak
    (``scaled=True``), and peaks below 1e-3 % are dropped.  Use
    ``table="pymatgen"`` for pymatgen's form factors.

    Returns
    -------
    list of dict
        Per crystal: ``two_theta`` (degrees), ``intensity``, ``d_hkl`` (Å),
        ``hkls`` (list of lists of (h, k, l) tuples, one Friedel-half
        representative per merged reciprocal-lattice point) as numpy/lists.
    """
    _check_batch(batch)
    lam = float(wavelength)
    if not lam > 0:
        raise ValueError(f"wavelength: must be positive, got {wavelength}")
    t0, t1 = float(two_theta_range[0]), float(two_theta_range[1])
    if not (0 <= t0 < t1 <= 180):
        raise ValueError(f"two_theta_range: need 0 <= min < max <= 180, got {two_theta_range}")
    q_min = 2 * math.sin(math.radians(t0 / 2)) / lam * _TWO_PI
    q_max = 2 * math.sin(math.radians(t1 / 2)) / lam * _TWO_PI
    b64 = batch.to(dtype=torch.float64)
    with torch.no_grad():
        refl = reflections(
            b64, q_max, q_min=q_min, radiation=radiation, table=table, debye_waller=debye_waller, merge=False
        )
    q = refl.q.cpu().numpy()
    inten = refl.intensity.cpu().numpy()
    cr = refl.crystal.cpu().numpy()
    hkl = refl.hkl.cpu().numpy()
    theta = np.arcsin(np.clip(lam * q / _FOUR_PI, -1, 1))
    inten = inten * lorentz_polarization(torch.from_numpy(theta)).numpy()
    tt = np.degrees(2 * theta)
    tol = 1e-5
    results = []
    for b in range(batch.num_crystals):
        m = cr == b
        tb, ib, qb, hb = tt[m], inten[m], q[m], hkl[m]
        keys = np.round(tb / tol).astype(np.int64)
        uk, inv = np.unique(keys, return_inverse=True)
        isum = np.bincount(inv, weights=ib, minlength=len(uk))
        # position/d of the first (lowest-Q then largest hkl, as pymatgen) member
        order = np.lexsort((-hb[:, 2], -hb[:, 1], -hb[:, 0], qb))
        first = np.full(len(uk), -1)
        for j in order[::-1]:
            first[inv[j]] = j
        two_theta = tb[first]
        d = _TWO_PI / qb[first]
        groups: list[list] = [[] for _ in range(len(uk))]
        for j in order:
            groups[inv[j]].append(tuple(int(v) for v in hb[j]))
        if len(isum) == 0:
            results.append({"two_theta": np.zeros(0), "intensity": np.zeros(0), "d_hkl": np.zeros(0), "hkls": []})
            continue
        imax = isum.max()
        keep = isum / imax * 100 > 1e-3
        y = isum[keep] * (100.0 / imax if scaled else 1.0)
        results.append(
            {
                "two_theta": two_theta[keep],
                "intensity": y,
                "d_hkl": d[keep],
                "hkls": [g for g, k in zip(groups, keep) if k],
            }
        )
    return results
