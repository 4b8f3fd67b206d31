"""Atomic scattering factors: X-ray form factors and neutron scattering lengths.

Tables
------
``table="wk"`` (default)
    Waasmaier & Kirfel (1995) five-Gaussian fit of the International Tables
    Vol. C form factors of neutral atoms, Z = 1..98, valid for
    ``s = Q/4π ≤ 6 Å⁻¹`` (D. Waasmaier, A. Kirfel, Acta Cryst. A51 (1995)
    416–431).  Vendored in :mod:`._tables`.
``table="pymatgen"``
    The table bundled with pymatgen (``atomic_scattering_params.json``) in
    pymatgen's own functional form ``f(s) = Z − 41.78214 s² Σ a_i exp(−b_i s²)``;
    read from the installed pymatgen at run time.  Use it to reproduce
    :class:`pymatgen.analysis.diffraction.xrd.XRDCalculator` exactly.

Neutron coherent scattering lengths ``b_c`` (fm) are from Sears, Neutron News
3 (1992) 26, via the periodictable package (vendored).

All functions are differentiable w.r.t. ``q`` and work on any device/dtype.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from . import _tables

#: Largest atomic number with an X-ray form factor in the default table.
MAX_Z = max(_tables.WK)
_FOUR_PI = 4.0 * math.pi


def symbol(z: int) -> str:
    """Element symbol of atomic number ``z``."""
    return _tables.SYMBOLS[int(z)]


@cache
def _wk_numpy():
    import numpy as np

    tab = np.full((MAX_Z + 1, 11), np.nan)
    for z, row in _tables.WK.items():
        tab[z] = row[1:]
    return tab


@cache
def _pymatgen_numpy():
    """(Z, 4, 2) array of pymatgen's (a_i, b_i) and the valid-Z mask."""
    import numpy as np
    from pymatgen.analysis.diffraction.xrd import ATOMIC_SCATTERING_PARAMS

    zmax = 118
    tab = np.full((zmax + 1, 4, 2), np.nan)
    for sym, coeff in ATOMIC_SCATTERING_PARAMS.items():
        z = next((k for k, v in _tables.SYMBOLS.items() if v == sym), None)
        if z is None:
            continue
        c = np.asarray(coeff, dtype=float)
        tab[z, : len(c)] = c
    return tab


_TENSOR_CACHE: dict = {}


