"""Contract test kits for plugins: backends, readers, simulators and PDF calculators.

Every implementation of a hook -- built-in or third-party -- must honour the contract in
:mod:`diffpy_diffusion.hookspecs`; this module checks it, and diffpy-diffusion's own
built-ins run the same kits (``tests/test_plugins.py``).  One kit per hook:

- :class:`BackendContract` / :func:`check_backend` -- ``register_backends``;
- :class:`ReaderContract` / :func:`check_reader` -- ``register_readers``;
- :class:`SimulatorContract` / :func:`check_simulator` -- ``register_simulators``;
- :func:`check_pdf_calculator` -- ``pdf_calculator``.

Use the backend kit from your plugin's tests in one of two ways::

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

The backend and reader checks use numpy and pymatgen only; a synthetic observation stands
in for real data (:func:`make_observation`).  The simulator and PDF-calculator checks run
the implementation under test (the built-in ones use torch) and compare with physics that
does not depend on it: a supercell gives the same pattern, and G(r) of fcc Ni agrees with
pdffit2 (PDFgui's engine).  :func:`noisy_pxrd` (a simulated pattern for tests and
benchmarks) also needs the physics module's torch.
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


# --------------------------------------------------------------------------- readers


def check_reader_registration(reg) -> None:
    """A reader's :class:`~diffpy_diffusion.plugins.Registration`: callable, dotted lower-case extensions, kind."""
    assert callable(reg.obj), f"reader {reg.name!r} is not callable"
    exts = tuple(reg.options.get("extensions", ()))
    assert exts, f"reader {reg.name!r} registered no extensions"
    for e in exts:
        assert isinstance(e, str) and e.startswith(".") and e == e.lower(), \
            f"reader {reg.name!r}: extension {e!r} must be lower-case and start with '.'"
    assert reg.options.get("kind") in (None, "xrd", "pdf"), f"reader {reg.name!r}: kind {reg.options.get('kind')!r}"


def check_observation(obs, *, source=None) -> None:
    """What every reader and simulator returns: a consistent Observation with finite, matching x and y."""
    assert isinstance(obs, Observation), f"expected an Observation, got {type(obs).__name__}"
    x, y = np.asarray(obs.x, float), np.asarray(obs.y, float)
    assert x.ndim == 1 and x.shape == y.shape and len(x) >= 3, f"x {x.shape} and y {y.shape} must match, ≥ 3 points"
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y)), "x and y must be finite"
    assert obs.kind in ("xrd", "pdf") and obs.x_kind in ("2theta", "q", "r"), (obs.kind, obs.x_kind)
    assert (obs.kind == "pdf") == (obs.x_kind == "r"), f"kind {obs.kind!r} does not go with x_kind {obs.x_kind!r}"
    if source is not None:
        assert obs.source == str(source), f"source {obs.source!r} != {str(source)!r}"


def check_reader(reader, sample, reference: Observation) -> None:
    """``reader(sample)`` gives back ``reference``'s x and y (rtol 1e-4), honours overrides, rejects junk.

    Parameters
    ----------
    reader : callable
        ``reader(path, **options) -> Observation`` as registered.
    sample : Path
        A file holding ``reference`` in the reader's format.
    reference : Observation
        What the file holds.
    """
    from pathlib import Path

    from .errors import InputFileError

    sample = Path(sample)
    none = {"kind": None, "x_kind": None, "wavelength": None, "radiation": None, "composition": None}
    obs = reader(sample, **none)
    check_observation(obs, source=sample)
    assert obs.kind == reference.kind and obs.x_kind == reference.x_kind, (obs.kind, obs.x_kind)
    np.testing.assert_allclose(obs.x, reference.x, rtol=1e-4, atol=1e-8, err_msg="x differs from the file's")
    np.testing.assert_allclose(obs.y, reference.y, rtol=1e-4, atol=1e-6 * np.abs(reference.y).max(),
                               err_msg="y differs from the file's")
    over = reader(sample, **{**none, "composition": "CdSe", "radiation": "neutron",
                             **({"wavelength": 0.7093} if reference.x_kind == "2theta" else {})})
    assert over.formula == "CdSe", f"composition override ignored: {over.formula}"
    assert over.radiation == "neutron", f"radiation override ignored: {over.radiation}"
    if reference.x_kind == "2theta":
        assert over.wavelength == 0.7093, f"wavelength override ignored: {over.wavelength}"
    junk = sample.with_name("junk" + sample.suffix)
    junk.write_bytes(b"\x00\xff not a pattern \x01\n" * 3)
    try:
        reader(junk, **none)
    except InputFileError as exc:
        assert str(junk) in str(exc) and "\n" not in str(exc), f"error must name the file on one line: {exc}"
    else:
        raise AssertionError(f"reading {junk.name} (binary junk) did not raise InputFileError")


class ReaderContract:
    """Pytest base class for a pattern reader: set ``reader_name``, implement :meth:`write_sample`.

    Attributes
    ----------
    reader_name : str
        Registered name (looked up through the plugin manager).
    kind : {"xrd", "pdf"}
        Which synthetic observation (:func:`make_observation`) the sample holds.
    """

    reader_name: str = ""
    kind: str = "xrd"

    def write_sample(self, observation: Observation, directory):
        """Write ``observation`` in the reader's format into ``directory``; return the path."""
        raise NotImplementedError

    def _registration(self):
        from . import plugins

        readers = plugins.get_readers()
        assert self.reader_name in readers, f"reader {self.reader_name!r} not registered; found {sorted(readers)}"
        return readers[self.reader_name]

    def test_registration(self):
        check_reader_registration(self._registration())

    def test_reads_what_was_written(self, tmp_path):
        ref = make_observation("NaCl", self.kind)
        check_reader(self._registration().obj, self.write_sample(ref, tmp_path), ref)

    def test_read_observation_uses_it(self, tmp_path):
        from . import plugins
        from .io import read_observation

        reg = self._registration()
        path = self.write_sample(make_observation("NaCl", self.kind), tmp_path)
        assert plugins.reader_for(path.suffix) is reg, f"{path.suffix} files go to another reader"
        assert np.array_equal(read_observation(path).y, reg.obj(path).y)


