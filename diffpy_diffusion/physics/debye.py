"""Debye scattering equation for finite clusters cut from a crystal.

.. math::

    I(Q) = \\sum_i f_i^2 + 2 \\sum_{i<j} f_i f_j \\, e^{-Q^2 (U_i + U_j)/2}
           \\frac{\\sin Q r_{ij}}{Q r_{ij}}

``method="exact"`` sums every pair at every Q (chunked; for clusters up to a
few thousand atoms and short Q grids).  ``method="histogram"`` bins the pair
distances of each species pair on a grid of width ``bin_width`` (Å) keeping,
per bin, the zeroth, first and second moment of the offset δ of the distances
from the bin centre, and evaluates the second-order Taylor expansion of
sinc(Q(r_k + δ)).  Its error is third order in ``Q·bin_width/2``: for
``bin_width = 0.01 Å`` and Q ≤ 25 Å⁻¹ the relative L2 error of I(Q) is
< 1e-4 (tested: 3e-7 on a 2 nm CdSe sphere).  The pair distances are
computed in blocks so memory stays bounded (a 10 nm particle with ~40 000
atoms needs O(chunk) memory, not O(N²)); without autograd each unordered pair
is visited once, in float64, and only the occupied bins (a cut crystal has few
distinct distances) enter the sine/cosine sums.

Helpers: :func:`cut_sphere`, :func:`debye_sq`, :func:`debye_fq`,
:func:`debye_gr` (real-space G(r) of the cluster, PDFgui-like
normalisation with the spherical-particle baseline).
"""

from __future__ import annotations

import math

import torch

from .crystal import CrystalBatch
from .scattering import forward_weight, scattering_factor


def cut_sphere(structure_or_batch, diameter_nm: float, *, center=None, dtype=torch.float64, device="cpu"):
    """Cut a sphere of diameter ``diameter_nm`` (nm) out of an infinite crystal.

    Parameters
    ----------
    structure_or_batch : pymatgen Structure or CrystalBatch (its first crystal)
    diameter_nm : float
        Sphere diameter in nm.
    center : array-like (3,), optional
        Sphere centre in fractional coordinates (default: the first atom, so
        that the cluster has an atom at its centre).

    Returns
    -------
    positions : torch.Tensor, shape (N, 3)
        Cartesian positions in Å, relative to the sphere centre.
    numbers : torch.LongTensor, shape (N,)
        Atomic numbers.

    Raises
    ------
    ValueError
        ``diameter_nm`` not positive; empty structure.
    """
    if isinstance(structure_or_batch, CrystalBatch):
        batch = structure_or_batch
    else:
        batch = CrystalBatch.from_structures([structure_or_batch], dtype=torch.float64)
    d = float(diameter_nm)
    if not (d > 0) or not math.isfinite(d):
        raise ValueError(f"diameter_nm: must be positive, got {diameter_nm}")
    sel = batch.batch == 0
    frac = batch.frac[sel].detach().to(torch.float64).cpu()
    numbers = batch.numbers[sel].cpu()
    if frac.shape[0] == 0:
        raise ValueError("structure: empty structure (no atoms)")
    lat = batch.lattice[0].detach().to(torch.float64).cpu()
    c = frac[0] if center is None else torch.as_tensor(center, dtype=torch.float64)
    radius = 5.0 * d  # Å
    recip = torch.linalg.inv(lat).T
    nmax = torch.ceil(radius * recip.norm(dim=-1)).long() + 1
    rng = [torch.arange(-int(m), int(m) + 1) for m in nmax]
    trans = torch.cartesian_prod(*rng).to(torch.float64)  # (T, 3)
    rel = (frac - torch.floor(frac)) - c  # (N, 3)
    pos = ((rel[None, :, :] + trans[:, None, :]).reshape(-1, 3)) @ lat
    z = numbers.repeat(trans.shape[0])
    keep = pos.norm(dim=-1) <= radius + 1e-9
    return pos[keep].to(dtype=dtype, device=device), z[keep].to(device)


