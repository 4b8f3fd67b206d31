"""Parsing of user-facing quantities: wavelengths (``1.5406``, ``CuKa``) and sizes (``3nm``, ``30A``)."""

from __future__ import annotations

import re

from ..types import TUBE_WAVELENGTHS


class Wavelength(float):
    """A wavelength in Å that behaves as a float and remembers a Kα2 line.

    Attributes
    ----------
    wavelength2 : float or None
        Kα2 wavelength in Å (``None`` for monochromatic radiation).
    ka2_ratio : float
        Kα2/Kα1 intensity ratio.
    label : str
        What the user wrote.
    """

    def __new__(cls, value: float, wavelength2: float | None = None, ka2_ratio: float = 0.5,
                label: str | None = None):
        obj = super().__new__(cls, value)
        obj.wavelength2 = wavelength2
        obj.ka2_ratio = ka2_ratio
        obj.label = label or f"{float(value):g} Å"
        return obj

    def __reduce__(self):
        return (Wavelength, (float(self), self.wavelength2, self.ka2_ratio, self.label))


_TUBES_LOWER = {k.lower(): k for k in TUBE_WAVELENGTHS}


def parse_wavelength(text: str | float) -> Wavelength:
    """Parse ``"1.5406"``, ``"1.5406A"``, ``"CuKa"`` (Kα1+Kα2), ``"CuKa1"`` (Kα1 only), ``"Cu"``, ``"MoKa"``...

    Raises
    ------
    ValueError
        With the list of known tube names.
    """
    if isinstance(text, (int, float)):
        v = float(text)
        if not 0.01 <= v <= 20:
            raise ValueError(f"wavelength {v:g} Å is outside 0.01-20 Å")
        return Wavelength(v)
    s = str(text).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(a|å|angstrom|nm|pm)?", s, re.I)
    if m:
        v = float(m.group(1))
        unit = (m.group(2) or "a").lower()
        v *= {"nm": 10.0, "pm": 0.01}.get(unit, 1.0)
        if not 0.01 <= v <= 20:
            raise ValueError(f"wavelength {s!r} = {v:g} Å is outside 0.01-20 Å")
        return Wavelength(v, label=s)
    key = re.sub(r"[\s_-]", "", s).lower().replace("alpha", "a").replace("α", "a")
    mono = key.endswith("ka1")
    if mono:
        key = key[:-1]
    if not key.endswith("ka"):
        key += "ka"
    if key in _TUBES_LOWER:
        l1, l2, ratio = TUBE_WAVELENGTHS[_TUBES_LOWER[key]]
        return Wavelength(l1, None if mono else l2, ratio, label=s)
    known = ", ".join(sorted(TUBE_WAVELENGTHS))
    raise ValueError(f"unknown wavelength {s!r}: give a number in Å (e.g. 1.5406) or a tube: {known} "
                     "(add 1, e.g. CuKa1, for Kα1 only)")


def parse_size_nm(text: str | float) -> float:
    """Parse a crystallite size: ``"3nm"``, ``"30A"``, ``"30 Å"``, ``"3"`` (nm) -> nm.

    Raises
    ------
    ValueError
        Unparseable or non-positive size.
    """
    if isinstance(text, (int, float)):
        v = float(text)
    else:
        s = str(text).strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(nm|a|å|angstrom|angstroms|um|µm)?", s, re.I)
        if not m:
            raise ValueError(f"size {s!r}: expected a number with unit nm or A, e.g. 3nm or 30A")
        v = float(m.group(1))
        unit = (m.group(2) or "nm").lower()
        v *= {"a": 0.1, "å": 0.1, "angstrom": 0.1, "angstroms": 0.1, "um": 1000.0, "µm": 1000.0}.get(unit, 1.0)
    if not 0 < v < float("inf"):
        raise ValueError(f"size must be positive and finite, got {text!r}")
    return v
