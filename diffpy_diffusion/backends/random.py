"""The ``random`` backend: symmetry-constrained random structures (an AIRSS-like baseline).

Each proposal draws

1. the formula units Z per cell (uniform over those with ``Z × atoms-per-formula ≤
   max_atoms``, or the observation's ``z`` when given);
2. a space group: the observation's hint, else from MP-20's space-group frequencies
   (:mod:`.priors`), restricted to the hinted crystal system when one is given, and to
   groups whose Wyckoff positions can hold the composition;
3. Wyckoff positions filled to match the composition and random free coordinates
   (`pyxtal <https://github.com/MaterSim/PyXtal>`_ does the Wyckoff book-keeping);
4. the cell volume from the sum of atomic volumes (×0.9–1.15), and a minimum-distance
   check (no pair closer than 0.55 × the sum of atomic radii, nor than 0.5 Å).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from functools import cache, lru_cache

import numpy as np

from ..errors import BackendError
from ..hookspecs import hookimpl
from ..types import Observation, Proposal, integer_counts
from .common import crystal_system, spacegroup_number
from .priors import estimated_volume, spacegroup_weights

__version__ = "0.1.0"

#: Minimum pair distance as a fraction of the sum of the two atomic radii.
MIN_DIST_FACTOR = 0.55
#: Absolute minimum pair distance, Å.
MIN_DIST_ABS = 0.5


@lru_cache(maxsize=256)
def _group(sg: int):
    from pyxtal.symmetry import Group

    return Group(int(sg))


@lru_cache(maxsize=4096)
def _compatible(sg: int, counts: tuple[int, ...]) -> bool:
    try:
        ok = _group(sg).check_compatible(list(counts))
    except Exception:  # noqa: BLE001 - pyxtal raises on odd inputs
        return False
    return bool(ok[0] if isinstance(ok, tuple) else ok)


@cache
def _radius(symbol: str) -> float:
    from pymatgen.core.periodic_table import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        el = Element(symbol)
        r = el.atomic_radius or el.atomic_radius_calculated or 1.5
    return float(r)


def min_distance_ok(structure, factor: float = MIN_DIST_FACTOR, floor: float = MIN_DIST_ABS) -> bool:
    """True when no two atoms (periodic images included) are closer than the thresholds."""
    if len(structure) == 1:
        # only self-images: the shortest lattice vector
        return float(min(structure.lattice.abc)) > floor
    dm = structure.distance_matrix
    rad = np.array([_radius(sp.symbol) for sp in structure.species])
    lim = np.maximum(factor * (rad[:, None] + rad[None, :]), floor)
    np.fill_diagonal(dm, np.inf)
    np.fill_diagonal(lim, 0.0)
    if (dm < lim).any():
        return False
    return float(min(structure.lattice.abc)) > floor


def _speed_up_pyxtal() -> None:
    """Give pyxtal's image check one shared tolerance matrix.

    ``pyxtal.operations.check_images`` builds a new ``Tol_matrix`` (≈ 10 ms) on every
    call when none is passed, which was 60 % of the generation time; the default it
    builds is the same every time, so one shared instance changes nothing else.
    """
    import pyxtal.symmetry as sym

    if getattr(sym.check_images, "_diffpy_shared_tm", False):
        return
    from pyxtal.tolerance import Tol_matrix

    orig = sym.check_images
    tm = Tol_matrix(prototype="atomic")

    def check_images(*args, **kwargs):
        if kwargs.get("tm") is None and len(args) < 5:
            kwargs["tm"] = tm
        return orig(*args, **kwargs)

    check_images._diffpy_shared_tm = True
    sym.check_images = check_images


class RandomBackend:
    """Random symmetric structures with the observation's composition.

    Parameters
    ----------
    max_tries : int
        Attempts per requested proposal before giving up (pyxtal fails for some
        space-group/Z combinations).
    volume_range : (float, float)
        Random factor applied to the estimated volume.
    """

    name = "random"
    version = __version__
    capabilities = {"composition", "spacegroup"}

    def __init__(self, max_tries: int = 20, volume_range: tuple[float, float] = (0.9, 1.15), **_ignored):
        self.max_tries = int(max_tries)
        self.volume_range = tuple(float(v) for v in volume_range)

    def _plan(self, observation: Observation):
        target = integer_counts(observation.composition)
        per_f = sum(target.values())
        if observation.z:
            zs = [int(observation.z)]
        else:
            zs = [z for z in range(1, observation.max_atoms // per_f + 1)]
        zs = [z for z in zs if z * per_f <= observation.max_atoms]
        if not zs:
            raise BackendError(
                f"random: {observation.formula} has {per_f} atoms per formula unit, more than the cap "
                f"of {observation.max_atoms} atoms per cell (raise --max-atoms)"
            )
        w = spacegroup_weights().copy()
        hint = spacegroup_number(observation.spacegroup)
        if hint:
            w[:] = 0.0
            w[hint - 1] = 1.0
        elif observation.crystal_system:
            cs = observation.crystal_system.lower()
            for g in range(1, 231):
                if crystal_system(g) != cs:
                    w[g - 1] = 0.0
        return target, zs, w / w.sum(), hint

    @staticmethod
    def _draw(rng, target, zs, w, hint, cache: dict):
        """Draw (Z, space group) from the prior, rejecting groups that cannot hold the cell.

        Rejection sampling builds pyxtal ``Group`` objects only for groups actually drawn
        (building all 230 costs seconds).
        """
        for _ in range(200):
            z = int(zs[rng.integers(len(zs))])
            g = int(rng.choice(230, p=w)) + 1
            counts = tuple(n * z for n in target.values())
            if _compatible(g, counts):
                return z, g
        # rare compositions: enumerate once, then draw among what fits
        if "options" not in cache:
            opts = [(z, g) for z in zs for g in np.nonzero(w)[0] + 1
                    if _compatible(int(g), tuple(n * z for n in target.values()))]
            cache["options"] = opts
        opts = cache["options"]
        if not opts:
            raise BackendError(
                f"random: no space group{' ' + str(hint) if hint else ''} can hold "
                f"{''.join(f'{k}{v}' for k, v in target.items())} with Z in {zs} "
                "(Wyckoff multiplicities do not fit)"
            )
        pw = np.array([w[g - 1] for _, g in opts])
        z, g = opts[rng.choice(len(opts), p=pw / pw.sum())]
        return int(z), int(g)

    def sample(self, observation: Observation, n: int, *, seed: int | None = None, progress=None) -> list[Proposal]:
        """``n`` random symmetric structures (fewer only when pyxtal fails ``max_tries × n`` times)."""
        from pymatgen.core import Lattice, Structure
        from pyxtal import pyxtal

        _speed_up_pyxtal()
        target, zs, w, hint = self._plan(observation)
        rng = np.random.default_rng(seed)
        cache: dict = {}
        species = list(target)
        out: list[Proposal] = []
        tries = 0
        while len(out) < n and tries < self.max_tries * max(n, 1):
            tries += 1
            z, sg = self._draw(rng, target, zs, w, hint, cache)
            counts = [target[el] * z for el in species]
            c = pyxtal()
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    c.from_random(3, sg, species, counts, random_state=int(rng.integers(2**31)))
                if not c.valid:
                    continue
                s = c.to_pymatgen()
            except Exception:  # noqa: BLE001 - pyxtal gives up on some draws; draw again
                continue
            vol = estimated_volume(dict(zip(species, counts))) * rng.uniform(*self.volume_range)
            s = Structure(Lattice(s.lattice.matrix * (vol / s.volume) ** (1 / 3)), s.species, s.frac_coords)
            if Counter(sp.symbol for sp in s.species) != Counter(dict(zip(species, counts))):
                continue
            if not min_distance_ok(s):
                continue
            out.append(Proposal(structure=s, backend=self.name, seed=seed,
                                provenance={"spacegroup": sg, "z": z,
                                            "generate_s": round(time.perf_counter() - t0, 4)}))
            if progress:
                progress(1)
        if not out:
            raise BackendError(f"random: could not build any structure for {observation.formula}")
        return out


@hookimpl
def register_backends(register):
    """Register the ``random`` backend."""
    register("random", RandomBackend)


