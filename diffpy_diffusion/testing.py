"""Contract test kit for backend plugins.

Any backend -- built-in or third-party -- must honour the contract of
:func:`diffpy_diffusion.hookspecs.register_backends`.  This module checks it.
Use it from your plugin's tests in one of two ways::

    # 1. subclass the ready-made pytest class (collects ~8 tests)
    from diffpy_diffusion.testing import BackendContract

    class TestMySampler(BackendContract):
        backend_name = "mysampler"          # as registered
        compositions = ("NaCl", "CdSe")     # what your sampler supports
        n = 4                               # candidates per call (keep it small)

    # 2. or call the checks yourself
    from diffpy_diffusion.testing import check_backend
    def test_contract():
        check_backend("mysampler")

The contract checks use numpy and pymatgen only; a synthetic observation stands in
for real data (:func:`make_observation`).  :func:`noisy_pxrd` (a simulated pattern for
tests and benchmarks) also needs the physics module's torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .types import Observation, Proposal

ALLOWED_CAPABILITIES = frozenset({"composition", "xrd", "pdf", "spacegroup"})


def make_observation(composition: str = "NaCl", kind: str = "xrd", *, max_atoms: int = 20,
                     **fields: Any) -> Observation:
    """A synthetic observation: a few broad peaks on a 2θ grid (XRD, Cu Kα1) or a damped G(r) (PDF)."""
    if kind == "xrd":
        x = np.arange(10.0, 80.0, 0.05)
        y = 10.0 + sum(h * np.exp(-0.5 * ((x - c) / 0.6) ** 2) for c, h in ((27.3, 40), (31.7, 100), (45.5, 60)))
        return Observation(kind="xrd", x=x, y=y, x_kind="2theta", composition=composition,
                           wavelength=1.540598, max_atoms=max_atoms, source="<synthetic>", **fields)
    if kind == "pdf":
        r = np.arange(0.5, 20.0, 0.01)
        y = np.sin(2 * np.pi * r / 2.8) * np.exp(-r / 8.0)
        return Observation(kind="pdf", x=r, y=y, x_kind="r", composition=composition, qmax=25.0,
                           max_atoms=max_atoms, source="<synthetic>", **fields)
    raise ValueError(f"kind must be 'xrd' or 'pdf', got {kind!r}")


def noisy_pxrd(structure, *, size_nm: float = 3.0, noise: float = 0.01, seed: int = 0,
               two_theta_deg: tuple[float, float, float] = (10.0, 90.0, 0.02), ka2: bool = True,
               uiso: float = 0.008, size_hint: bool = False) -> Observation:
    """A simulated Cu Kα powder pattern of ``structure`` with a flat background and noise (tests, benchmarks).

    The physics module's own pattern (:func:`diffpy_diffusion.physics.xrd.xrd_pattern`) on
    ``np.arange(*two_theta_deg)``, Kα1 1.540598 Å (+ Kα2 1.544426 Å at half intensity with
    ``ka2``), Uiso ``uiso`` Å², scaled to a maximum of 1, plus 0.05 background and Gaussian
    noise of ``noise`` (fraction of the maximum).  ``size_hint`` puts ``size_nm`` into the
    observation, as a user who knows the crystallite size would.
    """
    import torch

    from .physics.crystal import CrystalBatch
    from .physics.xrd import xrd_pattern

    x = np.arange(*two_theta_deg)
    lam2 = {"wavelength2": 1.544426} if ka2 else {}
    b = CrystalBatch.from_structures([structure], uiso=uiso, dtype=torch.float64)
    y = xrd_pattern(b, x, wavelength=1.540598, size_nm=size_nm, **lam2)[0].numpy()
    y = y / y.max() + 0.05 + np.random.default_rng(seed).normal(0, noise, len(x))
    return Observation("xrd", x, y, "2theta", composition=structure.composition.reduced_formula,
                       wavelength=1.540598, **({**lam2, "ka2_ratio": 0.5} if ka2 else {}),
                       **({"size_nm": size_nm} if size_hint else {}))


def _resolve(backend_or_name, options: dict | None = None):
    if isinstance(backend_or_name, str):
        from . import plugins

        return plugins.get_backend(backend_or_name, **(options or {}))
    if callable(backend_or_name) and not hasattr(backend_or_name, "sample"):
        return backend_or_name(**(options or {}))
    return backend_or_name


def _fingerprint(structure) -> tuple:
    """Exact-ish identity of a structure for reproducibility checks (lattice + sorted sites)."""
    lat = np.round(np.asarray(structure.lattice.matrix, dtype=float), 6).ravel().tolist()
    sites = sorted((str(s.species), *np.round(np.mod(s.frac_coords, 1.0), 5).tolist()) for s in structure)
    return tuple(lat), tuple(sites)


def check_capabilities(backend) -> None:
    """``name``, ``version`` (str) and ``capabilities`` (a subset of the allowed set) are present."""
    assert isinstance(getattr(backend, "name", None), str) and backend.name, "backend.name must be a non-empty str"
    assert isinstance(getattr(backend, "version", None), str) and backend.version, \
        "backend.version must be a non-empty str"
    caps = getattr(backend, "capabilities", None)
    assert isinstance(caps, (set, frozenset)), f"backend.capabilities must be a set, got {type(caps).__name__}"
    unknown = set(caps) - ALLOWED_CAPABILITIES
    assert not unknown, f"unknown capabilities {sorted(unknown)}; allowed: {sorted(ALLOWED_CAPABILITIES)}"
    assert callable(getattr(backend, "sample", None)), "backend.sample must be callable"


def check_proposals(proposals, observation: Observation, n: int, backend_name: str | None = None) -> None:
    """Each item is a Proposal with a valid structure of exactly the composition, ≤ max_atoms atoms."""
    from pymatgen.core import Composition, Structure

    assert isinstance(proposals, list), f"sample() must return a list, got {type(proposals).__name__}"
    assert 1 <= len(proposals) <= n, f"sample(n={n}) returned {len(proposals)} proposals"
    target = Composition(observation.composition)
    for i, p in enumerate(proposals):
        assert isinstance(p, Proposal), f"item {i} is {type(p).__name__}, not Proposal"
        s = p.structure
        assert isinstance(s, Structure), f"proposal {i}: structure is {type(s).__name__}, not pymatgen Structure"
        assert len(s) <= observation.max_atoms, f"proposal {i}: {len(s)} atoms > max_atoms={observation.max_atoms}"
        assert s.is_ordered, f"proposal {i}: structure has partial occupancies"
        comp = s.composition
        z = comp.num_atoms / target.num_atoms
        assert abs(z - round(z)) < 1e-6 and round(z) >= 1, \
            f"proposal {i}: {comp.formula} is not an integer multiple of {target.formula}"
        assert comp.almost_equals(target * round(z), atol=1e-6), \
            f"proposal {i}: composition {comp.formula} != {round(z)} × {target.reduced_formula}"
        assert s.volume > 0 and np.all(np.isfinite(s.lattice.matrix)), f"proposal {i}: degenerate lattice"
        assert np.all(np.isfinite(s.frac_coords)), f"proposal {i}: non-finite coordinates"
        if len(s) > 1:
            dm = s.distance_matrix
            np.fill_diagonal(dm, np.inf)
            assert dm.min() > 0.3, f"proposal {i}: two atoms only {dm.min():.2f} Å apart"
        if backend_name is not None:
            assert p.backend.split("+")[0] == backend_name or backend_name in p.backend, \
                f"proposal {i}: backend field {p.backend!r} != {backend_name!r}"


def check_seed(backend, observation: Observation, n: int = 3) -> None:
    """Same seed -> same structures; a different seed -> at least one different structure."""
    a = backend.sample(observation, n, seed=1234)
    b = backend.sample(observation, n, seed=1234)
    assert [_fingerprint(p.structure) for p in a] == [_fingerprint(p.structure) for p in b], \
        "sample() with the same seed returned different structures"
    c = backend.sample(observation, n, seed=4321)
    if len({_fingerprint(p.structure) for p in a + c}) > 1:
        return
    # a backend whose output is fully determined (e.g. templates) may legitimately repeat itself
    assert len(a) >= 1


def check_progress(backend, observation: Observation, n: int = 3) -> None:
    """``progress`` is called with integer advances and ``progress=None`` is accepted."""
    calls: list[int] = []
    out = backend.sample(observation, n, seed=0, progress=calls.append)
    assert all(isinstance(k, (int, np.integer)) and k >= 0 for k in calls), f"progress got {calls!r}"
    assert sum(calls) <= max(n, len(out)) * 10, "progress advanced far beyond n"
    backend.sample(observation, n, seed=0, progress=None)


def check_composition_errors(backend) -> None:
    """A composition that cannot fit ``max_atoms`` gives a BackendError (not a crash or a wrong answer)."""
    from .errors import BackendError, DiffpyDiffusionError

    obs = make_observation("Ba2TiO4", max_atoms=3)
    try:
        out = backend.sample(obs, 2, seed=0)
    except (BackendError, DiffpyDiffusionError, ValueError):
        return
    assert out == [] or all(len(p.structure) <= 3 for p in out), \
        "sample() ignored max_atoms for a composition that cannot fit"


def check_backend(backend_or_name, *, compositions: Iterable[str] = ("NaCl", "CdSe"), n: int = 4,
                  kinds: Iterable[str] = ("xrd",), options: dict | None = None) -> None:
    """Run every contract check; raises AssertionError naming the first failure."""
    backend = _resolve(backend_or_name, options)
    check_capabilities(backend)
    name = backend_or_name if isinstance(backend_or_name, str) else getattr(backend, "name", None)
    for kind in kinds:
        for comp in compositions:
            obs = make_observation(comp, kind)
            check_proposals(backend.sample(obs, n, seed=0), obs, n, name)
    obs = make_observation(next(iter(compositions)), next(iter(kinds)))
    check_seed(backend, obs, min(n, 3))
    check_progress(backend, obs, min(n, 3))
    check_composition_errors(backend)


class BackendContract:
    """Pytest base class: subclass it, set ``backend_name``, and the contract tests are collected.

    Attributes
    ----------
    backend_name : str
        Registered name (the backend is built through the plugin manager, so
        this also checks that your entry point works).
    compositions : tuple of str
        Formulas your backend supports.
    kinds : tuple of str
        ``"xrd"`` and/or ``"pdf"``.
    n : int
        Candidates per call (small keeps the tests fast).
    options : dict
        Keyword options for the factory.
    """

    backend_name: str = ""
    compositions: tuple[str, ...] = ("NaCl", "CdSe")
    kinds: tuple[str, ...] = ("xrd",)
    n: int = 4
    options: dict = {}

    def _backend(self):
        return _resolve(self.backend_name, self.options)

    def test_listed(self):
        from . import plugins

        names = [b["name"] for b in plugins.list_backends(instantiate=False)]
        assert self.backend_name in names, f"{self.backend_name!r} not registered; found {names}"

    def test_capabilities(self):
        check_capabilities(self._backend())

    def test_sample_valid(self):
        b = self._backend()
        for kind in self.kinds:
            for comp in self.compositions:
                obs = make_observation(comp, kind)
                check_proposals(b.sample(obs, self.n, seed=0), obs, self.n, self.backend_name)

    def test_n_honoured(self):
        b = self._backend()
        obs = make_observation(self.compositions[0], self.kinds[0])
        for n in (1, 2):
            out = b.sample(obs, n, seed=0)
            assert 1 <= len(out) <= n, f"sample(n={n}) returned {len(out)}"

    def test_seed(self):
        check_seed(self._backend(), make_observation(self.compositions[0], self.kinds[0]), min(self.n, 3))

    def test_progress(self):
        check_progress(self._backend(), make_observation(self.compositions[0], self.kinds[0]), min(self.n, 3))

    def test_max_atoms(self):
        check_composition_errors(self._backend())


__all__ = [
    "make_observation", "check_backend", "check_capabilities", "check_proposals", "check_seed",
    "check_progress", "check_composition_errors", "BackendContract", "ALLOWED_CAPABILITIES",
]
