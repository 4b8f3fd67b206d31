"""The example backend and its hook implementation.

Import-time cost matters: ``diffpy-diffuse --help`` imports every plugin
module, so heavy imports (pymatgen here; torch in a neural backend) happen
inside :meth:`ExampleBackend.sample`, not at module level.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from diffpy_diffusion import hookimpl
from diffpy_diffusion.errors import BackendError

from . import __version__

#: Packing fraction used to turn atomic radii into a cell volume.
PACKING = 0.45
#: Minimum distance as a fraction of the sum of atomic radii.
MIN_DIST_FACTOR = 0.7


def integer_formula(composition: dict[str, float]) -> dict[str, int]:
    """Smallest integer formula unit, e.g. ``{"Ta": 0.5, "O": 1.25}`` -> ``{"Ta": 2, "O": 5}``."""
    fracs = {el: Fraction(amount).limit_denominator(12) for el, amount in composition.items()}
    for el, f in fracs.items():
        if abs(float(f) - composition[el]) > 1e-3 or f <= 0:
            raise BackendError(f"example backend: amount {composition[el]:g} of {el} is not a simple fraction")
    denom = math.lcm(*(f.denominator for f in fracs.values()))
    counts = {el: int(f * denom) for el, f in fracs.items()}
    g = math.gcd(*counts.values())
    return {el: c // g for el, c in counts.items()}


class ExampleBackend:
    """Random atoms in a random orthorhombic cell (composition only; a template, not a good sampler)."""

    name = "example"
    version = __version__
    capabilities = {"composition"}

    def __init__(self, packing: float = PACKING, min_dist_factor: float = MIN_DIST_FACTOR, max_tries: int = 200):
        self.packing = float(packing)
        self.min_dist_factor = float(min_dist_factor)
        self.max_tries = int(max_tries)

    def _one(self, counts, z, rng):
        from pymatgen.core import Element, Lattice, Structure

        species = [el for el, c in counts.items() for _ in range(c * z)]
        radii = np.array([Element(el).atomic_radius or 1.5 for el in species], dtype=float)
        volume = float(np.sum(4.0 / 3.0 * np.pi * radii**3) / self.packing)
        for _attempt in range(20):
            ratios = rng.uniform(0.8, 1.25, size=3)
            abc = ratios * (volume / np.prod(ratios)) ** (1.0 / 3.0)
            lattice = Lattice.orthorhombic(*abc)
            frac: list[np.ndarray] = []
            ok = True
            for i in range(len(species)):
                for _ in range(self.max_tries):
                    p = rng.random(3)
                    if not frac:
                        break
                    d = np.asarray(frac) - p
                    d -= np.round(d)
                    dist = np.linalg.norm(d @ lattice.matrix, axis=1)
                    if np.all(dist > self.min_dist_factor * (radii[: len(frac)] + radii[i])):
                        break
                else:
                    ok = False
                    break
                frac.append(p)
            if ok:
                return Structure(lattice, species, frac)
            volume *= 1.1  # too crowded: a slightly bigger cell
        raise BackendError("example backend: could not place the atoms without overlaps")

    def sample(self, observation, n, *, seed=None, progress=None):
        """Return ``n`` random structures with the observation's composition (see the hookspec)."""
        from diffpy_diffusion.types import Proposal

        if not observation.composition:
            raise BackendError("example backend needs a composition (--composition)")
        counts = integer_formula(observation.composition)
        per_fu = sum(counts.values())
        if observation.z:
            zs = [int(observation.z)]
        else:
            zs = [z for z in range(1, 9) if z * per_fu <= observation.max_atoms]
        if not zs or zs[0] * per_fu > observation.max_atoms:
            raise BackendError(f"example backend: {per_fu} atoms per formula unit do not fit in "
                               f"max_atoms={observation.max_atoms}; raise --max-atoms")
        base = np.random.SeedSequence(seed)
        out = []
        for i, child in enumerate(base.spawn(int(n))):
            rng = np.random.default_rng(child)
            z = int(rng.choice(zs))
            s = self._one(counts, z, rng)
            out.append(Proposal(structure=s, backend=self.name, seed=None if seed is None else int(seed) * 100003 + i,
                                provenance={"backend_version": self.version, "z": z}))
            if progress is not None:
                progress(1)
        return out


@hookimpl
def register_backends(register):
    register("example", ExampleBackend)
