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
< 1e-4 (tested: < 0.5 % on a 2 nm CdSe sphere).  The pair distances are
computed in row chunks so memory stays bounded (a 10 nm particle with ~40 000
atoms needs O(chunk · N) memory, not O(N²)).

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
        raise ValueError(f"numbers: need one atomic number per position ({positions.shape[0]}), got {tuple(numbers.shape)}")
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
    self_term = (f[sinv] ** 2).sum(0)
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
    with torch.no_grad():
        p0 = positions.detach()
        rmax = 2 * float((p0 - p0.mean(0)).norm(dim=-1).max()) + 2 * bin_width
    nb = int(math.ceil(rmax / bin_width)) + 2
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
    ncls = T * T
    m0, m1, m2 = _moment_histogram(positions, atom_type, T, nb, bin_width, chunk_pairs)
    # Σ_k [m0 s(x) + m1 Q s'(x) + m2 Q² s''(x)], x = Q r_k, rewritten as sine/cosine sums:
    # (1/Q) Σ sin(x)(m0/r − m1/r² + 2 m2/r³) + Σ cos(x)(m1/r − 2 m2/r²) − Q Σ sin(x) m2/r
    f64 = torch.float64
    rk = (torch.arange(nb, device=device, dtype=f64) * bin_width).clamp_min(0.5 * bin_width)
    m0, m1, m2 = (m.reshape(ncls, nb).to(f64) for m in (m0, m1, m2))
    for m in (m0, m1, m2):
        m[:, 0] = 0  # i == j (and overlapping atoms)
    a_sin = m0 / rk - m1 / rk**2 + 2 * m2 / rk**3
    b_cos = m1 / rk - 2 * m2 / rk**2
    c_sin = m2 / rk
    # Q -> 0: the sums are evaluated at Q = 1e-6 Å⁻¹ (float64 keeps the cancellations exact enough)
    qd = q.to(f64).clamp_min(1e-6)
    sin_sums, cos_sums = _trig_sums(torch.cat([a_sin, b_cos, c_sin], 0), qd, bin_width)  # (3C, M)
    per_cls = sin_sums[:ncls] / qd + cos_sums[ncls : 2 * ncls] - qd * sin_sums[2 * ncls :]  # (C, M)
    cls = torch.arange(ncls, device=device)
    ta, tb = torch.div(cls, T, rounding_mode="floor"), cls % T
    sa, ua_ = torch.div(ta, nu, rounding_mode="floor"), ta % nu
    sb, ub_ = torch.div(tb, nu, rounding_mode="floor"), tb % nu
    w = f[sa] * f[sb]
    if not (uniform_u and float(u[0]) == 0):
        w = w * torch.exp(-0.5 * (uvals[ua_] + uvals[ub_])[:, None] * q[None, :] ** 2)
    # ordered pairs (i, j) and (j, i) are both in the histogram
    return self_term + (w * per_cls.to(dtype)).sum(0)


def _moment_histogram(positions, atom_type, T, nb, bin_width, chunk_pairs):
    """Per (ordered type pair, bin): Σ1, Σδ, Σδ²/2 over ordered pairs i ≠ j (bin 0 holds i == j).

    Without autograd the distances are computed in float32 (δ is then exact to
    ~1e-6 Å) over the upper block triangle only; moments are accumulated in
    float64.
    """
    n = positions.shape[0]
    dtype, device = positions.dtype, positions.device
    size = T * T * nb
    grad = positions.requires_grad and torch.is_grad_enabled()
    if grad:
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
        return m0, m1, m2
    pos = positions.detach().to(torch.float32)
    inv = 1.0 / bin_width
    m0 = torch.zeros(size, dtype=torch.float64, device=device)
    m1 = torch.zeros(size, dtype=torch.float64, device=device)
    m2 = torch.zeros(size, dtype=torch.float64, device=device)
    base_col = (atom_type * nb).to(torch.int64)
    rows = max(1, min(n, int(chunk_pairs // max(n, 1))))
    for s in range(0, n, rows):
        e = min(s + rows, n)
        # diagonal block counts both orders of each pair, the block to its right one order
        for cols, wgt in ((slice(s, e), 1.0), (slice(e, n), 2.0)):
            if cols.start >= cols.stop:
                continue
            t = torch.cdist(pos[None, s:e], pos[None, cols], compute_mode="donot_use_mm_for_euclid_dist")[0]
            t.mul_(inv)
            k = torch.round(t)
            t.sub_(k)  # δ / bin_width
            kl = k.to(torch.int64).clamp_max_(nb - 1)
            kl += (atom_type[s:e, None] * (T * nb)) + base_col[None, cols]
            flat = kl.reshape(-1)
            dl = t.reshape(-1)
            m0 += wgt * torch.bincount(flat, minlength=size).to(torch.float64)
            m1 += (wgt * bin_width) * torch.bincount(flat, weights=dl, minlength=size).to(torch.float64)
            m2 += (0.5 * wgt * bin_width**2) * torch.bincount(flat, weights=dl * dl, minlength=size).to(torch.float64)
    return m0.to(dtype), m1.to(dtype), m2.to(dtype)


def _trig_sums(coef: torch.Tensor, q: torch.Tensor, dr: float, block: int = 64):
    """Σ_k coef[c, k] sin(q r_k) and Σ_k coef[c, k] cos(q r_k), r_k = k·dr, by blocks.

    e^{i q (k0 + j) dr} = e^{i q k0 dr} e^{i q j dr}: the inner sums over j are
    real matrix products, so only O(M·(J + K/J)) trigonometric evaluations.
    """
    C, K = coef.shape
    nblk = (K + block - 1) // block
    pad = nblk * block - K
    if pad:
        coef = torch.cat([coef, coef.new_zeros(C, pad)], 1)
    a = coef.reshape(C * nblk, block)  # (C·nblk, J)
    j = torch.arange(block, dtype=q.dtype, device=q.device) * dr
    k0 = torch.arange(nblk, dtype=q.dtype, device=q.device) * (block * dr)
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
        s2c = torch.zeros(C, dtype=dtype, device=device).index_add(0, cls, s2) / torch.bincount(cls, minlength=C).to(dtype)
        ppp = ppp + _gauss_sum_binned(
            r, d, s2c, 2 * wn[i] * wn[j], pars, float(r[0]), dr, cls, torch.arange(C, device=device)
        )
    rho0 = n / (math.pi * diameter**3 / 6)
    g = ppp / (n * r.clamp_min(1e-12)) - 4 * math.pi * r * rho0 * sphere_envelope(r, diameter)
    if qdamp:
        g = g * torch.exp(-0.5 * (r * qdamp) ** 2)
    return torch.where(r > 0, g, torch.zeros_like(g))
