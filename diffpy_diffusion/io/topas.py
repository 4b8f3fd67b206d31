"""A small reader for TOPAS input/output files (``.inp``/``.out``): wavelengths, fit range, R factors, phases.

Only the keywords a Rietveld comparison needs are read: ``r_wp``/``r_exp`` (the
figures TOPAS writes at the top of an ``.out``), ``start_X``/``finish_X``, the
``lam`` emission lines (``la`` relative area, ``lo`` wavelength in Å), the
Chebyshev ``bkg`` order, and every ``str`` phase (cell, space group, sites with
occupancies) as a :class:`TopasPhase` that :meth:`TopasPhase.to_structure`
expands into a pymatgen structure.  TOPAS writes refined values as
``value`_esd`` and may put a parameter name (``lp1``, ``@``, ``!name``) before
the value; both are understood.  Macros, equations and anything else are
skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError
from .text import read_text

__all__ = ["TopasPhase", "TopasModel", "read_topas"]

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _value(tok: str) -> float | None:
    """The number in a TOPAS value token (``4.76`_0.0002`` -> 4.76; ``4.76_LIMIT_MAX_5`` -> 4.76), or None."""
    head = tok.split("`")[0].split("_LIMIT")[0]
    return float(head) if _NUMBER.match(head) else None


@dataclass
class TopasPhase:
    """One ``str`` block: cell (Å, degrees), space group (number or symbol) and sites.

    ``sites``: (label, element, x, y, z, occupancy) per site line, fractional coordinates.
    """

    name: str
    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0
    space_group: str = "1"
    sites: list[tuple[str, str, float, float, float, float]] = field(default_factory=list)
    line: int = 0

    def to_structure(self):
        """The full cell as a pymatgen Structure (sites on one position merged into one disordered site).

        The space group is expanded with pymatgen's ``Structure.from_spacegroup`` in its default
        setting for the number or symbol given (TOPAS's default is the same standard setting).
        """
        from pymatgen.core import Lattice, Structure

        if not self.sites:
            raise ValueError(f"phase {self.name}: no site lines")
        lat = Lattice.from_parameters(self.a, self.b, self.c, self.alpha, self.beta, self.gamma)

        def snap(v: float) -> float:
            # files round special positions (0.3333 for 1/3): snap to twelfths within 1e-4 so that the
            # space group does not generate near-duplicate atoms
            n = round(v * 12.0)
            return n / 12.0 if abs(v - n / 12.0) < 1e-4 else v

        merged: list[tuple[tuple[float, float, float], dict[str, float]]] = []
        for _label, el, x, y, z, occ in self.sites:
            x, y, z = snap(x), snap(y), snap(z)
            for pos, spec in merged:
                if max(abs(pos[0] - x), abs(pos[1] - y), abs(pos[2] - z)) < 1e-6:
                    spec[el] = spec.get(el, 0.0) + occ
                    break
            else:
                merged.append(((x, y, z), {el: occ}))
        sg = int(self.space_group) if self.space_group.isdigit() else self.space_group
        return Structure.from_spacegroup(sg, lat, [s for _, s in merged], [p for p, _ in merged])


@dataclass
class TopasModel:
    """What :func:`read_topas` found.

    Attributes
    ----------
    r_wp, r_exp : float or None
        TOPAS figures of merit in percent.
    start_x, finish_x : float or None
        Fit range (2θ degrees).
    emission : list of (relative area, wavelength Å)
        The ``lam`` lines, strongest first as written.
    nbkg : int
        Number of Chebyshev background coefficients.
    data_file : str or None
        The ``xdd`` file name.
    phases : list of TopasPhase
    """

    r_wp: float | None = None
    r_exp: float | None = None
    start_x: float | None = None
    finish_x: float | None = None
    emission: list[tuple[float, float]] = field(default_factory=list)
    nbkg: int = 0
    data_file: str | None = None
    phases: list[TopasPhase] = field(default_factory=list)

    @property
    def wavelength(self) -> float | None:
        """Wavelength (Å) of the first emission line."""
        return self.emission[0][1] if self.emission else None

    @property
    def wavelength2(self) -> float | None:
        """Wavelength (Å) of the second emission line (Kα2), None when monochromatic."""
        return self.emission[1][1] if len(self.emission) > 1 else None

    @property
    def ka2_ratio(self) -> float:
        """Area of the second emission line relative to the first (0 when there is none)."""
        if len(self.emission) < 2 or self.emission[0][0] <= 0:
            return 0.0
        return self.emission[1][0] / self.emission[0][0]


def _tokens(text: str):
    """(token, line number) pairs; ``'`` comments and ``/* */`` blocks dropped, braces kept apart."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("'", 1)[0]
        for tok in re.sub(r"([{}()])", r" \1 ", line).split():
            yield tok, n


def read_topas(path) -> TopasModel:
    """Read a TOPAS ``.inp`` or ``.out`` file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    TopasModel

    Raises
    ------
    InputFileError
        A keyword this reader uses is followed by something that is not a number (file and line named).
    """
    p = Path(path)
    toks = list(_tokens(read_text(p)))
    model = TopasModel()
    phase: TopasPhase | None = None
    i = 0

    def number(j: int, what: str) -> tuple[float, int]:
        """The value after a keyword at j, skipping a parameter name (``lp1``, ``@``, ``!x``); (value, next j)."""
        k = j + 1
        for _ in range(2):
            if k < len(toks):
                v = _value(toks[k][0])
                if v is not None:
                    return v, k + 1
            k += 1
        line = toks[min(j, len(toks) - 1)][1]
        raise InputFileError(p, f"expected a number after {what!r}", line=line)

    while i < len(toks):
        tok, line = toks[i]
        low = tok.lower()
        if low in ("r_wp", "r_exp"):
            v, i = number(i, tok)
            setattr(model, low, v)
            continue
        if low in ("start_x", "finish_x"):
            v, i = number(i, tok)
            setattr(model, "start_x" if low == "start_x" else "finish_x", v)
            continue
        if low == "xdd" and i + 1 < len(toks):
            model.data_file = toks[i + 1][0].strip('"')
            i += 2
            continue
        if low == "la":
            area, i = number(i, "la")
            if i < len(toks) and toks[i][0].lower() == "lo":
                lo, i = number(i, "lo")
                model.emission.append((area, lo))
            continue
        if low == "bkg":
            k = i + 1
            n = 0
            while k < len(toks):
                t = toks[k][0]
                if _value(t) is not None:
                    n += 1
                elif not (t == "@" or t.startswith("!") or (n == 0 and re.match(r"^[A-Za-z_]\w*$", t))):
                    break
                k += 1
            model.nbkg = n
            i = k
            continue
        if low == "str":
            phase = TopasPhase(name=f"phase{len(model.phases) + 1}", a=0.0, b=0.0, c=0.0, line=line)
            model.phases.append(phase)
            i += 1
            continue
        if phase is not None:
            if low == "phase_name" and i + 1 < len(toks):
                phase.name = toks[i + 1][0].strip('"')
                i += 2
                continue
            if low == "space_group" and i + 1 < len(toks):
                phase.space_group = toks[i + 1][0].strip('"')
                i += 2
                continue
            if low in ("a", "b", "c", "al", "be", "ga"):
                v, i = number(i, tok)
                attr = {"al": "alpha", "be": "beta", "ga": "gamma"}.get(low, low)
                setattr(phase, attr, v)
                if low == "a":  # cubic/tetragonal files often give only a: b and c follow it until set
                    phase.b = phase.b or v
                    phase.c = phase.c or v
                continue
            if low == "site" and i + 1 < len(toks):
                label = toks[i + 1][0]
                xyz = {}
                j = i + 2
                for axis in ("x", "y", "z"):
                    if j < len(toks) and toks[j][0].lower() == axis:
                        xyz[axis], j = number(j, axis)
                    else:
                        raise InputFileError(p, f"site {label}: expected '{axis}' and a value", line=toks[j - 1][1])
                occs = []
                while j < len(toks) and toks[j][0].lower() == "occ":
                    if j + 2 >= len(toks):
                        raise InputFileError(p, f"site {label}: 'occ' needs an element and a value", line=line)
                    el = re.sub(r"[^A-Za-z].*$", "", toks[j + 1][0])
                    occ, j = number(j + 1, "occ " + toks[j + 1][0])
                    occs.append((el, occ))
                if not occs:
                    raise InputFileError(p, f"site {label}: no 'occ' (element and occupancy)", line=line)
                for el, occ in occs:
                    phase.sites.append((label, el, xyz["x"], xyz["y"], xyz["z"], occ))
                i = j
                continue
        i += 1
    for ph in model.phases:
        if not (ph.a > 0 and ph.b > 0 and ph.c > 0):
            raise InputFileError(p, f"phase {ph.name}: cell lengths a, b, c missing or not positive", line=ph.line)
    return model