# --------------------------------------------------------------------------- simulators


def rocksalt_nacl():
    """Rock-salt NaCl, a = 5.64 Å (Fm-3m), with Uiso 0.01 Å² on every site: a small test structure."""
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.add_site_property("uiso", [0.01] * len(s))
    return s


def check_simulator(simulator, *, params: dict | None = None, structure=None) -> None:
    """Valid Observation; honours ``x``; deterministic; the same pattern for a 2×1×1 supercell.

    The supercell check is physics, not implementation: a crystal's powder pattern and its
    G(r) (per atom), and a sphere cut from it, do not depend on the choice of unit cell.
    Intensities are compared after scaling to the maximum (rtol 1e-6 of it).
    """
    params = dict(params or {})
    s = structure if structure is not None else rocksalt_nacl()
    obs = simulator(s, **params)
    check_observation(obs)
    x = np.asarray(obs.x, float)[:: max(1, len(obs.x) // 200)]  # a coarser grid of the simulator's own range
    on_x = simulator(s, x=x, **params)
    check_observation(on_x)
    np.testing.assert_array_equal(on_x.x, x, err_msg="the simulator ignored the given x grid")
    again = simulator(s, x=x, **params)
    np.testing.assert_array_equal(again.y, on_x.y, err_msg="same input, different pattern")
    sup = s.copy()
    sup.make_supercell([2, 1, 1])
    big = simulator(sup, x=x, **params)
    y1, y2 = np.asarray(on_x.y, float), np.asarray(big.y, float)
    span = max(np.abs(y1).max(), 1e-30)
    np.testing.assert_allclose(y2 / max(np.abs(y2).max(), 1e-30), y1 / span, atol=1e-6,
                               err_msg="a 2x1x1 supercell gives another pattern")


class SimulatorContract:
    """Pytest base class for a simulator: set ``simulator_name`` (and ``params``), the checks are collected."""

    simulator_name: str = ""
    params: dict = {}

    def _simulator(self):
        from . import plugins

        sims = plugins.get_simulators()
        assert self.simulator_name in sims, f"simulator {self.simulator_name!r} not registered; found {sorted(sims)}"
        return sims[self.simulator_name].obj

    def test_contract(self):
        check_simulator(self._simulator(), params=self.params)


# --------------------------------------------------------------------------- PDF calculators


def fcc_nickel(uiso: float = 0.005):
    """fcc Ni (a = 3.52 Å) as a diffpy Structure with ``Uisoequiv = uiso`` Å², what refinements pass."""
    from diffpy.structure import Atom, Lattice, Structure

    a = 3.52
    s = Structure([Atom("Ni", xyz) for xyz in ([0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0])],
                  lattice=Lattice(a, a, a, 90, 90, 90))
    for atom in s:
        atom.Uisoequiv = uiso
    return s


def check_pdf_calculator(calculator, *, reference: bool = True) -> None:
    """A ``pdf_calculator`` answer: G(r) of fcc Ni has its first peak at a/√2, scales, obeys ``spdiameter``.

    With ``reference`` it must also agree with pdffit2 (PDFgui's C++ engine) to Rw < 1 %
    on r = 1.5–10 Å, Qmax 25 Å⁻¹, Qdamp 0.04 Å⁻¹.
    """
    s = fcc_nickel()
    r = np.arange(1.5, 10.0, 0.01)
    kw = {"qmax": 25.0, "qdamp": 0.04}
    g = np.asarray(calculator(s, r, **kw), float)
    assert g.shape == r.shape and np.all(np.isfinite(g)), f"G(r) has shape {g.shape} or non-finite values"
    assert abs(r[np.argmax(np.where(r < 3.0, g, -np.inf))] - 3.52 / np.sqrt(2)) < 0.03, \
        "first G(r) peak of fcc Ni is not at a/sqrt(2)"
    np.testing.assert_allclose(calculator(s, r, scale=2.0, **kw), 2 * g, rtol=1e-6, atol=1e-9 * np.abs(g).max(),
                               err_msg="G(r) is not proportional to scale")
    env = np.asarray(calculator(s, r, spdiameter=6.0, **kw), float)
    assert np.abs(env[r > 6.5]).max() < 0.01 * np.abs(g).max(), "G(r) beyond spdiameter is not ~0"
    if reference:
        from .refine.generators import pdffit2_pdf

        ref = pdffit2_pdf(s, r, **kw)
        rw = float(np.sqrt(np.sum((g - ref) ** 2) / np.sum(ref**2)))
        assert rw < 0.01, f"G(r) differs from pdffit2's by Rw = {rw:.3f}"


__all__ = [
    "make_observation", "check_backend", "check_capabilities", "check_proposals", "check_seed",
    "check_progress", "check_composition_errors", "BackendContract", "ALLOWED_CAPABILITIES",
    "check_reader_registration", "check_observation", "check_reader", "ReaderContract", "rocksalt_nacl",
    "check_simulator", "SimulatorContract", "fcc_nickel", "check_pdf_calculator", "noisy_pxrd",
]