def _check_cluster(positions, numbers, q=None, q_name="q"):
    positions = torch.as_tensor(positions)
    numbers = torch.as_tensor(numbers, device=positions.device).long()
    if positions.dim() != 2 or positions.shape[-1] != 3 or positions.shape[0] == 0:
        raise ValueError(f"positions: need a non-empty (N, 3) array, got shape {tuple(positions.shape)}")
    if numbers.shape != positions.shape[:1]:
        raise ValueError(
            f"numbers: need one atomic number per position ({positions.shape[0]}), got {tuple(numbers.shape)}"
        )
    from ..limits import check_debye_atoms

    check_debye_atoms(positions.shape[0])  # O(N²) pairs: a clear error naming the cap, not hours of CPU
    if q is not None:
        q = torch.as_tensor(q, dtype=positions.dtype, device=positions.device)
        if q.dim() != 1 or q.numel() == 0:
            raise ValueError(f"{q_name}: need a non-empty 1-D grid")
        if q.numel() > 1 and not bool((q[1:] > q[:-1]).all()):
            raise ValueError(f"{q_name}: grid must be strictly increasing")
        if float(q[0]) < 0:
            raise ValueError(f"{q_name}: grid must be non-negative")
    return positions, numbers, q


def _sinc_terms(x):
    """sinc(x) = sin x / x and its first two derivatives, stable at x -> 0."""
    small = x.abs() < 1e-3
    xs = torch.where(small, torch.ones_like(x), x)
    s, c = torch.sin(xs), torch.cos(xs)
    f0 = s / xs
    f1 = (c - f0) / xs
    f2 = -f0 - 2 * f1 / xs
    x2 = x * x
    f0 = torch.where(small, 1 - x2 / 6, f0)
    f1 = torch.where(small, -x / 3 + x * x2 / 30, f1)
    f2 = torch.where(small, -1.0 / 3 + x2 / 10, f2)
    return f0, f1, f2


def _pair_chunks(positions, chunk: int):
    """Yield (i, j, r_ij) for all pairs i < j, in row chunks (r_ij with autograd)."""
    n = positions.shape[0]
    for s in range(0, n - 1, chunk):
        rows = torch.arange(s, min(s + chunk, n - 1), device=positions.device)
        with torch.no_grad():
            jj = torch.arange(n, device=positions.device)
            mask = jj[None, :] > rows[:, None]
            i_idx, j_idx = torch.nonzero(mask, as_tuple=True)
            i_idx = rows[i_idx]
        d = (positions[j_idx] - positions[i_idx]).norm(dim=-1)
        yield i_idx, j_idx, d


