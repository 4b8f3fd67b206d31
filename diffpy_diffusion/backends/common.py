"""Helpers that several backends share: space-group hints, crystal systems, option parsing.

Kept public here so that no backend imports another backend's private names.
"""

from __future__ import annotations

import numpy as np

from ..errors import CompositionError

__all__ = ["CRYSTAL_SYSTEM_LIMITS", "as_bool", "crystal_system", "spacegroup_number"]

#: Highest space-group number of each crystal system (International Tables for
#: Crystallography Vol. A, Table 2.1.2.1), in order of increasing number.
CRYSTAL_SYSTEM_LIMITS: tuple[tuple[int, str], ...] = (
    (2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
    (167, "trigonal"), (194, "hexagonal"), (230, "cubic"),
)


def spacegroup_number(sg: int | str | None) -> int | None:
    """The number (1-230) of a space-group hint given as a number, digits or a Hermann-Mauguin symbol.

    Parameters
    ----------
    sg : int, str or None
        ``225``, ``"225"``, ``"Fm-3m"``; ``None`` or ``""`` mean "no hint".

    Returns
    -------
    int or None

    Raises
    ------
    CompositionError
        A symbol pymatgen does not know (the message names it).
    """
    if sg in (None, ""):
        return None
    if isinstance(sg, (int, np.integer)):
        return int(sg)
    s = str(sg).strip()
    if s.isdigit():
        return int(s)
    from pymatgen.symmetry.groups import SpaceGroup

    try:
        return int(SpaceGroup(s).int_number)
    except Exception:  # noqa: BLE001 - pymatgen raises several types for unknown symbols
        raise CompositionError(f"unknown space group {sg!r}") from None


def crystal_system(number: int) -> str:
    """Lower-case crystal system (``"cubic"``, ``"trigonal"``...) of space group ``number``.

    Numbers outside 1-230 give ``"triclinic"`` (the backends treat them as "no constraint").
    """
    n = int(number)
    for hi, name in CRYSTAL_SYSTEM_LIMITS:
        if n <= hi:
            return name
    return "triclinic"


def as_bool(value, name: str, backend: str) -> bool:
    """A backend option given as a bool or as text (``-O diffusion.pdf_condition=false``).

    ``bool("false")`` is True, so text is parsed; anything but yes/no words is a ``ValueError``
    naming the backend and the option.
    """
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{backend} backend: {name} must be true or false, got {value!r}")
    return bool(value)
