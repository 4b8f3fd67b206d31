"""Resource caps: the largest inputs diffpy-diffusion accepts, and how to raise them.

A cap protects a shared machine from a typo (``--n 10000000``) or a hostile
file (a 5-million-row "pattern"); it is not a limit of the method.  Each cap
has a default sized so that the largest allowed input stays within a few GB
of memory (figures in ``docs/reliability.md``), and can be raised through an
environment variable -- or, where there is one, a command-line option -- that
the error message names.

========================  ==========  ===========================================  ==========================
cap                       default     raise with                                   checked by
========================  ==========  ===========================================  ==========================
atoms per cell            200         ``--max-atoms`` (up to the cap),             ``check_atoms_per_cell``
                                      ``DIFFPY_DIFFUSION_MAX_ATOMS``
pattern points            1,000,000   ``DIFFPY_DIFFUSION_MAX_PATTERN_POINTS``      io readers
Debye cluster atoms       50,000      ``DIFFPY_DIFFUSION_MAX_DEBYE_ATOMS``         ``physics.debye``
candidates (``--n``)      2,000       ``DIFFPY_DIFFUSION_MAX_CANDIDATES``          ``pipeline.propose``
========================  ==========  ===========================================  ==========================

All checks raise :class:`~diffpy_diffusion.errors.ResourceLimitError` (a
``DiffpyDiffusionError``: the CLI prints one line and exits with status 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ResourceLimitError


@dataclass(frozen=True)
class Cap:
    """One resource cap: its default, the environment variable that overrides it, what it counts."""

    name: str
    default: int
    env: str
    unit: str
    option: str | None = None  # CLI option that sets the working value (within the cap)

    def value(self) -> int:
        """The cap in force: the environment variable when set to a positive integer, else the default."""
        raw = os.environ.get(self.env, "").strip().replace("_", "")
        if raw:
            try:
                v = int(float(raw))
            except ValueError:
                raise ResourceLimitError(f"{self.env}={raw!r} is not a number; unset it or give a positive integer")\
                    from None
            if v <= 0:
                raise ResourceLimitError(f"{self.env}={raw!r} must be a positive integer")
            return v
        return self.default

    def how_to_raise(self) -> str:
        opt = f"pass {self.option} (up to {self.value():,}) or " if self.option else ""
        return f"{opt}set {self.env}=N to raise the cap (see docs/reliability.md for the memory it needs)"


ATOMS_PER_CELL = Cap("atoms per cell", 200, "DIFFPY_DIFFUSION_MAX_ATOMS", "atoms", "--max-atoms")
PATTERN_POINTS = Cap("pattern points", 1_000_000, "DIFFPY_DIFFUSION_MAX_PATTERN_POINTS", "data points")
DEBYE_ATOMS = Cap("Debye cluster size", 50_000, "DIFFPY_DIFFUSION_MAX_DEBYE_ATOMS", "atoms")
CANDIDATES = Cap("candidate count", 2_000, "DIFFPY_DIFFUSION_MAX_CANDIDATES", "candidates", "--n")

ALL_CAPS = (ATOMS_PER_CELL, PATTERN_POINTS, DEBYE_ATOMS, CANDIDATES)


def _check(cap: Cap, n: int, what: str) -> int:
    n = int(n)
    limit = cap.value()
    if n > limit:
        raise ResourceLimitError(f"{what}: {n:,} {cap.unit} exceeds the {cap.name} cap of {limit:,}; "
                                 + cap.how_to_raise())
    return n


def check_atoms_per_cell(n: int, what: str = "structure") -> int:
    """Atoms in one unit cell (a proposal, a template, ``--max-atoms``)."""
    return _check(ATOMS_PER_CELL, n, what)


def check_pattern_points(n: int, what: str = "pattern") -> int:
    """Points of a measured or simulated pattern (rows of a data file, length of an x grid)."""
    return _check(PATTERN_POINTS, n, what)


def check_debye_atoms(n: int, what: str = "Debye cluster") -> int:
    """Atoms of a cluster for the Debye scattering equation (time O(N²), memory chunked)."""
    return _check(DEBYE_ATOMS, n, what)


def check_candidates(n: int, what: str = "--n") -> int:
    """Raw candidates per backend in one ``propose`` run."""
    return _check(CANDIDATES, n, what)


def caps() -> dict[str, dict]:
    """The caps in force (for ``results.json`` provenance and ``--json`` listings)."""
    return {c.name: {"value": c.value(), "default": c.default, "env": c.env, "option": c.option} for c in ALL_CAPS}