def debye_iq(
    positions,
    numbers,
    q,
    *,
    method: str = "histogram",
    radiation: str = "xray",
    uiso: float | torch.Tensor | None = None,
    bin_width: float = 0.01,
    table: str = "wk",
    chunk_pairs: int = 1 << 21,
) -> torch.Tensor:
    """Debye scattering intensity I(Q) of a cluster, electrons² (X-ray) or fm² (neutron).

    Parameters
    ----------
    positions : (N, 3) tensor, Å
    numbers : (N,) atomic numbers
    q : (M,) tensor, Å⁻¹, strictly increasing, ≥ 0
    method : {"histogram", "exact"}
    radiation : {"xray", "neutron"}
    uiso : float or (N,) tensor, optional
        Isotropic displacement (Å²); pair terms get exp(−Q²(U_i+U_j)/2).
    bin_width : float
        Histogram bin width in Å.

    Returns
    -------
    torch.Tensor, shape (M,)
    """
    positions, numbers, q = _check_cluster(positions, numbers, q)
    if method not in ("exact", "histogram"):
        raise ValueError(f"method: must be 'exact' or 'histogram', got {method!r}")
    if not bin_width > 0:
        raise ValueError(f"bin_width: must be positive, got {bin_width}")
    dtype, device = positions.dtype, positions.device
    n = positions.shape[0]
    # species table: scattering factor per species and Q
    spec, sinv = torch.unique(numbers, return_inverse=True)
    f = scattering_factor(spec, q, radiation, table=table)  # (S, M)
    S = len(spec)
    if uiso is None:
        u = torch.zeros(n, dtype=dtype, device=device)
    else:
        u = torch.as_tensor(uiso, dtype=dtype, device=device)
        u = u.expand(n) if u.dim() == 0 else u
    self_term = torch.bincount(sinv, minlength=S).to(f.dtype) @ (f * f)  # Σ_i f_i²
    if n == 1:
        return self_term
    uniform_u = not u.requires_grad and bool((u == u[0]).all())
    if method == "exact":
        out = torch.zeros_like(q)
        rows = max(1, chunk_pairs // max(n * q.numel(), 1))
        for i, j, d in _pair_chunks(positions, rows):
            w = f[sinv[i]] * f[sinv[j]]  # (P, M)
            x = q[None, :] * d[:, None]
            term = w * _sinc_terms(x)[0]
            if not uniform_u or float(u[0]) != 0:
                term = term * torch.exp(-0.5 * (u[i] + u[j])[:, None] * q[None, :] ** 2)
            out = out + 2 * term.sum(0)
        return self_term + out
    # histogram with first and second moments per (species pair [, uiso class], bin)
    if uniform_u:
        ucls = torch.zeros(n, dtype=torch.long, device=device)
        uvals = u[:1]
    else:
        uvals, ucls = torch.unique(u.detach(), return_inverse=True)
        uvals = torch.zeros(len(uvals), dtype=dtype, device=device).index_add(0, ucls, u) / torch.bincount(
            ucls, minlength=len(uvals)
        ).to(dtype)
    nu = len(uvals)
    atom_type = sinv * nu + ucls  # (N,)
    T = S * nu
    r0, m0, m1, m2, ta, tb = _moment_histogram(positions, atom_type, T, bin_width, chunk_pairs)
    # Σ_k [m0 s(x) + m1 Q s'(x) + m2 Q² s''(x)], x = Q r_k, rewritten as sine/cosine sums:
    # (1/Q) Σ sin(x)(m0/r − m1/r² + 2 m2/r³) + Σ cos(x)(m1/r − 2 m2/r²) − Q Σ sin(x) m2/r
    f64 = torch.float64
    nb = m0.shape[1]
    k_all = torch.arange(nb, device=device)
    # bins below one bin width hold i == j (and overlapping atoms): not pair terms
    used = (m0.detach() != 0).any(0) & (r0 + k_all * bin_width >= bin_width)
    kk = torch.nonzero(used).squeeze(-1)
    ncls = m0.shape[0]
    qd = q.to(f64).clamp_min(1e-6)  # Q -> 0: sums at Q = 1e-6 Å⁻¹ (float64 keeps the cancellations exact)
    if len(kk) == 0:
        per_cls = torch.zeros(ncls, q.numel(), dtype=f64, device=device)
    else:
        # occupied bins only (a cut crystal has few distinct distances); blocked sums over the
        # whole grid when most bins are occupied (see _trig_sums)
        direct = len(kk) * _TRIG_COST < 3 * ncls * nb
        if not direct:  # every bin from the first occupied one
            kk = torch.arange(int(kk[0]), int(kk[-1]) + 1, device=device)
        rk = r0 + kk.to(f64) * bin_width
        m0, m1, m2 = (m.index_select(1, kk).to(f64) for m in (m0, m1, m2))
        a_sin = m0 / rk - m1 / rk**2 + 2 * m2 / rk**3
        b_cos = m1 / rk - 2 * m2 / rk**2
        c_sin = m2 / rk
        if direct:
            x = rk[:, None] * qd[None, :]  # (K, M)
            sx = torch.cat([a_sin, c_sin], 0) @ torch.sin(x)
            per_cls = sx[:ncls] / qd + b_cos @ torch.cos(x) - qd * sx[ncls:]
        else:
            coef = torch.cat([a_sin, b_cos, c_sin], 0)
            sin_sums, cos_sums = _trig_sums(coef, qd, bin_width, float(rk[0]))  # (3C, M)
            per_cls = sin_sums[:ncls] / qd + cos_sums[ncls : 2 * ncls] - qd * sin_sums[2 * ncls :]  # (C, M)
    sa, ua_ = torch.div(ta, nu, rounding_mode="floor"), ta % nu
    sb, ub_ = torch.div(tb, nu, rounding_mode="floor"), tb % nu
    w = f[sa] * f[sb]
    if not (uniform_u and float(u[0]) == 0):
        w = w * torch.exp(-0.5 * (uvals[ua_] + uvals[ub_])[:, None] * q[None, :] ** 2)
    # every class holds the ordered pairs (i, j) and (j, i)
    return self_term + (w * per_cls.to(dtype)).sum(0)


#: Cost of one sine and one cosine at a (bin, Q) point in units of the multiply-adds per
#: (coefficient row, bin, Q) of the blocked sums of :func:`_trig_sums` (measured with
#: float64 on a Xeon, torch 2.13: ~6.8 ns against ~0.29 ns per row; the choice only moves time).
_TRIG_COST = 24


def _moment_histogram(positions, atom_type, T, bin_width, chunk_pairs):
    """Moments of the pair-distance histogram over ordered pairs i ≠ j, per class of atom-type pair.

    Returns ``(r0, m0, m1, m2, ta, tb)``: bin ``k`` is centred at
    ``r0 + k·bin_width``; ``m0, m1, m2`` (C, K) hold Σ1, Σδ and Σδ²/2 of the
    offsets δ of the distances from the bin centre; class ``c`` holds the
    ordered pairs whose types are (``ta[c]``, ``tb[c]``) or (``tb[c]``,
    ``ta[c]``).  Bins closer than one bin width to 0 hold i == j.
    """
    n = positions.shape[0]
    dtype, device = positions.dtype, positions.device
    grad = positions.requires_grad and torch.is_grad_enabled()
    if not grad:
        return _moment_histogram_fast(positions, atom_type, T, bin_width, chunk_pairs)
    with torch.no_grad():
        p0 = positions.detach()
        rmax = 2 * float((p0 - p0.mean(0)).norm(dim=-1).max()) + 2 * bin_width
    nb = int(math.ceil(rmax / bin_width)) + 2
    size = T * T * nb
    rows = max(1, chunk_pairs // max(n, 1))
    m0 = torch.zeros(size, dtype=dtype, device=device)
    m1 = torch.zeros(size, dtype=dtype, device=device)
    m2 = torch.zeros(size, dtype=dtype, device=device)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        diff = positions[None, :, :] - positions[s:e, None, :]
        d = torch.sqrt((diff * diff).sum(-1).clamp_min(1e-30))
        k = torch.round(d.detach() / bin_width).long().clamp_max(nb - 1)
        delta = d - k.to(dtype) * bin_width
        flat = ((atom_type[s:e, None] * T + atom_type[None, :]) * nb + k).reshape(-1)
        m0 = m0.index_add(0, flat, torch.ones_like(delta).reshape(-1))
        m1 = m1.index_add(0, flat, delta.reshape(-1))
        m2 = m2.index_add(0, flat, (0.5 * delta * delta).reshape(-1))
    cls = torch.arange(T * T, device=device)
    ta, tb = torch.div(cls, T, rounding_mode="floor"), cls % T
    return 0.0, m0.view(T * T, nb), m1.view(T * T, nb), m2.view(T * T, nb), ta, tb


def _moment_histogram_fast(positions, atom_type, T, bin_width, chunk_pairs):
    """:func:`_moment_histogram` without autograd, over the unordered pairs only.

    Atoms are sorted by type, so that every block of the distance matrix belongs
    to one class.  Distances come from one float64 matrix product per block
    (``|a|² + |b|² − 2a·b`` with positions in bin widths, exact to ~1e-12 of
    the cluster size); bin ``k`` covers ``[k, k+1)`` bin widths and the
    moments of the fractional part of the distance are accumulated in float64.
    Memory: O(``chunk_pairs``); blocks of at most :data:`_BLOCK_PAIRS` pairs.
    """
    n = positions.shape[0]
    device = positions.device
    f64 = torch.float64
    order = torch.argsort(atom_type, stable=True)
    p = positions.detach().to(f64).index_select(0, order)
    p = (p - p.mean(0)) / bin_width
    sq = (p * p).sum(1)
    sq_max = float(sq.max())
    # |a|² + |b|² − 2a·b rounds to within a few ulp of |a|²: a floor above that keeps
    # coincident atoms from a negative square (their distance stays < 1 bin)
    floor_ = 64 * torch.finfo(f64).eps * sq_max + 1e-12
    nb = int(math.ceil(2 * math.sqrt(sq_max))) + 2
    one = torch.ones(n, 1, dtype=f64, device=device)
    lhs = torch.cat([p, sq[:, None], one], 1)  # (N, 5)
    rhs = torch.cat([-2 * p, one, sq[:, None] + floor_], 1).T.contiguous()  # lhs @ rhs = squared distances
    counts = torch.bincount(atom_type, minlength=T).tolist()
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    ones = torch.ones(1, dtype=f64, device=device)
    ta, tb, moments = [], [], []

    def block(rs, re, cs, ce, acc):
        d = torch.mm(lhs[rs:re], rhs[:, cs:ce]).view(-1).sqrt_()
        k = d.long()
        f = d.frac_()  # position inside the bin, 0 … 1
        acc[0].scatter_add_(0, k, ones.expand(len(k)))
        acc[1].scatter_add_(0, k, f)
        acc[2].scatter_add_(0, k, f.mul_(f))

    for a in range(T):
        a0, a1 = bounds[a], bounds[a + 1]
        for b in range(a, T):
            b0, b1 = bounds[b], bounds[b + 1]
            if a0 == a1 or b0 == b1:
                continue
            # diagonal squares hold both orders of their pairs, the other blocks one order
            both = torch.zeros(3, nb, dtype=f64, device=device)
            one_order = torch.zeros(3, nb, dtype=f64, device=device)
            if a == b:
                for blk in _diagonal_blocks(a0, a1, chunk_pairs):
                    block(*blk, both)
            for blk in _upper_blocks(a0, a1, b0, b1, a == b, chunk_pairs):
                block(*blk, one_order)
            ta.append(a)
            tb.append(b)
            moments.append(both.add_(one_order, alpha=2.0))
    mom = torch.stack(moments, 0)  # (C, 3, nb): Σ1, Σf, Σf² with f the offset from the lower edge
    s0, s1, s2 = mom.unbind(1)
    # moments about the bin centre (f − ½)·bin_width
    m0 = s0
    m1 = bin_width * (s1 - 0.5 * s0)
    m2 = 0.5 * bin_width**2 * (s2 - s1 + 0.25 * s0)
    dtype = positions.dtype
    lt = torch.tensor(ta, dtype=torch.long, device=device)
    lb = torch.tensor(tb, dtype=torch.long, device=device)
    return 0.5 * bin_width, m0.to(dtype), m1.to(dtype), m2.to(dtype), lt, lb


#: Pairs per block of the distance matrix: its float64 distances and index arrays stay in a
#: core's L2 cache (~2 MB); larger blocks measured 15 % slower, smaller ones pay per-call overhead.
_BLOCK_PAIRS = 1 << 17


def _diagonal_blocks(a0, a1, chunk_pairs):
    """Square blocks along the diagonal of rows/columns a0:a1 (both orders of their pairs)."""
    side = max(1, int(math.sqrt(min(chunk_pairs, _BLOCK_PAIRS))) // 2)
    return [(s, min(s + side, a1), s, min(s + side, a1)) for s in range(a0, a1, side)]


def _upper_blocks(a0, a1, b0, b1, same, chunk_pairs):
    """Blocks covering each unordered pair of rows a0:a1 × columns b0:b1 once, off the diagonal squares."""
    out = []
    side = max(1, int(math.sqrt(min(chunk_pairs, _BLOCK_PAIRS))) // 2)
    for s in range(a0, a1, side):
        e = min(s + side, a1)
        c0 = e if same else b0
        if c0 >= b1:
            continue
        rows = max(1, min(chunk_pairs, _BLOCK_PAIRS) // (b1 - c0))
        for rs in range(s, e, rows):
            out.append((rs, min(rs + rows, e), c0, b1))
    return out


def _trig_sums(coef: torch.Tensor, q: torch.Tensor, dr: float, r0: float = 0.0, block: int = 64):
    """Σ_k coef[c, k] sin(q r_k) and Σ_k coef[c, k] cos(q r_k), r_k = r0 + k·dr, by blocks.

    e^{i q (r0 + (k0 + j) dr)} = e^{i q (r0 + k0 dr)} e^{i q j dr}: the inner sums over j are
    real matrix products, so only O(M·(J + K/J)) trigonometric evaluations.
    """
    C, K = coef.shape
    nblk = (K + block - 1) // block
    pad = nblk * block - K
    if pad:
        coef = torch.cat([coef, coef.new_zeros(C, pad)], 1)
    a = coef.reshape(C * nblk, block)  # (C·nblk, J)
    j = torch.arange(block, dtype=q.dtype, device=q.device) * dr
    k0 = r0 + torch.arange(nblk, dtype=q.dtype, device=q.device) * (block * dr)
    ph_in = q[None, :] * j[:, None]  # (J, M)
    M = q.numel()
    pcs = (a @ torch.cat([torch.cos(ph_in), torch.sin(ph_in)], 1)).reshape(C, nblk, 2 * M)
    pc, ps = pcs[..., :M], pcs[..., M:]  # Σ_j a cos(q j dr), Σ_j a sin(q j dr)
    ph_out = k0[:, None] * q[None, :]  # (nblk, M)
    co, so = torch.cos(ph_out), torch.sin(ph_out)
    # cos(A+B) = cosA cosB − sinA sinB ; sin(A+B) = sinA cosB + cosA sinB
    cos_sum = (co * pc).sum(1) - (so * ps).sum(1)
    sin_sum = (so * pc).sum(1) + (co * ps).sum(1)
    return sin_sum, cos_sum


def debye_sq(positions, numbers, q, **kwargs) -> torch.Tensor:
    """Total scattering structure function S(Q) = 1 + (I − Σf²)/(N⟨f⟩²) of the cluster (dimensionless)."""
    positions, numbers, q = _check_cluster(positions, numbers, q)
    radiation = kwargs.get("radiation", "xray")
    iq = debye_iq(positions, numbers, q, **kwargs)
    f = scattering_factor(numbers, q, radiation, table=kwargs.get("table", "wk"))  # (N, M)
    n = positions.shape[0]
    favg = f.mean(0)
    f2sum = (f * f).sum(0)
    return 1 + (iq - f2sum) / (n * favg**2)


def debye_fq(positions, numbers, q, **kwargs) -> torch.Tensor:
    """Reduced structure function F(Q) = Q (S(Q) − 1), Å⁻¹."""
    p = torch.as_tensor(positions)
    q = torch.as_tensor(q, dtype=p.dtype, device=p.device)
    return q * (debye_sq(positions, numbers, q, **kwargs) - 1)


def debye_gr(
    positions,
    numbers,
    r,
    *,
    diameter: float | None = None,
    uiso: float = 0.005,
    radiation: str = "xray",
    delta2: float = 0.0,
    qdamp: float = 0.0,
) -> torch.Tensor:
    """Real-space reduced PDF G(r) (Å⁻²) of a cluster, PDFgui normalisation.

    ``G(r) = (1/(N r)) Σ_{i≠j} (b_i b_j/⟨b⟩²) N(r; r_ij, σ_ij) − 4π r ρ0 γ0(r; d)``
    with σ_ij² = (U_i + U_j)(1 − delta2/r_ij²), ρ0 = N / (π d³/6) and γ0 the
    sphere characteristic function of diameter ``diameter`` (Å; default: twice
    the largest distance from the centroid).  This is the finite-cluster
    counterpart of :func:`~diffpy_diffusion.physics.pdf.pdf_gr` with
    ``spdiameter=d``.
    """
    from .pdf import _gauss_sum_binned, sphere_envelope

    positions, numbers, r = _check_cluster(positions, numbers, r, q_name="r")
    dtype, device = positions.dtype, positions.device
    n = positions.shape[0]
    M = r.numel()
    if M < 2:
        raise ValueError("r: need at least two grid points")
    dr = float(r[1] - r[0])
    if diameter is None:
        cen = positions.detach().mean(0)
        diameter = 2 * float((positions.detach() - cen).norm(dim=-1).max())
    if not diameter > 0:
        raise ValueError(f"diameter: must be positive, got {diameter}")
    w = forward_weight(numbers, radiation, dtype=dtype, device=device)
    wn = w / w.mean()
    u = torch.as_tensor(uiso, dtype=dtype, device=device)
    u = u.expand(n) if u.dim() == 0 else u
    z = torch.zeros((), dtype=dtype, device=device)
    pars = (z, torch.as_tensor(delta2, dtype=dtype, device=device), z)
    ppp = torch.zeros(M, dtype=dtype, device=device)
    for i, j, d in _pair_chunks(positions, max(1, (1 << 21) // n)):
        s2 = u[i] + u[j]
        with torch.no_grad():
            uu, cls = torch.unique(s2.detach(), return_inverse=True)
        C = len(uu)
        s2c = torch.zeros(C, dtype=dtype, device=device).index_add(0, cls, s2)
        s2c = s2c / torch.bincount(cls, minlength=C).to(dtype)
        ppp = ppp + _gauss_sum_binned(
            r, d, s2c, 2 * wn[i] * wn[j], pars, float(r[0]), dr, cls, torch.arange(C, device=device)
        )
    rho0 = n / (math.pi * diameter**3 / 6)
    g = ppp / (n * r.clamp_min(1e-12)) - 4 * math.pi * r * rho0 * sphere_envelope(r, diameter)
    if qdamp:
        g = g * torch.exp(-0.5 * (r * qdamp) ** 2)
    return torch.where(r > 0, g, torch.zeros_like(g))
