"""Pair distribution function G(r) of periodic crystals, batched and differentiable.

Conventions follow PDFfit2 / PDFgui (Farrow et al., J. Phys.: Condens. Matter
19 (2007) 335219) so that parameters mean the same numbers there and here:

.. math::

    G(r) = \\frac{1}{N r} \\sum_{i,j} \\frac{b_i b_j}{\\langle b\\rangle^2}
           \\frac{o_i o_j}{\\sqrt{2\\pi}\\sigma_{ij}}
           e^{-(r-r_{ij})^2 / 2\\sigma_{ij}^2} - 4\\pi r \\rho_0

with ``σ_ij = σ'_ij sqrt(1 − δ1/r_ij − δ2/r_ij² + Qbroad² r_ij²)``,
``σ'_ij² = Uiso_i + Uiso_j``, ``N = Σ o_i``, ``ρ0 = N/V``, weights ``b`` = Z
(X-ray) or b_c (neutron), ``<b> = Σ o_i b_i / N``.  The result is multiplied by
``exp(−(Qdamp r)²/2)``, by the spherical-particle envelope of diameter
``spdiameter`` (Å), by ``scale``, and finally band-limited to ``qmax`` with
pdffit2's FFT cut-off on a range extended by 6 sinc ripples (r grid must be
uniform then).  Pairs with σ' = 0 (Uiso = 0) are skipped, as in pdffit2.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .crystal import CrystalBatch
from .scattering import forward_weight
from .xrd import _as_param, _check_batch, _check_grid


def band_limit(g: np.ndarray, dr: float, qmax: float) -> np.ndarray:
    """Band-limit ``g`` (on ``r = 0, dr, 2dr, ...``) to ``|Q| < qmax``, as the sine transform of a measured F(Q).

    ``g`` is extended to an odd function of period ``2·len(g)·dr`` (G(r) is odd in r); its
    Fourier components above ``qmax`` are zeroed.  This is the convolution with
    ``sin(qmax r)/(π r)``: the termination ripples of a PDF transformed from F(Q) on
    ``[0, qmax]``.  ``g`` must have decayed to ~0 at the end of its grid.

    Parameters
    ----------
    g : numpy.ndarray, shape (M,)
        Values on a uniform grid starting at r = 0 (Å).
    dr : float
        Grid step, Å.
    qmax : float
        Band limit, Å⁻¹.

    Returns
    -------
    numpy.ndarray, shape (M,)
    """
    n = len(g)
    odd = np.concatenate([g, [0.0], -g[:0:-1]])  # period 2n: g(r), then -g(2n·dr - r)
    spec = np.fft.rfft(odd)
    q = 2 * math.pi * np.fft.rfftfreq(len(odd), d=dr)
    spec[q >= qmax] = 0.0
    return np.fft.irfft(spec, n=len(odd))[:n]


def sphere_envelope(r: torch.Tensor, diameter) -> torch.Tensor:
    """Characteristic function of a sphere of diameter ``diameter`` (Å): PDF envelope γ0(r)."""
    x = r / diameter
    env = 1 - 1.5 * x + 0.5 * x**3
    return torch.where(x < 1, env, torch.zeros_like(env))


def _pair_columns(frac, lattice, r_hi: float, r_lo: float = 0.0) -> dict:
    """The (atom pair, n0, n1) columns of one crystal that reach |x_j + n - x_i| <= r_hi (no autograd).

    Atom pairs are i <= j (``iu``, ``ju``); with u = x_j − x_i (fractional) and
    v = u + n, |v|² is a quadratic form in v.  The ranges are solved level by
    level, as :func:`.xrd._enumerate_hkl` does for reciprocal-lattice points:
    n0 from the sphere's extent r_hi |a*|, n1 from the ellipse that the sphere
    projects onto (v0, v1), n2 from ``a s² + d2min <= r_hi²`` with
    s = v2 − v2*(v0, v1) (the offset from the point of the column closest to
    the origin).  So only translations inside the sphere are generated.  For
    i == j only one of n, −n is kept (lexicographically positive n).  Arrays
    are 1-D: torch's small inner dimensions ((P, 3) @ (3, 3), sums over 3) are
    slow.  ``near`` tells whether some column comes closer than ``r_lo``.
    """
    device = lattice.device
    f64 = torch.float64
    R2 = r_hi * r_hi
    with torch.no_grad():
        lat = lattice.detach().to(f64)
        f = frac.detach().to(f64)
        f = f - torch.floor(f)
        n_at = f.shape[0]
        g = (lat @ lat.T).tolist()  # metric tensor, Å²
        a = g[2][2]
        # (v0, v1) form once v2 is at its best: Schur complement of g22
        h00 = g[0][0] - g[0][2] ** 2 / a
        h01 = g[0][1] - g[0][2] * g[1][2] / a
        h11 = g[1][1] - g[1][2] ** 2 / a
        ext0 = r_hi * math.sqrt(h11 / (h00 * h11 - h01 * h01))  # = r_hi |a*|
        iu, ju = torch.triu_indices(n_at, n_at, device=device)
        u0, u1, u2 = (f[ju] - f[iu]).T.contiguous()  # in (-1, 1)
        same = iu == ju
        # level 1: (pair, n0)
        n0lo = torch.ceil(-u0 - ext0).long()
        n0lo = torch.where(same, n0lo.clamp_min(0), n0lo)  # i == j: n0 >= 0
        cnt0 = (torch.floor(-u0 + ext0).long() - n0lo + 1).clamp_min_(0)
        prow = torch.repeat_interleave(cnt0)
        c0 = torch.arange(len(prow), device=device) - (torch.cumsum(cnt0, 0) - cnt0 - n0lo).index_select(0, prow)
        v0 = u0.index_select(0, prow) + c0
        # level 2: n1 from h11 v1² + 2 h01 v0 v1 + h00 v0² <= r_hi²
        disc1 = ((h01 * h01 - h11 * h00) * v0 * v0 + h11 * R2).clamp_min_(0)
        sq1 = torch.sqrt(disc1)
        v1c = -h01 * v0 / h11
        uc1 = u1.index_select(0, prow)
        n1lo = torch.ceil(v1c - sq1 / h11 - uc1 - 1e-9).long()
        n1hi = torch.floor(v1c + sq1 / h11 - uc1 + 1e-9).long()
        n1lo = torch.where(same.index_select(0, prow) & (c0 == 0), n1lo.clamp_min(0), n1lo)  # i == j, n0 == 0
        cnt1 = (n1hi - n1lo + 1).clamp_min_(0)
        rep = torch.repeat_interleave(cnt1)
        c1 = torch.arange(len(rep), device=device) - (torch.cumsum(cnt1, 0) - cnt1 - n1lo).index_select(0, rep)
        c0, prow, v0 = c0.index_select(0, rep), prow.index_select(0, rep), v0.index_select(0, rep)
        v1 = u1.index_select(0, prow) + c1
        # level 3: |v|² = a s² + dmin2, s = v2 + (g02 v0 + g12 v1)/a
        shift = (g[0][2] * v0 + g[1][2] * v1) / a
        dmin2 = h00 * v0 * v0 + 2 * h01 * v0 * v1 + h11 * v1 * v1
        half = torch.sqrt((R2 - dmin2).clamp_min_(0) / a)
        uc2 = u2.index_select(0, prow)
        base = uc2 + shift  # s = base + n2
        n2lo = torch.ceil(-half - base - 1e-9).long()
        n2hi = torch.floor(half - base + 1e-9).long()
        origin = same.index_select(0, prow) & (c0 == 0) & (c1 == 0)
        n2lo = torch.where(origin, n2lo.clamp_min(1), n2lo)  # i == j, n0 == n1 == 0: n2 >= 1
        cnt = (n2hi - n2lo + 1).clamp_min_(0)
        near = bool((dmin2 < r_lo * r_lo).any()) if r_lo > 0 else False
    return dict(iu=iu, ju=ju, prow=prow, c0=c0, c1=c1, n2lo=n2lo, cnt=cnt, u2=uc2, base=base, dmin2=dmin2,
                a=a, near=near)


def _column_pairs(cols: dict, r_lo: float, cs: int = 0, ce: int | None = None):
    """Pairs of columns cs:ce: (column index (P,), n2 (P,), squared distance (P,), Å²).

    Pairs closer than r_lo are dropped (|x_j + n − x_i| <= r_hi holds by construction,
    to rounding).
    """
    cnt = cols["cnt"][cs:ce]
    device = cnt.device
    rep = torch.repeat_interleave(cnt)
    # n2 = n2lo + position in the column; s = base + n2
    first = (torch.cumsum(cnt, 0) - cnt - cols["n2lo"][cs:ce])
    n2 = torch.arange(len(rep), device=device) - first.index_select(0, rep)
    s = cols["base"][cs:ce].index_select(0, rep).add_(n2)
    d2 = s.square_().mul_(cols["a"]).add_(cols["dmin2"][cs:ce].index_select(0, rep))
    if cols["near"]:
        lo_ok = d2 >= r_lo * r_lo
        if not bool(lo_ok.all()):
            keep = torch.nonzero(lo_ok).squeeze(-1)
            rep, n2, d2 = rep.index_select(0, keep), n2.index_select(0, keep), d2.index_select(0, keep)
    return rep, n2, d2


def _pairs_one(frac, lattice, r_lo: float, r_hi: float, with_translations: bool = True):
    """Unique pairs (i <= j, n) of one crystal with r_lo <= |x_j + n - x_i| <= r_hi (no autograd).

    Each unordered pair is listed once: i < j with every translation n, and
    i == j with n in one half-space; the caller counts each pair twice.
    Returns the atom-pair rows (iu, ju) (P0,), the row of every pair (P,),
    integer translations n (P, 3) (a transposed view; None unless
    ``with_translations``) and the distances (float64, detached).  See
    :func:`_pair_columns`; the work is O(pairs found + columns).
    """
    with torch.no_grad():
        cols = _pair_columns(frac, lattice, r_hi, r_lo)
        rep, n2, d2 = _column_pairs(cols, r_lo)
        p_idx = cols["prow"].index_select(0, rep)
        trans = None
        if with_translations:
            trans = torch.stack([cols["c0"].index_select(0, rep), cols["c1"].index_select(0, rep), n2], 0).T
        dist = d2.sqrt_()
    return cols["iu"], cols["ju"], p_idx, trans, dist


def _pair_moments(cols: dict, r_lo: float, col_cls, col_amp, C: int, rmin: float, dr: float, k_lo: int, nbins: int):
    """Binned moments of the pairs of :func:`_pair_columns` without a pair list (no autograd).

    The pairs are generated and binned in blocks of about :data:`_BLOCK_PAIRS`
    (cache-sized arrays).  Bin k (``k_lo`` … ``k_lo + nbins − 1``) is the grid
    point ``rmin + k·dr``; returns (3, C·nbins): Σ amp, Σ amp·δ and Σ amp·δ²
    per (class, bin), δ the offset of the pair distance from the grid point.
    """
    cnt = cols["cnt"]
    dtype = col_amp.dtype
    m = torch.zeros(3, C * nbins, dtype=dtype, device=cnt.device)
    if len(cnt) == 0:
        return m
    cum = torch.cumsum(cnt, 0)
    total = int(cum[-1])
    marks = torch.tensor(list(range(_BLOCK_PAIRS, total, _BLOCK_PAIRS)), dtype=cum.dtype, device=cnt.device)
    cuts = torch.searchsorted(cum, marks).tolist()
    bounds = sorted(set([0] + [c + 1 for c in cuts] + [len(cnt)]))
    for cs, ce in zip(bounds[:-1], bounds[1:]):
        rep, _, d2 = _column_pairs(cols, r_lo, cs, ce)
        x = d2.sqrt_().sub_(rmin + k_lo * dr).div_(dr)  # grid units from bin 0
        k = torch.round(x)
        delta = x.sub_(k).mul_(dr).to(dtype)
        flat = k.long()
        if C > 1:
            flat.add_(col_cls[cs:ce].index_select(0, rep), alpha=nbins)
        w = col_amp[cs:ce].index_select(0, rep)
        m[0].index_add_(0, flat, w)
        m[1].index_add_(0, flat, w.mul_(delta))
        m[2].index_add_(0, flat, w.mul_(delta))
    return m


#: Pairs per block of :func:`_pair_moments`: its float64 arrays (256 kB) stay in cache.
_BLOCK_PAIRS = 1 << 16


def _qmax_cutoff(y: torch.Tensor, dr: float, qmax: float, qmin: float = 0.0) -> torch.Tensor:
    """pdffit2's band limit: zero-pad to a power of two ≥ 2·len, zero |Q| ≥ qmax, transform back.

    pdffit2 zeroes the full-spectrum bins [lo, padlen + 1 − lo) (and the mirrored
    bins below qmin): a mask symmetric under k -> padlen − k, so the real
    transform with bins ≥ lo zeroed gives the same result at half the cost.
    """
    n = y.shape[-1]
    padlen = 1 << int(math.ceil(math.log2(2 * n)))
    fy = torch.fft.rfft(y, n=padlen)  # zero-padded to padlen
    dq = 2 * math.pi / ((padlen - 1) * dr)
    lo = int(math.ceil(qmax / dq))
    mask = torch.ones(fy.shape[-1], dtype=y.dtype, device=y.device)
    mask[lo:] = 0
    if qmin > 0:
        lq = int(math.ceil(qmin / dq))
        if lq > 0:
            mask[:lq] = 0
    return torch.fft.irfft(fy * mask, n=padlen)[..., :n]


def _extended_grid(r: torch.Tensor, dr: float, qmax: float) -> tuple[torch.Tensor, float, float]:
    """The r grid (Å) the pair sum is computed on, and the pair-distance window (r_lo, r_hi) in Å.

    With a Qmax cut-off the grid runs 6 sinc ripples (6 · 2π/Qmax) past r[-1], as pdffit2 does,
    so the termination convolution near rmax sees the peaks beyond it; the first points are r itself.
    """
    rmin, M = float(r[0]), r.numel()
    if qmax > 0:
        ncmax = int(round((float(r[-1]) + 6 * 2 * math.pi / qmax - rmin) / dr))
        rc = rmin + dr * torch.arange(ncmax + 1, dtype=r.dtype, device=r.device)
        rc[:M] = r
    else:
        rc = r
    return rc, max(0.1, rmin - 1.0), float(rc[-1]) + 1.0


def pdf_gr(
    batch: CrystalBatch,
    r,
    *,
    qmax: float | None = None,
    qmin: float = 0.0,
    qdamp=0.0,
    qbroad=0.0,
    delta1=0.0,
    delta2=0.0,
    scale=1.0,
    spdiameter=None,
    radiation: str = "xray",
    method: str = "binned",
) -> torch.Tensor:
    """Reduced PDF G(r) in Å⁻² of each crystal (PDFfit2/PDFgui conventions).

    Parameters
    ----------
    batch : CrystalBatch
        Uiso (Å²) of every atom must be > 0 for its peaks to appear.  When
        ``batch.uij`` (Cartesian, Å²) is set, the anisotropic ADPs are used
        instead: σ'²_ij = r̂ᵀ(U_i + U_j)r̂ per pair (always the exact pair sum).
    r : array-like, shape (M,)
        Strictly increasing r grid, Å (uniform when ``qmax`` is set).
    qmax : float, optional
        Band limit in Å⁻¹ (None or 0: no termination ripples).
    qmin : float
        Low-Q cut-off in Å⁻¹ (applied in the same FFT filter; pdffit2 has none).
    qdamp, qbroad : float or (B,) tensor
        Instrumental damping and broadening, Å⁻¹.
    delta1, delta2 : float or (B,) tensor
        Correlated-motion peak sharpening, Å and Å².
    scale : float or (B,) tensor
    spdiameter : float or (B,) tensor, optional
        Diameter of spherical nanoparticles, Å (PDFgui's ``spdiameter``; None:
        bulk).
    radiation : {"xray", "neutron"}
        X-ray weights are Z (as pdffit2), neutron weights b_c.
    method : {"binned", "exact"}
        ``"exact"`` evaluates one Gaussian per atom pair, like pdffit2.
        ``"binned"`` (default, much faster) accumulates the pairs of each
        Uiso class on the r grid with their first moments (zeroth, first and
        second moment of the offset from the grid point) and evaluates the
        second-order Taylor expansion of the Gaussian, including the change
        of σ with r_ij; its relative error is ~(dr/2)³/(6σ³) (< 1e-5 for
        dr = 0.01 Å, σ > 0.03 Å).  Both are differentiable.

    Returns
    -------
    torch.Tensor, shape (B, M)
    """
    _check_batch(batch)
    dtype, device = batch.dtype, batch.device
    r = torch.as_tensor(r, dtype=dtype, device=device)
    _check_grid(r, "r")
    if float(r[0]) < 0:
        raise ValueError("r: grid must be non-negative")
    if radiation not in ("xray", "neutron"):
        raise ValueError(f"radiation: must be 'xray' or 'neutron', got {radiation!r}")
    B, M = batch.num_crystals, r.numel()
    qmax = float(qmax) if qmax else 0.0
    if qmax < 0:
        raise ValueError(f"qmax: must be positive, got {qmax}")
    dr = float(r[1] - r[0]) if M > 1 else 0.01
    if qmax > 0 and M > 1:
        steps = r[1:] - r[:-1]
        dr = float((r[-1] - r[0]) / (M - 1))
        tol = 1e-4 * dr + 16 * torch.finfo(dtype).eps * float(r.abs().max())
        if float((steps - dr).abs().max()) > tol:
            raise ValueError("r: grid must be uniformly spaced when qmax is set")
    qdamp_t = _as_param(qdamp, B, dtype, device, "qdamp")
    qbroad_t = _as_param(qbroad, B, dtype, device, "qbroad")
    d1_t = _as_param(delta1, B, dtype, device, "delta1")
    d2_t = _as_param(delta2, B, dtype, device, "delta2")
    scale_t = _as_param(scale, B, dtype, device, "scale")
    sp_t = None
    if spdiameter is not None:
        sp_t = _as_param(spdiameter, B, dtype, device, "spdiameter")
        if bool((sp_t.detach() <= 0).any()):
            raise ValueError(f"spdiameter: particle diameter must be positive, got {spdiameter}")
    if method not in ("binned", "exact"):
        raise ValueError(f"method: must be 'binned' or 'exact', got {method!r}")

    rmin = float(r[0])
    rc, r_lo, r_hi = _extended_grid(r, dr, qmax)
    K = rc.numel()

    weights = forward_weight(batch.numbers, radiation, dtype=dtype, device=device)
    counts = batch.counts()
    occ = batch.occupancy
    n_b = torch.zeros(B, dtype=dtype, device=device).index_add(0, batch.batch, occ)
    bavg = torch.zeros(B, dtype=dtype, device=device).index_add(0, batch.batch, occ * weights) / n_b
    vol = torch.linalg.det(batch.lattice).abs()
    rho0 = n_b / vol
    first = torch.cumsum(counts, 0) - counts
    rows = []
    for b in range(B):
        s0, n_at = int(first[b]), int(counts[b])
        frac = batch.frac[s0 : s0 + n_at]
        lat = batch.lattice[b]
        u = batch.uiso[s0 : s0 + n_at]
        wn = weights[s0 : s0 + n_at] / bavg[b] * occ[s0 : s0 + n_at]
        pars = (d1_t[b], d2_t[b], qbroad_t[b])
        grad_pairs = torch.is_grad_enabled() and (lat.requires_grad or frac.requires_grad or wn.requires_grad)
        if method == "binned" and batch.uij is None and not grad_pairs:
            # moments straight from the pair columns, no pair list (autograd still reaches
            # Uiso and the peak-shape parameters through the evaluation)
            ppp = _binned_periodic(frac, lat, u, wn, pars, r_lo, r_hi, rmin, dr, K)
            rows.append(_finish_gr(ppp, rc, n_b[b], rho0[b], qdamp, qdamp_t[b], sp_t, b, scale_t[b]))
            continue
        need_vec = lat.requires_grad or frac.requires_grad or batch.uij is not None
        iu, ju, prow, n, dist0 = _pairs_one(frac, lat, r_lo, r_hi, with_translations=need_vec)
        # per atom-pair row: amplitude and σ'^2 (each unordered pair stands for (i, j) and (j, i))
        amp_row = 2.0 * wn[iu] * wn[ju]
        s2_row = u[iu] + u[ju]
        if lat.requires_grad or frac.requires_grad:
            # positions with autograd; wrapping by floor keeps the images found by _pairs_one
            f0 = frac - torch.floor(frac.detach())
            dist = ((f0[ju[prow]] - f0[iu[prow]] + n.to(dtype)) @ lat).norm(dim=-1)
        else:
            dist = dist0.to(dtype)
        if batch.uij is not None:
            # anisotropic: σ'² = r̂ᵀ(U_i + U_j)r̂ differs per pair, so one Gaussian per pair (as pdffit2)
            uc = batch.uij[s0 : s0 + n_at]
            f0 = frac - torch.floor(frac.detach())
            dvec = (f0[ju[prow]] - f0[iu[prow]] + n.to(dtype)) @ lat
            rhat = dvec / dvec.norm(dim=-1, keepdim=True)
            s2_pair = torch.einsum("pi,pij,pj->p", rhat, uc[iu[prow]] + uc[ju[prow]], rhat)
            ok = s2_pair.detach() > 0
            ppp = _gauss_sum_exact(rc, dist[ok], s2_pair[ok], amp_row[prow][ok], pars, rmin, dr)
        elif method == "exact":
            ok = s2_row.detach()[prow] > 0
            ppp = _gauss_sum_exact(rc, dist[ok], s2_row[prow][ok], amp_row[prow][ok], pars, rmin, dr)
        else:
            # classes of rows with equal σ'^2: few, so the Gaussians are evaluated per
            # (class, grid point) rather than per pair
            with torch.no_grad():
                _, row_cls = torch.unique(s2_row.detach(), return_inverse=True)
            ppp = _gauss_sum_binned(rc, dist, s2_row, amp_row[prow], pars, rmin, dr, row_cls[prow], row_cls)
        rows.append(_finish_gr(ppp, rc, n_b[b], rho0[b], qdamp, qdamp_t[b], sp_t, b, scale_t[b]))
    G = torch.stack(rows, 0)
    if qmax > 0:
        G = _qmax_cutoff(G, dr, qmax, qmin)
    return G[:, :M]


def _finish_gr(ppp, rc, n_atoms, rho0, qdamp, qdamp_b, sp_t, b: int, scale_b):
    """G(r) of one crystal from its pair sum: baseline, Qdamp, particle envelope, scale."""
    g = ppp / (n_atoms * rc.clamp_min(1e-12)) - 4 * math.pi * rc * rho0
    g = torch.where(rc > 0, g, torch.zeros_like(g))
    if not _zero_param(qdamp):
        g = g * torch.exp(-0.5 * (rc * qdamp_b) ** 2)
    if sp_t is not None:
        g = g * sphere_envelope(rc, sp_t[b])
    return g * scale_b


def _binned_periodic(frac, lat, u, wn, pars, r_lo: float, r_hi: float, rmin: float, dr: float, K: int):
    """Pair sum of one crystal by :func:`_pair_moments` and :func:`_gauss_from_moments` (positions without autograd)."""
    cols = _pair_columns(frac, lat, r_hi, r_lo)
    iu, ju, prow = cols["iu"], cols["ju"], cols["prow"]
    s2_row = u[iu] + u[ju]
    with torch.no_grad():
        _, row_cls = torch.unique(s2_row.detach(), return_inverse=True)
        C = int(row_cls.max()) + 1
        amp_col = (2.0 * wn[iu] * wn[ju]).index_select(0, prow)  # each unordered pair stands for two
        k_lo = int(math.floor((r_lo - rmin) / dr)) - 1
        nbins = int(math.ceil((r_hi - rmin) / dr)) + 2 - k_lo
        m = _pair_moments(cols, r_lo, row_cls.index_select(0, prow), amp_col, C, rmin, dr, k_lo, nbins)
    return _gauss_from_moments(m, _class_s2(s2_row, row_cls, C), pars, rmin, dr, k_lo, nbins, K)


def _zero_param(v) -> bool:
    if isinstance(v, torch.Tensor):
        return (not v.requires_grad) and bool((v == 0).all())
    return float(v) == 0.0


def _sigma(dist, s2p, pars):
    """Peak width σ_ij and the mask of pairs with a positive width (pdffit2's sharpening)."""
    d1, d2, qb = pars
    corr = 1 - d1 / dist - d2 / dist**2 + qb**2 * dist**2
    ok = corr > 0
    s2 = torch.where(ok, s2p * corr, s2p)  # masked pairs keep σ' (their amplitude is zeroed)
    return torch.sqrt(s2), ok


_C = 1.0 / math.sqrt(2 * math.pi)


def _gauss_sum_exact(rc, dist, s2p, amp, pars, rmin, dr, nsig: float = 5.0, chunk_elements: int = 1 << 22):
    """Σ_p amp_p N(r; dist_p, σ_p) on the uniform grid rc, within ±nsig σ of each peak."""
    K = rc.numel()
    out = torch.zeros(K, dtype=rc.dtype, device=rc.device)
    if dist.numel() == 0:
        return out
    sigma, ok = _sigma(dist, s2p, pars)
    amp = torch.where(ok, amp, torch.zeros_like(amp))
    with torch.no_grad():
        lo = torch.round((dist - nsig * sigma - rmin) / dr).long().clamp(0, K - 1)
        hi = torch.round((dist + nsig * sigma - rmin) / dr).long().clamp(-1, K - 1)
        width = int((hi - lo).max()) + 1
    if width <= 0:
        return out
    step = max(1, chunk_elements // width)
    ar = torch.arange(width, device=rc.device)
    for s in range(0, dist.numel(), step):
        sl = slice(s, s + step)
        gi = lo[sl, None] + ar[None]
        valid = gi <= hi[sl, None]
        gi = gi.clamp_max(K - 1)
        sg = sigma[sl, None]
        val = amp[sl, None] * _C / sg * torch.exp(-0.5 * ((rc[gi] - dist[sl, None]) / sg) ** 2)
        out = out.index_add(0, gi.reshape(-1), (val * valid).reshape(-1))
    return out


def _gauss_sum_binned(rc, dist, s2_row, amp, pars, rmin, dr, cls, row_cls, nsig: float = 5.0):
    """Same sum as :func:`_gauss_sum_exact` via per-(class, grid point) moments (see :func:`_gauss_from_moments`).

    ``dist``, ``amp`` and ``cls`` are per pair, ``s2_row`` (σ'²) and ``row_cls`` per
    row; autograd flows through all of them.
    """
    K = rc.numel()
    dtype, device = rc.dtype, rc.device
    if dist.numel() == 0:
        return torch.zeros(K, dtype=dtype, device=device)
    C = int(row_cls.max()) + 1
    s2_c = _class_s2(s2_row, row_cls, C)
    with torch.no_grad():
        k_lo = int(math.floor((float(dist.detach().min()) - rmin) / dr)) - 1
        nbins = int(math.ceil((float(dist.detach().max()) - rmin) / dr)) + 2 - k_lo
    t = (dist - rmin) / dr
    with torch.no_grad():
        kr = torch.round(t)
        flat = kr.long().sub_(k_lo).add_(cls, alpha=nbins)
    delta = (t - kr) * dr
    z = torch.zeros(C * nbins, dtype=dtype, device=device)
    ad = amp * delta
    m = torch.stack([z.index_add(0, flat, amp), z.index_add(0, flat, ad), z.index_add(0, flat, ad * delta)])
    return _gauss_from_moments(m, s2_c, pars, rmin, dr, k_lo, nbins, K, nsig)


def _class_s2(s2_row, row_cls, C: int):
    """σ'² of each class: the mean over its rows (all equal)."""
    nrow = torch.bincount(row_cls, minlength=C).to(s2_row.dtype)
    return torch.zeros(C, dtype=s2_row.dtype, device=s2_row.device).index_add(0, row_cls, s2_row) / nrow


def _gauss_from_moments(m, s2_c, pars, rmin: float, dr: float, k_lo: int, nbins: int, K: int, nsig: float = 5.0):
    """Σ over pairs of amp·N(r; r_p, σ_p) on the grid ``rmin + k·dr`` (K points) from binned moments.

    ``m`` (3, C·nbins): Σ amp, Σ amp·δ, Σ amp·δ² of the pairs of class c
    nearest to grid point k (bin ``c·nbins + k − k_lo``), δ = r_p − r_k;
    ``s2_c`` (C,): σ'² of each class.  Pairs of one class share σ'; a pair at
    r_p = r_k + δ contributes N(r − r_k − δ; σ(r_k + δ)) ≈
    N + δ (−∂_x N + σ_r ∂_σ N) + δ²/2 ∂_x² N, evaluated at (r − r_k, σ(r_k)),
    σ_r = dσ/dr at r_k.  Its relative error is ~(dr/2)³/(6σ³).  Classes with
    σ' = 0 are skipped (as pdffit2 does).  With z = (r − r_k)/σ this is
    ``(C/σ) e^{−z²/2} (a0 + a1 z + a2 z²)`` per occupied (class, grid point),
    within ±nsig σ as pdffit2, evaluated in blocks of :data:`_BLOCK_VALUES`
    values (cache-sized temporaries).
    """
    dtype, device = m.dtype, m.device
    out = torch.zeros(K, dtype=dtype, device=device)
    with torch.no_grad():
        occupied = torch.nonzero((m[0].detach() != 0).view(-1, nbins).any(0)).squeeze(-1)
        if occupied.numel() == 0:
            return out
        # largest σ: the sharpening factor is largest at the ends of the pair range
        d1, d2, qb = (float(p) for p in pars)
        rr = (rmin + (int(occupied[0]) + k_lo - 0.5) * dr, rmin + (int(occupied[-1]) + k_lo + 0.5) * dr)
        corr_max = max(1 - d1 / r - d2 / r**2 + qb**2 * r**2 for r in rr if r > 0)
        sig_max = math.sqrt(max(float(s2_c.detach().max()), 1e-12) * max(corr_max, 1.0))
        W = int(math.ceil(nsig * sig_max / dr)) + 1
        # entries whose window reaches the grid, of classes with σ' > 0
        kk = torch.arange(m.shape[1], device=device) % nbins + k_lo
        use = (m[0].detach() != 0) & (s2_c.detach() > 0).repeat_interleave(nbins) & (kk >= -W) & (kk < K + W)
        nz = torch.nonzero(use).squeeze(-1)
    if nz.numel() == 0:
        return out
    e_cls = torch.div(nz, nbins, rounding_mode="floor")
    e_k = kk[nz]  # grid point of the entry
    m0, m1, m2 = m[0][nz], m[1][nz], 0.5 * m[2][nz]
    r_e = rmin + e_k.to(dtype) * dr
    # σ(r) and dσ/dr at the grid point
    d1, d2, qb = pars
    r_safe = r_e.clamp_min(1e-6)
    corr = 1 - d1 / r_safe - d2 / r_safe**2 + qb**2 * r_safe**2
    okc = corr > 0
    corr = torch.where(okc, corr, torch.ones_like(corr))
    sg = torch.sqrt(s2_c[e_cls] * corr)
    dcorr = d1 / r_safe**2 + 2 * d2 / r_safe**3 + 2 * qb**2 * r_safe
    sr = 0.5 * sg / corr * dcorr  # dσ/dr
    inv = 1.0 / sg
    # N·[m0 + m1 (z/σ + σ_r (z²−1)/σ) + m2 (z²−1)/σ²] = (C/σ) e^{−z²/2} (a0 + a1 z + a2 z²)
    cs = _C * inv * okc
    u = m1 * sr * inv + m2 * inv * inv
    a0 = cs * (m0 - u)
    a1 = cs * m1 * inv
    a2 = cs * u
    # window within ±nsig σ (as pdffit2): |z| ≤ nsig + dr/(2σ)
    lim2 = (nsig + 0.5 * dr * inv.detach()) ** 2
    x = dr * torch.arange(-W, W + 1, dtype=dtype, device=device)  # (L,)
    L = x.numel()
    # value l of entry e (e_k ≥ −W) lands on grid point e_k + l − W: index e_k + l + W of an
    # array that starts 2W below the grid (no clamping needed)
    ext = torch.zeros(K + 4 * W + 1, dtype=dtype, device=device)
    ar = torch.arange(L, device=device) + W
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (a0, a1, a2, inv))
    rows = max(1, _BLOCK_VALUES // L)
    for s in range(0, len(nz), rows):
        sl = slice(s, s + rows)
        z = torch.outer(inv[sl], x)
        z2 = z * z
        val = torch.addcmul(torch.addcmul(a0[sl, None], a1[sl, None], z), a2[sl, None], z2)
        keep = z2.detach() <= lim2[sl, None]
        if grad:
            val = torch.where(keep, val * torch.exp(-0.5 * z2), torch.zeros_like(val))
            ext = ext.index_add(0, (e_k[sl, None] + ar).reshape(-1), val.reshape(-1))
        else:  # the same in place
            val.mul_(z2.mul_(-0.5).exp_()).mul_(keep)
            ext.index_add_(0, (e_k[sl, None] + ar).reshape(-1), val.reshape(-1))
    return out + ext[2 * W : 2 * W + K]


#: Values per block of the binned Gaussian sums: ~128 kB of float64 temporaries, which
#: the C allocator recycles (larger arrays are fresh pages, and their faults cost more
#: than the extra Python calls).
_BLOCK_VALUES = 1 << 15


# ---------------------------------------------------------------------------
# directional derivatives (exact Jacobian columns for refinement)

#: Parameters of :func:`pdf_gr_jvp` that may carry a tangent besides the structure.
JVP_PARAMS = ("qdamp", "qbroad", "delta1", "delta2", "scale", "spdiameter")


def pdf_gr_jvp(
    batch: CrystalBatch,
    r,
    tangents: dict,
    *,
    qmax: float | None = None,
    qmin: float = 0.0,
    qdamp: float = 0.0,
    qbroad: float = 0.0,
    delta1: float = 0.0,
    delta2: float = 0.0,
    scale: float = 1.0,
    spdiameter: float | None = None,
    radiation: str = "xray",
) -> tuple[torch.Tensor, torch.Tensor]:
    """G(r) of one crystal and its derivatives along D directions, sharing one pair sum.

    The same model as :func:`pdf_gr` with ``method="binned"`` (isotropic ADPs), evaluated once
    with its exact directional derivatives: the pair distances' derivatives enter the binned
    moments (first and second moment of each bin), the peak width's derivatives (Uiso, δ1, δ2,
    Qbroad) the Gaussian evaluation, whose D tangents share one set of basis values
    e^{−z²/2} zⁿ (n ≤ 4) with the value itself; Qdamp, the particle envelope, scale and
    the Qmax band limit are applied to all rows at once.  This is the Jacobian of a
    refinement at about the cost of two or three evaluations of G(r), however many
    directions, where finite differences cost one evaluation per direction.

    Parameters
    ----------
    batch : CrystalBatch
        One crystal (``batch.uij`` unset); Uiso in Å².
    r : array-like, shape (M,)
        r grid in Å, as for :func:`pdf_gr`.
    tangents : dict
        Directions, each value with a leading dimension D: ``"lattice"`` (D, 3, 3) Å,
        ``"frac"`` (D, N, 3), ``"uiso"`` (D, N) Å², and any of :data:`JVP_PARAMS` (D,)
        in the units of the parameter.  Missing keys are zero.
    qmax, qmin, qdamp, qbroad, delta1, delta2, scale, spdiameter, radiation
        As for :func:`pdf_gr` (floats; ``spdiameter`` None = bulk).

    Returns
    -------
    G : torch.Tensor, shape (M,)
    dG : torch.Tensor, shape (D, M)
        ∂G/∂(direction d) for each direction.
    """
    _check_batch(batch)
    if batch.num_crystals != 1 or batch.uij is not None:
        raise ValueError("pdf_gr_jvp: one crystal with isotropic ADPs")
    if radiation not in ("xray", "neutron"):
        raise ValueError(f"radiation: must be 'xray' or 'neutron', got {radiation!r}")
    dtype, device = batch.dtype, batch.device
    r = torch.as_tensor(r, dtype=dtype, device=device)
    _check_grid(r, "r")
    M = r.numel()
    D = next((int(torch.as_tensor(v).shape[0]) for v in tangents.values() if v is not None), 0)

    def tan(key, shape):
        v = tangents.get(key)
        if v is None:
            return torch.zeros((D, *shape), dtype=dtype, device=device)
        return torch.as_tensor(v, dtype=dtype, device=device).reshape(D, *shape)

    lat = batch.lattice[0].detach()
    frac = batch.frac.detach()
    u = batch.uiso.detach()
    n_at = frac.shape[0]
    t_lat, t_frac, t_u = tan("lattice", (3, 3)), tan("frac", (n_at, 3)), tan("uiso", (n_at,))
    tp = {k: tan(k, ()) for k in JVP_PARAMS}
    qmax = float(qmax) if qmax else 0.0
    dr = float(r[1] - r[0]) if M > 1 else 0.01
    if qmax > 0 and M > 1:
        dr = float((r[-1] - r[0]) / (M - 1))
    rmin = float(r[0])
    rc, r_lo, r_hi = _extended_grid(r, dr, qmax)
    K = rc.numel()

    weights = forward_weight(batch.numbers, radiation, dtype=dtype, device=device)
    occ = batch.occupancy.detach()
    n_b = occ.sum()
    wn = weights / ((occ * weights).sum() / n_b) * occ
    vol = torch.linalg.det(lat).abs()
    rho0 = n_b / vol
    # d|det L| = |det L| tr(L⁻¹ dL)
    t_rho0 = -rho0 * torch.einsum("ij,dji->d", torch.linalg.inv(lat), t_lat)

    cols = _pair_columns(frac, lat, r_hi, r_lo)
    iu, ju, prow = cols["iu"], cols["ju"], cols["prow"]
    s2_row = u[iu] + u[ju]
    t_s2_row = t_u[:, iu] + t_u[:, ju]  # (D, rows)
    # classes: rows with equal σ'² and equal σ'² tangents (one width per class, also when moved)
    _, row_cls = torch.unique(torch.cat([s2_row[None], t_s2_row], 0).T, dim=0, return_inverse=True)
    C = int(row_cls.max()) + 1
    s2_c = _class_s2(s2_row, row_cls, C)
    t_s2_c = torch.stack([_class_s2(t_s2_row[d], row_cls, C) for d in range(D)]) if D else s2_c.new_zeros(0, C)
    k_lo = int(math.floor((r_lo - rmin) / dr)) - 1
    nbins = int(math.ceil((r_hi - rmin) / dr)) + 2 - k_lo
    geo = [d for d in range(D) if bool(t_lat[d].any()) or bool(t_frac[d].any())]
    m, t_m = _pair_moments_jvp(cols, frac, lat, t_frac[geo], t_lat[geo], r_lo, row_cls.index_select(0, prow),
                               (2.0 * wn[iu] * wn[ju]).index_select(0, prow), C, rmin, dr, k_lo, nbins)
    pars = (float(delta1), float(delta2), float(qbroad))
    # peak-width responses needed: σ'² per class, and the sharpening parameters with a tangent
    resp = (["s2"] if bool(t_s2_c.any()) else []) + [
        n for n, k in (("d1", "delta1"), ("d2", "delta2"), ("qb", "qbroad")) if bool(tp[k].any())]
    ppp, t_geo, F = _gauss_from_moments_jvp(m, t_m, s2_c, pars, resp, rmin, dr, k_lo, nbins, K)
    # each direction: its own moments' column plus its width changes times the unit responses
    t_ppp = ppp.new_zeros(D, K)
    if geo:
        t_ppp[geo] = t_geo
    if "s2" in F:
        t_ppp = t_ppp + t_s2_c @ F["s2"]
    for n, k in (("d1", "delta1"), ("d2", "delta2"), ("qb", "qbroad")):
        if n in F:
            t_ppp = t_ppp + tp[k][:, None] * F[n][None]

    rcc = rc.clamp_min(1e-12)
    g = ppp / (n_b * rcc) - 4 * math.pi * rc * rho0
    t_g = t_ppp / (n_b * rcc) - 4 * math.pi * rc * t_rho0[:, None]
    pos = rc > 0
    g = torch.where(pos, g, torch.zeros_like(g))
    t_g = torch.where(pos, t_g, torch.zeros_like(t_g))
    if float(qdamp) != 0.0 or bool(tp["qdamp"].any()):
        damp = torch.exp(-0.5 * (rc * float(qdamp)) ** 2)
        t_g = t_g * damp + (g * damp * (-(rc**2) * float(qdamp)))[None] * tp["qdamp"][:, None]
        g = g * damp
    if spdiameter is not None:
        sp = float(spdiameter)
        env = sphere_envelope(rc, sp)
        x = rc / sp
        d_env = torch.where(x < 1, (1.5 * x - 1.5 * x**3) / sp, torch.zeros_like(x))  # ∂γ0/∂diameter
        t_g = t_g * env + g[None] * d_env[None] * tp["spdiameter"][:, None]
        g = g * env
    sc = float(scale)
    t_g = t_g * sc + g[None] * tp["scale"][:, None]
    g = g * sc
    G = torch.cat([g[None], t_g], 0)
    if qmax > 0:
        G = _qmax_cutoff(G, dr, qmax, qmin)
    return G[0, :M], G[1:, :M]


def _pair_moments_jvp(cols: dict, frac, lat, t_frac, t_lat, r_lo: float, col_cls, col_amp, C: int, rmin: float,
                      dr: float, k_lo: int, nbins: int):
    """:func:`_pair_moments` and the tangents of its first and second moments along G geometric directions.

    A pair at distance d = |v L| (v its fractional vector) moves by ∂d = (vL)·(∂v L + v ∂L)/d;
    its bin stays (the expansion is about the grid point), so Σ amp·δ gains Σ amp·∂d and
    Σ amp·δ² gains Σ 2 amp·δ·∂d.  Returns m (3, C·nbins) and t_m (C·nbins, 2, G).
    """
    cnt = cols["cnt"]
    dtype, device = col_amp.dtype, cnt.device
    G = t_frac.shape[0]
    # rows: Σw, Σwδ, Σwδ², then Σw∂d and Σ2wδ∂d of every direction (one scatter per block)
    acc = torch.zeros(3 + 2 * G, C * nbins, dtype=dtype, device=device)
    if len(cnt) == 0:
        return acc[:3], acc[3:].T.reshape(C * nbins, 2, G)
    if G:
        f = frac - torch.floor(frac)
        iu, ju, prow = cols["iu"], cols["ju"], cols["prow"]
        u_row = f[ju] - f[iu]  # (rows, 3)
        # along a column v = (v0, v1, u2 + n2) with v0, v1 fixed, so d·∂d, a quadratic form in v,
        # is p + v2 (s + t v2) with p, s per (direction, column) and t per direction: two gathers
        # and two multiply-adds per pair instead of a (pair, 3, 3) form (2x faster, SrFe2As2)
        v0 = u_row[prow, 0] + cols["c0"].to(dtype)
        v1 = u_row[prow, 1] + cols["c1"].to(dtype)
        A = t_lat @ lat.T  # (G, 3, 3): v (∂L Lᵀ) vᵀ, symmetrised
        A = A + A.transpose(1, 2)
        p = 0.5 * (A[:, 0, 0, None] * v0 * v0 + A[:, 1, 1, None] * v1 * v1) + A[:, 0, 1, None] * v0 * v1
        s = A[:, 0, 2, None] * v0 + A[:, 1, 2, None] * v1
        t = 0.5 * A[:, 2, 2]
        # v g ∂uᵀ (g = L Lᵀ) with ∂u of the column's atom pair
        a = ((t_frac[:, ju] - t_frac[:, iu]) @ (lat @ lat.T)).index_select(1, prow)  # (G, columns, 3)
        ps = torch.cat([p + a[..., 0] * v0 + a[..., 1] * v1, s + a[..., 2]], 0)  # (2G, columns)
        u2 = cols["u2"].to(dtype)
    cum = torch.cumsum(cnt, 0)
    total = int(cum[-1])
    marks = torch.tensor(list(range(_BLOCK_PAIRS, total, _BLOCK_PAIRS)), dtype=cum.dtype, device=device)
    cuts = torch.searchsorted(cum, marks).tolist()
    bounds = sorted(set([0] + [c + 1 for c in cuts] + [len(cnt)]))
    for cs, ce in zip(bounds[:-1], bounds[1:]):
        rep, n2, d2 = _column_pairs(cols, r_lo, cs, ce)
        dist = d2.sqrt()
        x = (dist - (rmin + k_lo * dr)) / dr
        k = torch.round(x)
        delta = (x - k) * dr
        flat = k.long()
        if C > 1:
            flat = flat + col_cls[cs:ce].index_select(0, rep) * nbins
        w = col_amp[cs:ce].index_select(0, rep)
        src = w.new_empty(3 + 2 * G, w.numel())
        src[0] = w
        torch.mul(w, delta, out=src[1])
        torch.mul(src[1], delta, out=src[2])
        if G:
            v2 = u2[cs:ce].index_select(0, rep) + n2
            g = ps[:, cs:ce].index_select(1, rep)  # (2G, pairs)
            dd = src[3 : 3 + G]  # d·∂d, then w ∂d
            torch.addcmul(g[G:], t[:, None], v2, out=dd)
            dd.mul_(v2).add_(g[:G]).mul_(w / dist)
            torch.mul(dd, 2.0 * delta, out=src[3 + G :])
        acc.index_add_(1, flat, src)
    return acc[:3], acc[3:].T.reshape(C * nbins, 2, G)


def _moment_coefficients_jvp(m0, m1, m2h, s2, r_e, pars, t_m1, t_m2h, t_s2, t_pars):
    """Per (class, grid point) entry: (a0, a1, a2, 1/σ) of :func:`_gauss_from_moments` and their
    tangents (D, E) for tangents of m1, ½m2, σ'² (D, E) and of (δ1, δ2, Qbroad) (three (D,))."""
    d1, d2, qb = pars
    td1, td2, tqb = (t[:, None] for t in t_pars)
    r = r_e.clamp_min(1e-6)
    corr = 1 - d1 / r - d2 / r**2 + qb**2 * r**2
    okc = corr > 0
    corr = torch.where(okc, corr, torch.ones_like(corr))
    t_corr = (-td1 / r - td2 / r**2 + 2 * qb * r**2 * tqb) * okc
    sg = torch.sqrt(s2 * corr)
    t_sg = 0.5 * sg * (t_s2 / s2 + t_corr / corr)
    dcorr = d1 / r**2 + 2 * d2 / r**3 + 2 * qb**2 * r
    t_dcorr = td1 / r**2 + 2 * td2 / r**3 + 4 * qb * r * tqb
    sr = 0.5 * sg / corr * dcorr  # dσ/dr
    t_sr = 0.5 * (t_sg * dcorr / corr - sg * dcorr * t_corr / corr**2 + sg * t_dcorr / corr)
    inv = 1.0 / sg
    t_inv = -inv * inv * t_sg
    cs = _C * inv * okc
    t_cs = _C * t_inv * okc
    uu = m1 * sr * inv + m2h * inv * inv
    t_uu = t_m1 * sr * inv + m1 * t_sr * inv + m1 * sr * t_inv + t_m2h * inv * inv + 2 * m2h * inv * t_inv
    a0, a1, a2 = cs * (m0 - uu), cs * m1 * inv, cs * uu
    t_a0 = t_cs * (m0 - uu) - cs * t_uu
    t_a1 = t_cs * m1 * inv + cs * t_m1 * inv + cs * m1 * t_inv
    t_a2 = t_cs * uu + cs * t_uu
    return (a0, a1, a2, inv), (t_a0, t_a1, t_a2, t_inv)


def _gauss_from_moments_jvp(m, t_m, s2_c, pars, resp, rmin: float, dr: float, k_lo: int, nbins: int, K: int,
                            nsig: float = 5.0):
    """:func:`_gauss_from_moments` (same entries, window and cut-off) with its derivatives.

    ``t_m`` (C·nbins, 2, G): tangents of the first and second moments along G geometric
    directions; ``resp``: peak-width responses to return, among "s2" (a unit change of one
    class's σ'², (C, K)) and "d1", "d2", "qb" (unit changes of δ1, δ2, Qbroad, (K,)).  The value
    of an entry is e^{−z²/2}(a0 + a1 z + a2 z²) with z = x/σ, so a derivative is e^{−z²/2} times
    a quartic in z whose coefficients follow from (a0, a1, a2, 1/σ) and their tangents: one
    set of basis values e^{−z²/2}zⁿ serves the value and every column.  Returns the pair sum
    (K,), the geometric tangents (G, K) and the responses (dict).
    """
    dtype, device = m.dtype, m.device
    G = t_m.shape[-1]
    C = s2_c.numel()
    out = torch.zeros(K, dtype=dtype, device=device)
    empty = (out, out.new_zeros(G, K), {n: out.new_zeros(C, K) if n == "s2" else out.clone() for n in resp})
    occupied = torch.nonzero((m[0] != 0).view(-1, nbins).any(0)).squeeze(-1)
    if occupied.numel() == 0:
        return empty
    d1, d2, qb = pars
    rr = (rmin + (int(occupied[0]) + k_lo - 0.5) * dr, rmin + (int(occupied[-1]) + k_lo + 0.5) * dr)
    corr_max = max(1 - d1 / r - d2 / r**2 + qb**2 * r**2 for r in rr if r > 0)
    sig_max = math.sqrt(max(float(s2_c.max()), 1e-12) * max(corr_max, 1.0))
    W = int(math.ceil(nsig * sig_max / dr)) + 1
    kk = torch.arange(m.shape[1], device=device) % nbins + k_lo
    use = (m[0] != 0) & (s2_c > 0).repeat_interleave(nbins) & (kk >= -W) & (kk < K + W)
    nz = torch.nonzero(use).squeeze(-1)
    if nz.numel() == 0:
        return empty
    e_cls = torch.div(nz, nbins, rounding_mode="floor")
    e_k = kk[nz]
    r_e = rmin + e_k.to(dtype) * dr
    E = nz.numel()
    # columns: G geometric directions (moment tangents), then one per width response
    Q = G + len(resp)
    zq = torch.zeros(Q, E, dtype=dtype, device=device)
    t_m1, t_m2h, t_s2 = zq.clone(), zq.clone(), zq.clone()
    t_m1[:G] = t_m[nz, 0, :].T
    t_m2h[:G] = 0.5 * t_m[nz, 1, :].T
    unit = {n: torch.zeros(Q, dtype=dtype, device=device) for n in ("d1", "d2", "qb")}
    for j, n in enumerate(resp):
        if n == "s2":
            t_s2[G + j] = 1.0
        else:
            unit[n][G + j] = 1.0
    (a0, a1, a2, inv), (ta0, ta1, ta2, tinv) = _moment_coefficients_jvp(
        m[0][nz], m[1][nz], 0.5 * m[2][nz], s2_c[e_cls], r_e, pars, t_m1, t_m2h, t_s2,
        (unit["d1"], unit["d2"], unit["qb"]))  # tangents (Q, E)
    rho = tinv / inv  # ∂z/z
    # an entry's value and tangents are e^{−z²/2} times quadratics/quartics in z = x/σ:
    # Σₙ cₙ zⁿ = Σₙ (cₙ σ⁻ⁿ) xⁿ, so with row 0 the value (a0, a1, a2, 0, 0) and rows 1..Q the
    # tangents, all rows of a block are one matrix product (rows·entries, 5) @ (5, L) with the
    # powers xⁿ of the window offsets, times e^{−z²/2}: one GEMM instead of an (entry, 5, L) basis
    # and a batch of tiny products (measured on SrFe2As2 to 100 Å: 1.6x faster)
    zero = torch.zeros_like(a0)
    coef = torch.cat([torch.stack([a0, a1, a2, zero, zero], 0)[:, None],
                      torch.stack([ta0, ta1 + a1 * rho, ta2 + (2 * a2 - a0) * rho, -a1 * rho, -a2 * rho], 0)], 1)
    coef = coef * torch.stack([torch.ones_like(inv), inv, inv * inv, inv**3, inv**4], 0)[:, None]  # σ⁻ⁿ
    coef = coef.permute(1, 2, 0).contiguous()  # (1 + Q, E, 5)
    js2 = 1 + G + resp.index("s2") if "s2" in resp else None
    lim2 = (nsig + 0.5 * dr * inv) ** 2
    x = dr * torch.arange(-W, W + 1, dtype=dtype, device=device)
    xn = torch.stack([torch.ones_like(x), x, x * x, x**3, x**4], 0)  # (5, L)
    L = x.numel()
    n_ext = K + 4 * W + 1
    t_ext = torch.zeros(1 + Q, n_ext, dtype=dtype, device=device)
    s2_ext = torch.zeros(n_ext * C, dtype=dtype, device=device) if js2 is not None else None
    ar = torch.arange(L, device=device) + W
    inv2 = inv * inv
    # blocks of 16·_BLOCK_VALUES values per row: fewest calls for the size of the temporaries
    rows = max(1, 16 * _BLOCK_VALUES // (L * (1 + Q)))
    for s in range(0, E, rows):
        sl = slice(s, s + rows)
        n = min(s + rows, E) - s
        z2 = torch.outer(inv2[sl], x * x)
        gz = torch.exp(z2 * -0.5).mul_(z2 <= lim2[sl, None])
        v = torch.mm(coef[:, sl].reshape(-1, 5), xn).view(1 + Q, n, L).mul_(gz)
        idx = (e_k[sl, None] + ar).reshape(-1)
        t_ext.index_add_(1, idx, v.view(1 + Q, -1))
        if js2 is not None:  # the σ'² response, kept apart per class
            cidx = (idx * C).view(-1, L) + e_cls[sl, None]
            s2_ext.index_add_(0, cidx.reshape(-1), v[js2].reshape(-1))
    t = t_ext[:, 2 * W : 2 * W + K]
    F = {}
    for j, n in enumerate(resp):
        if n == "s2":
            F[n] = s2_ext.view(n_ext, C)[2 * W : 2 * W + K].T
        else:
            F[n] = t[1 + G + j]
    return out + t[0], t[1 : 1 + G], F
