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

import torch

from .crystal import CrystalBatch
from .scattering import forward_weight
from .xrd import _as_param, _check_batch, _check_grid


def sphere_envelope(r: torch.Tensor, diameter) -> torch.Tensor:
    """Characteristic function of a sphere of diameter ``diameter`` (Å): PDF envelope γ0(r)."""
    x = r / diameter
    env = 1 - 1.5 * x + 0.5 * x**3
    return torch.where(x < 1, env, torch.zeros_like(env))


def _pairs_one(frac, lattice, r_lo: float, r_hi: float):
    """All (i, j, n) pairs of one crystal with r_lo <= |x_j + n - x_i| <= r_hi (no autograd).

    Returns index tensors i, j and translation vectors n (P, 3).
    """
    with torch.no_grad():
        lat = lattice.detach().to(torch.float64)
        f = frac.detach().to(torch.float64)
        f = f - torch.floor(f)
        recip = torch.linalg.inv(lat).transpose(-1, -2)  # rows: reciprocal vectors (1/Å)
        nmax = torch.ceil(r_hi * recip.norm(dim=-1)).long() + 1
        rng = [torch.arange(-int(m), int(m) + 1, device=lat.device) for m in nmax]
        trans = torch.cartesian_prod(*rng).to(torch.float64)  # (T, 3)
        tcart = trans @ lat  # (T, 3)
        cart = f @ lat  # (N, 3)
        n_at = f.shape[0]
        ii, jj, tt = [], [], []
        dij = cart[None, :, :] - cart[:, None, :]  # (N, N, 3): x_j - x_i
        # chunk over translations to bound memory
        step = max(1, (1 << 22) // max(n_at * n_at, 1))
        for s in range(0, len(trans), step):
            tc = tcart[s : s + step]
            d = (dij[None] + tc[:, None, None, :]).norm(dim=-1)  # (t, N, N)
            m = (d >= r_lo) & (d <= r_hi)
            t_idx, i_idx, j_idx = torch.nonzero(m, as_tuple=True)
            ii.append(i_idx)
            jj.append(j_idx)
            tt.append(t_idx + s)
        i = torch.cat(ii)
        j = torch.cat(jj)
        n = trans[torch.cat(tt)]
    return i, j, n


def _qmax_cutoff(y: torch.Tensor, dr: float, qmax: float, qmin: float = 0.0) -> torch.Tensor:
    """pdffit2's band limit: zero-pad to a power of two ≥ 2·len, zero |Q| ≥ qmax, transform back."""
    n = y.shape[-1]
    padlen = 1 << int(math.ceil(math.log2(2 * n)))
    yc = torch.zeros(y.shape[:-1] + (padlen,), dtype=y.dtype, device=y.device)
    yc = torch.cat([y, yc[..., n:]], -1)
    fy = torch.fft.fft(yc.to(torch.complex128 if y.dtype == torch.float64 else torch.complex64))
    dq = 2 * math.pi / ((padlen - 1) * dr)
    lo = int(math.ceil(qmax / dq))
    hi = padlen + 1 - lo
    mask = torch.ones(padlen, dtype=y.dtype, device=y.device)
    if lo < hi:
        mask[lo:hi] = 0
    if qmin > 0:
        lq = int(math.ceil(qmin / dq))
        if lq > 0:
            mask[:lq] = 0
            mask[padlen - lq + 1 :] = 0
    out = torch.fft.ifft(fy * mask).real
    return out[..., :n]


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
    dedupe: bool | None = None,
) -> torch.Tensor:
    """Reduced PDF G(r) in Å⁻² of each crystal (PDFfit2/PDFgui conventions).

    Parameters
    ----------
    batch : CrystalBatch
        Uiso (Å²) of every atom must be > 0 for its peaks to appear.
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
    dedupe : bool, optional
        Merge symmetry-degenerate pairs before evaluating Gaussians (speed).
        Default: when no autograd is needed.

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
        if float((steps - dr).abs().max()) > 1e-6 * max(abs(dr), 1e-12) + 1e-9:
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
    if dedupe is None:
        dedupe = not (
            torch.is_grad_enabled()
            and (batch.lattice.requires_grad or batch.frac.requires_grad or batch.uiso.requires_grad)
        )

    # extended grid (pdffit2: 6 sinc ripples above rmax before the Qmax cut-off)
    rmin = float(r[0])
    if qmax > 0:
        rext = 6 * 2 * math.pi / qmax
        ncmax = int(round((float(r[-1]) + rext - rmin) / dr))
        rc = rmin + dr * torch.arange(ncmax + 1, dtype=dtype, device=device)
        rc[:M] = r
    else:
        rc = r
    K = rc.numel()
    r_lo = max(0.1, rmin - 1.0)
    r_hi = float(rc[-1]) + 1.0

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
        i, j, n = _pairs_one(frac, lat, r_lo, r_hi)
        wn = weights[s0 : s0 + n_at] / bavg[b] * occ[s0 : s0 + n_at]
        amp = wn[i] * wn[j]
        u = batch.uiso[s0 : s0 + n_at]
        s2p = u[i] + u[j]
        if dedupe:
            with torch.no_grad():
                f0 = frac - torch.floor(frac)
                dvec = (f0[j] - f0[i] + n.to(dtype)) @ lat
                dist = dvec.norm(dim=-1)
                key = torch.stack(
                    [torch.round(dist.to(torch.float64) * 1e7), torch.round(s2p.to(torch.float64) * 1e9)], -1
                )
                uk, inv = torch.unique(key, dim=0, return_inverse=True)
                amp = torch.zeros(len(uk), dtype=dtype, device=device).index_add(0, inv, amp)
                dist = torch.zeros(len(uk), dtype=dtype, device=device).index_add(0, inv, dist)
                cnt = torch.zeros(len(uk), dtype=dtype, device=device).index_add(0, inv, torch.ones_like(s2p))
                dist = dist / cnt
                s2p = torch.zeros(len(uk), dtype=dtype, device=device).index_add(0, inv, s2p) / cnt
        else:
            # positions with autograd; wrapping by floor keeps the same images as _pairs_one
            f0 = frac - torch.floor(frac.detach())
            dvec = (f0[j] - f0[i] + n.to(dtype)) @ lat
            dist = dvec.norm(dim=-1)
        corr = 1 - d1_t[b] / dist - d2_t[b] / dist**2 + qbroad_t[b] ** 2 * dist**2
        ok = (s2p > 0) & (corr > 0)
        s2 = torch.where(ok, s2p * corr, torch.ones_like(s2p))
        sigma = torch.sqrt(s2)
        amp = torch.where(ok, amp, torch.zeros_like(amp))
        ppp = _gauss_sum(rc, dist, sigma, amp, rmin, dr)
        g = ppp / (n_b[b] * rc.clamp_min(1e-12)) - 4 * math.pi * rc * rho0[b]
        g = torch.where(rc > 0, g, torch.zeros_like(g))
        if not _zero_param(qdamp):
            g = g * torch.exp(-0.5 * (rc * qdamp_t[b]) ** 2)
        if sp_t is not None:
            g = g * sphere_envelope(rc, sp_t[b])
        rows.append(g * scale_t[b])
    G = torch.stack(rows, 0)
    if qmax > 0:
        G = _qmax_cutoff(G, dr, qmax, qmin)
    return G[:, :M]


def _zero_param(v) -> bool:
    if isinstance(v, torch.Tensor):
        return (not v.requires_grad) and bool((v == 0).all())
    return float(v) == 0.0


def _gauss_sum(rc, dist, sigma, amp, rmin, dr, nsig: float = 5.0, chunk_elements: int = 1 << 22):
    """Σ_p amp_p N(r; dist_p, sigma_p) on the uniform grid rc, within ±nsig σ of each peak."""
    K = rc.numel()
    out = torch.zeros(K, dtype=rc.dtype, device=rc.device)
    if dist.numel() == 0:
        return out
    keep = amp.detach() != 0
    if not bool(keep.all()):
        dist, sigma, amp = dist[keep], sigma[keep], amp[keep]
        if dist.numel() == 0:
            return out
    with torch.no_grad():
        lo = torch.round((dist - nsig * sigma - rmin) / dr).long().clamp(0, K - 1)
        hi = torch.round((dist + nsig * sigma - rmin) / dr).long().clamp(-1, K - 1)
        width = int((hi - lo).max()) + 1
    if width <= 0:
        return out
    step = max(1, chunk_elements // width)
    ar = torch.arange(width, device=rc.device)
    c = 1.0 / math.sqrt(2 * math.pi)
    for s in range(0, dist.numel(), step):
        sl = slice(s, s + step)
        gi = lo[sl, None] + ar[None]
        valid = gi <= hi[sl, None]
        gi = gi.clamp_max(K - 1)
        sg = sigma[sl, None]
        val = amp[sl, None] * c / sg * torch.exp(-0.5 * ((rc[gi] - dist[sl, None]) / sg) ** 2)
        out = out.index_add(0, gi.reshape(-1), (val * valid).reshape(-1))
    return out
