"""The two objects that flow through the pipeline: :class:`Observation` and :class:`Proposal`.

Data flows one way: ``io`` -> :class:`Observation` -> backend -> ``screen`` ->
``refine`` -> ``report``.  Both classes are plain dataclasses holding numpy
arrays and pymatgen objects; nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import CompositionError

PatternKind = Literal["xrd", "pdf"]
XKind = Literal["2theta", "q", "r"]
Radiation = Literal["xray", "neutron"]

#: Named X-ray tube wavelengths in Å (Kα1, Kα2, Kα2/Kα1 intensity ratio).
#: Source: International Tables for Crystallography Vol. C, Table 4.2.2.1
#: (the values pymatgen's ``WAVELENGTHS`` also uses).
TUBE_WAVELENGTHS: dict[str, tuple[float, float, float]] = {
    "CuKa": (1.540598, 1.544426, 0.5),
    "MoKa": (0.709319, 0.713609, 0.5),
    "CoKa": (1.788996, 1.792850, 0.5),
    "FeKa": (1.936042, 1.939980, 0.5),
    "CrKa": (2.289760, 2.293663, 0.5),
    "AgKa": (0.559421, 0.563813, 0.5),
}

_ELEMENT_SYMBOL = re.compile(r"[A-Z][a-z]?")
_COUNT = re.compile(r"\d*\.?\d*")


def parse_composition(text: str) -> dict[str, float]:
    """Parse a chemical formula such as ``"CdSe"``, ``"Ba2TiO4"``, ``"Cd Se"`` or ``"Sr(FeAs)2"``.

    Parameters
    ----------
    text : str
        Formula; element symbols followed by optional (possibly fractional)
        counts, with round-bracket groups that may carry a count (the form
        pymatgen's ``reduced_formula`` prints).  Whitespace between tokens is
        allowed.

    Returns
    -------
    dict
        Element symbol -> amount, in order of first appearance (repeated
        elements are summed).

    Raises
    ------
    CompositionError
        With the offending position, e.g. ``Cd2Se3x`` -> "unexpected 'x' at
        position 7".
    """
    from pymatgen.core.periodic_table import Element

    if not isinstance(text, str) or not text.strip():
        raise CompositionError("empty composition: give a formula such as 'CdSe'")
    s = text

    def count_at(pos: int, what: str) -> tuple[float, int]:
        m = _COUNT.match(s, pos)
        num = m.group(0)
        try:
            amount = float(num) if num else 1.0
        except ValueError:
            raise CompositionError(f"composition {text!r}: bad count {num!r} at position {pos + 1}") from None
        if not np.isfinite(amount) or amount <= 0:
            raise CompositionError(f"composition {text!r}: count of {what} must be positive, got {num!r}")
        return amount, m.end()

    # A stack of groups; each "(" opens one, ")" closes it and multiplies it into its parent.
    stack: list[tuple[dict[str, float], int]] = [({}, -1)]
    pos = 0
    while pos < len(s):
        c = s[pos]
        if c.isspace():
            pos += 1
        elif c == "(":
            stack.append(({}, pos))
            pos += 1
        elif c == ")":
            if len(stack) == 1:
                raise CompositionError(f"composition {text!r}: unmatched ')' at position {pos + 1}")
            group, opened = stack.pop()
            if not group:
                raise CompositionError(f"composition {text!r}: empty group at position {opened + 1}")
            mult, pos = count_at(pos + 1, "the group")
            parent = stack[-1][0]
            for el, n in group.items():
                parent[el] = parent.get(el, 0.0) + n * mult
        else:
            m = _ELEMENT_SYMBOL.match(s, pos)
            if not m:
                raise CompositionError(
                    f"composition {text!r}: unexpected {c!r} at position {pos + 1}; "
                    "expected an element symbol such as 'Cd' (capital letter first)"
                )
            sym = m.group(0)
            if not Element.is_valid_symbol(sym):
                raise CompositionError(f"composition {text!r}: unknown element {sym!r} at position {pos + 1}")
            amount, pos = count_at(m.end(), sym)
            group = stack[-1][0]
            group[sym] = group.get(sym, 0.0) + amount
    if len(stack) > 1:
        raise CompositionError(f"composition {text!r}: '(' at position {stack[-1][1] + 1} is never closed")
    return stack[0][0]


def integer_counts(composition: dict[str, float], max_mult: int = 100) -> dict[str, int]:
    """Smallest integer multiple of a composition (``{"Ti":1,"O":2}`` stays; ``{"Fe":0.5,"O":0.75}`` -> 2, 3).

    Raises
    ------
    CompositionError
        When no multiple up to ``max_mult`` makes every amount integral.
    """
    from functools import reduce
    from math import gcd

    for m in range(1, max_mult + 1):
        vals = [v * m for v in composition.values()]
        if all(abs(v - round(v)) < 1e-6 for v in vals):
            ints = [int(round(v)) for v in vals]
            g = reduce(gcd, ints)
            return {el: n // g for el, n in zip(composition, ints)}
    raise CompositionError(
        f"composition {composition}: amounts are not a ratio of small integers; "
        "give an ordered (stoichiometric) formula"
    )


def composition_formula(comp: dict[str, float]) -> str:
    """Format a composition dict back into a compact formula string (``{"Cd":1,"Se":1}`` -> ``"CdSe"``)."""
    parts = []
    for el, n in comp.items():
        if abs(n - 1) < 1e-9:
            parts.append(el)
        elif abs(n - round(n)) < 1e-9:
            parts.append(f"{el}{int(round(n))}")
        else:
            parts.append(f"{el}{np.format_float_positional(n, trim='-')}")  # no exponent: must re-parse
    return "".join(parts)


@dataclass
class Observation:
    """A measured or simulated pattern plus what the user knows about the sample.

    Attributes
    ----------
    kind : {"xrd", "pdf"}
        Powder X-ray/neutron diffraction pattern, or pair distribution function G(r).
    x : numpy.ndarray
        Abscissa: 2θ in degrees (``x_kind="2theta"``), Q in Å⁻¹ (``"q"``), or r in Å (``"r"``, PDF).
    y : numpy.ndarray
        Intensity (arbitrary units) or G(r) in Å⁻².
    x_kind : {"2theta", "q", "r"}
    composition : dict
        Element -> amount (formula units; the backend enumerates Z).
    sigma : numpy.ndarray, optional
        One-standard-deviation uncertainties of ``y``.
    wavelength : float, optional
        Kα1 (or monochromatic) wavelength in Å. Needed for 2θ data.
    wavelength2 : float, optional
        Kα2 wavelength in Å when the source is a doublet tube (``None`` = monochromatic).
    ka2_ratio : float
        Kα2/Kα1 intensity ratio (0.5 for Cu).
    radiation : {"xray", "neutron"}
    size_nm : float, optional
        Crystallite (XRD) or particle (PDF, spdiameter) diameter in nm, when known.
    qmax, qmin, qdamp, qbroad : float, optional
        PDF instrument parameters in Å⁻¹ (from the .gr header when present).
    spacegroup : int or str, optional
        Space-group hint (number or Hermann–Mauguin symbol).
    crystal_system : str, optional
        Crystal-system hint, e.g. ``"cubic"``.
    z : int, optional
        Formula units per cell, when known.
    max_atoms : int
        Cap on atoms per cell the backends may propose.
    source : str, optional
        Path of the file the data came from.
    meta : dict
        Anything else read from headers.
    """

    kind: PatternKind
    x: np.ndarray
    y: np.ndarray
    x_kind: XKind
    composition: dict[str, float] = field(default_factory=dict)
    sigma: np.ndarray | None = None
    wavelength: float | None = None
    wavelength2: float | None = None
    ka2_ratio: float = 0.5
    radiation: Radiation = "xray"
    size_nm: float | None = None
    qmax: float | None = None
    qmin: float | None = None
    qdamp: float | None = None
    qbroad: float | None = None
    spacegroup: int | str | None = None
    crystal_system: str | None = None
    z: int | None = None
    max_atoms: int = 20
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=float)
        self.y = np.asarray(self.y, dtype=float)
        if self.sigma is not None:
            self.sigma = np.asarray(self.sigma, dtype=float)
        if isinstance(self.composition, str):
            self.composition = parse_composition(self.composition)
        if self.kind not in ("xrd", "pdf"):
            raise ValueError(f"kind must be 'xrd' or 'pdf', got {self.kind!r}")
        if self.x_kind not in ("2theta", "q", "r"):
            raise ValueError(f"x_kind must be '2theta', 'q' or 'r', got {self.x_kind!r}")
        if self.kind == "pdf" and self.x_kind != "r":
            raise ValueError("a PDF observation needs x_kind='r' (r in Å)")
        if self.kind == "xrd" and self.x_kind == "r":
            raise ValueError("an XRD observation needs x_kind '2theta' or 'q'")
        if self.x.shape != self.y.shape or self.x.ndim != 1:
            raise ValueError(
                f"x and y must be 1-D arrays of equal length, got {self.x.shape} and {self.y.shape}"
            )
        if self.radiation not in ("xray", "neutron"):
            raise ValueError(f"radiation must be 'xray' or 'neutron', got {self.radiation!r}")

    @property
    def formula(self) -> str:
        """The composition as a formula string."""
        return composition_formula(self.composition)

    def q(self) -> np.ndarray:
        """The abscissa as Q in Å⁻¹ (XRD only); needs ``wavelength`` for 2θ data."""
        if self.x_kind == "q":
            return self.x
        if self.x_kind == "2theta":
            if not self.wavelength:
                raise ValueError("2θ data needs a wavelength to convert to Q")
            return 4 * np.pi * np.sin(np.radians(self.x) / 2) / self.wavelength
        raise ValueError("a PDF observation has r, not Q, as abscissa")


@dataclass
class Proposal:
    """A candidate structure from a backend, and what screening/refinement made of it.

    Attributes
    ----------
    structure : pymatgen.core.Structure
        The candidate (after refinement, the refined structure).
    backend : str
        Name of the backend that proposed it.
    seed : int, optional
        Seed the backend used for this candidate.
    scores : dict
        Figures of merit, e.g. ``{"screen_rwp": 0.31, "rw": 0.12}`` (fractions, not %).
    refined : dict
        Refined parameter name -> ``{"value": v, "esd": e}``.
    provenance : dict
        Backend version, options, timings...
    """

    structure: Any
    backend: str
    seed: int | None = None
    scores: dict[str, float] = field(default_factory=dict)
    refined: dict[str, dict[str, float]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> Proposal:
        """An independent copy: structure and the score/refined/provenance dicts (one level) copied."""
        return Proposal(structure=self.structure.copy(), backend=self.backend, seed=self.seed, scores=dict(self.scores),
                        refined=dict(self.refined), provenance=dict(self.provenance))

    @property
    def formula(self) -> str:
        return self.structure.composition.reduced_formula