def _table_tensor(table: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (table, dtype, str(device))
    t = _TENSOR_CACHE.get(key)
    if t is None:
        if table == "wk":
            arr = _wk_numpy()
        elif table == "pymatgen":
            arr = _pymatgen_numpy()
        else:
            raise ValueError(f"table: unknown form-factor table {table!r}; use 'wk' or 'pymatgen'")
        t = torch.as_tensor(arr, dtype=dtype, device=device)
        _TENSOR_CACHE[key] = t
    return t


def _check_numbers(numbers: torch.Tensor, zmax: int, what: str) -> None:
    if numbers.numel() == 0:
        return
    lo, hi = int(numbers.min()), int(numbers.max())
    if lo < 1 or hi > zmax:
        bad = lo if lo < 1 else hi
        raise ValueError(f"numbers: no {what} for atomic number {bad} (table covers Z=1..{zmax})")


def _as_q(q) -> torch.Tensor:
    """Q as a floating-point tensor (integers take the default float dtype)."""
    q = torch.as_tensor(q)
    return q if q.is_floating_point() else q.to(torch.get_default_dtype())


def xray_form_factor(numbers: torch.Tensor, q: torch.Tensor, *, table: str = "wk") -> torch.Tensor:
    """X-ray atomic form factors f0(Q) of neutral atoms, in electrons.

    Parameters
    ----------
    numbers : torch.LongTensor, shape (N,)
        Atomic numbers.
    q : torch.Tensor, shape (M,) or (N, M)
        Scattering vector magnitude Q = 4π sinθ/λ in Å⁻¹ (shared by all
        atoms, or one row per atom).
    table : {"wk", "pymatgen"}
        Coefficient table (see module docstring).

    Returns
    -------
    torch.Tensor, shape (N, M)
    """
    q = _as_q(q)
    numbers = torch.as_tensor(numbers, device=q.device).long()
    tab = _table_tensor(table, q.dtype, q.device)
    if table == "wk":
        _check_numbers(numbers, MAX_Z, "X-ray form factor (Waasmaier-Kirfel)")
        coef = tab[numbers]  # (N, 11): a1..a5, c, b1..b5
        s2 = (q / _FOUR_PI) ** 2
        s2 = s2.unsqueeze(-1) if s2.dim() == 2 else s2[None, :, None]  # (N|1, M, 1)
        a, c, b = coef[:, None, :5], coef[:, None, 5], coef[:, None, 6:]
        return c + (a * torch.exp(-b * s2)).sum(-1)
    coef = tab[numbers]  # (N, 4, 2)
    if torch.isnan(coef[:, 0, 0]).any():
        bad = int(numbers[torch.isnan(coef[:, 0, 0])][0])
        raise ValueError(f"numbers: pymatgen has no X-ray scattering coefficients for Z={bad}")
    s2 = (q / _FOUR_PI) ** 2
    s2 = s2.unsqueeze(-1) if s2.dim() == 2 else s2[None, :, None]
    a, b = coef[:, None, :, 0], coef[:, None, :, 1]
    a = torch.nan_to_num(a)  # elements with fewer than 4 terms
    b = torch.nan_to_num(b)
    z = numbers.to(q.dtype)[:, None]
    return z - 41.78214 * s2[..., 0] * (a * torch.exp(-b * s2)).sum(-1)


@cache
def _neutron_numpy():
    import numpy as np

    tab = np.full(119, np.nan)
    for z, b in _tables.NEUTRON_B.items():
        tab[z] = b
    return tab


def neutron_length(numbers: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Bound coherent neutron scattering lengths b_c in fm, shape (N,).

    Raises
    ------
    ValueError
        For an atomic number without a tabulated length.
    """
    numbers = torch.as_tensor(numbers).long()
    dtype = dtype or torch.get_default_dtype()
    _check_numbers(numbers, 118, "neutron scattering length")
    key = ("neutron", dtype, str(numbers.device))
    tab = _TENSOR_CACHE.get(key)
    if tab is None:
        tab = _TENSOR_CACHE[key] = torch.as_tensor(_neutron_numpy(), dtype=dtype, device=numbers.device)
    b = tab[numbers]
    if torch.isnan(b).any():
        bad = int(numbers[torch.isnan(b)][0])
        raise ValueError(f"numbers: no neutron scattering length tabulated for {symbol(bad)} (Z={bad})")
    return b


def scattering_factor(
    numbers: torch.Tensor, q: torch.Tensor, radiation: str = "xray", *, table: str = "wk"
) -> torch.Tensor:
    """Scattering factor per atom and Q: f0(Q) in electrons (X-ray) or b_c in fm (neutron).

    Returns
    -------
    torch.Tensor, shape (N, M)
    """
    q = _as_q(q)
    if radiation == "xray":
        return xray_form_factor(numbers, q, table=table)
    if radiation == "neutron":
        b = neutron_length(torch.as_tensor(numbers, device=q.device), dtype=q.dtype)
        m = q.shape[-1]
        return b[:, None].expand(-1, m)
    raise ValueError(f"radiation: must be 'xray' or 'neutron', got {radiation!r}")


def forward_weight(numbers: torch.Tensor, radiation: str = "xray", *, dtype=None, device=None) -> torch.Tensor:
    """Q = 0 scattering power per atom (f0(0) ≈ Z for X-rays, b_c for neutrons), shape (N,).

    Used as the pair weight of real-space PDFs (the srreal/PDFgui convention).
    X-ray weights are the atomic number Z, which is what pdffit2 uses
    (f0(0) of the WK table differs from Z by < 0.3 %).
    """
    numbers = torch.as_tensor(numbers, device=device).long()
    dtype = dtype or torch.get_default_dtype()
    if radiation == "xray":
        _check_numbers(numbers, 118, "X-ray scattering factor")
        return numbers.to(dtype)
    if radiation == "neutron":
        return neutron_length(numbers, dtype=dtype)
    raise ValueError(f"radiation: must be 'xray' or 'neutron', got {radiation!r}")
