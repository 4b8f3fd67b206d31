"""CIF symmetry operations parsed without ``eval``.

diffpy.structure's CIF parser turns the translation part of every
``_symmetry_equiv_pos_as_xyz`` string into a number with ``eval``, so a CIF
whose operation reads ``x,y,z+__import__("os").mkdir("...")`` runs code when
loaded.  :func:`install_safe_cif_symops` replaces that function (in
``diffpy.structure.parsers.p_cif``, for the whole process) with
:func:`safe_getsymop`, which accepts only numbers and fractions and raises
``ValueError`` (a CIF syntax error for the parser) for anything else.
:func:`~diffpy_diffusion.io.structures.read_structure` installs it before it
hands a file to diffpy.structure.
"""

from __future__ import annotations

import re

__all__ = ["safe_getsymop", "install_safe_cif_symops"]
_TERM = re.compile(r"[+-]?[^+-]+")
_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:/(\d+(?:\.\d*)?|\.\d+))?$")


def _translation(part: str, op: str) -> float:
    """``''``, ``'+1/2'``, ``'-0.25'``, ``'1/3+1/3'`` -> float; anything else is an error (never eval)."""
    if part in ("", "+", "-"):
        return 0.0
    terms = _TERM.findall(part)
    if "".join(terms) != part:
        raise ValueError(f"invalid symmetry operation {op!r}")
    total = 0.0
    for term in terms:
        sign = -1.0 if term[0] == "-" else 1.0
        body = term.lstrip("+-")
        m = _NUMBER.match(body)
        if not m:
            raise ValueError(f"invalid symmetry operation {op!r}: {body!r} is not a number or fraction")
        if m.group(2) is not None:
            num, den = body.split("/")
            if float(den) == 0:
                raise ValueError(f"invalid symmetry operation {op!r}: division by zero")
            total += sign * float(num) / float(den)
        else:
            total += sign * float(body)
    return total


def safe_getsymop(s: str):
    """Drop-in for ``diffpy.structure.parsers.p_cif.getSymOp`` without ``eval``.

    Parameters
    ----------
    s : str
        Equivalent position such as ``'x,1/2-y,1/2+z'``.

    Returns
    -------
    diffpy.structure.spacegroups.SymOp

    Raises
    ------
    ValueError
        Not three components, an unknown token, or a translation that is not
        a number or fraction.
    """
    import numpy as np
    from diffpy.structure.parsers import p_cif
    from diffpy.structure.spacegroups import SymOp

    text = str(s).replace(" ", "")
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"invalid symmetry operation {s!r}: expected three comma-separated components")
    rot = np.zeros((3, 3), dtype=float)
    t = np.zeros(3, dtype=float)
    for i, comp in enumerate(parts):
        pieces = re.split("(?i)([+-]?[xyz])", comp)
        for rpart in pieces[1::2]:
            rot[i, :] += p_cif.symvec[rpart.lower()]
        for tpart in pieces[::2]:
            t[i] += _translation(tpart, s)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"invalid symmetry operation {s!r}: translation is not finite")
    t -= np.floor(t)
    return SymOp(rot, t)


def install_safe_cif_symops() -> None:
    """Make diffpy.structure's CIF parser use :func:`safe_getsymop` (idempotent, process-wide)."""
    from diffpy.structure.parsers import p_cif

    if getattr(p_cif, "getSymOp", None) is not safe_getsymop:
        p_cif.getSymOp = safe_getsymop
