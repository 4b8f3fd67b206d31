"""Tests of the training-free space-group / crystal-system hint of the diffusion backend (issue 6, item 1).

The lattice metric is checked against pymatgen's lattice parameters, the space groups against
pymatgen's ``SpacegroupAnalyzer`` at a tight tolerance (both independent of the code under test).
CPU only, a few seconds each: few candidates, few steps.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from diffpy_diffusion.backends.diffusion import symmetry_hint as sh
from diffpy_diffusion.errors import BackendError
from diffpy_diffusion.types import Observation, Proposal

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "diffpy_diffusion" / "backends" / "diffusion" / "weights" / "diffusion.pt"

#: Angle between the primitive vectors of a body-centred cubic lattice, arccos(-1/3) ≈ 109.47°.
BCC_PRIMITIVE_ANGLE_DEG = float(np.degrees(np.arccos(-1 / 3)))
#: (metric, check on (a, b, c, alpha, beta, gamma)) — what each crystal system's cell must satisfy.
METRIC_CHECKS = {
    "cubic": lambda a, b, c, al, be, ga: [a - b, b - c, al - 90, be - 90, ga - 90],
    "fcc-primitive": lambda a, b, c, al, be, ga: [a - b, b - c, al - 60, be - 60, ga - 60],
    "bcc-primitive": lambda a, b, c, al, be, ga: [a - b, b - c] + [x - BCC_PRIMITIVE_ANGLE_DEG for x in (al, be, ga)],
    "tetragonal": lambda a, b, c, al, be, ga: [a - b, al - 90, be - 90, ga - 90],
    "orthorhombic": lambda a, b, c, al, be, ga: [al - 90, be - 90, ga - 90],
    "monoclinic": lambda a, b, c, al, be, ga: [al - 90, ga - 90],
    "hexagonal": lambda a, b, c, al, be, ga: [a - b, al - 90, be - 90, ga - 120],
    "rhombohedral": lambda a, b, c, al, be, ga: [a - b, b - c, al - be, be - ga],
}


@pytest.fixture(scope="module")
def backend():
    """One loaded sampler for the module (short schedule; tests set guidance themselves).

    Without template seeds: these tests count the projections of the full schedule, and a hint
    also filters which templates seed (tests/test_diffusion.py covers seeds).
    """
    if not WEIGHTS.is_file():
        pytest.skip("shipped weights not present")
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    be = DiffusionBackend(steps=10, physics_guidance=False, guide_frac=0.5, seed_fraction=0.0)
    be._load()
    # why: these batches are tiny; on a shared 2-core machine two intra-op threads make each forward pass
    # ~50x slower (0.5 s instead of 6 ms for 6 cells of 4 atoms), one thread keeps the module well under a minute
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield be
    torch.set_num_threads(threads)


def _params(mat):
    lat = Lattice(np.asarray(mat, dtype=float))
    return (*lat.abc, *lat.angles)


def _obs(composition, **kw):
    q = np.linspace(0.5, 5.7, 600)
    y = np.exp(-((q - 2.0) ** 2) / 0.002) + 0.6 * np.exp(-((q - 2.9) ** 2) / 0.002) + 0.01
    return Observation(kind="xrd", x=q, y=y, x_kind="q", composition=composition, wavelength=1.5406, size_nm=5, **kw)


def _rock_salt_obs(**kw):
    from diffpy_diffusion.simulation import simulate

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    obs = simulate(nacl, "xrd", wavelength=1.5406, size_nm=10)
    obs.composition = {"Na": 1, "Cl": 1}
    for k, v in kw.items():
        setattr(obs, k, v)
    return obs


def _sg(structure, symprec=1e-3) -> int:
    return SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number()


# ----------------------------------------------------------------------------- lattice projection
@pytest.mark.parametrize("metric", sh.METRICS)
def test_projected_lattice_has_the_metric_and_keeps_handedness(metric):
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(64, 3, 3, generator=g, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    out = sh.project_lattice(lat, metric)
    for m_in, m_out in zip(lat, out):
        assert max(abs(x) for x in METRIC_CHECKS[metric](*_params(m_out))) < 1e-8
        assert np.sign(float(torch.linalg.det(m_out))) == np.sign(float(torch.linalg.det(m_in)))  # handedness kept
    again = sh.project_lattice(out, metric)
    assert torch.allclose(again, out, atol=1e-10)  # a projection: idempotent, and a cell on the metric stays put
    # the Gram matrix stays positive definite (a real cell) even from pure noise
    noise = torch.randn(256, 3, 3, generator=g, dtype=torch.float64)
    gram = sh.project_gram(noise @ noise.transpose(1, 2), metric)
    assert (torch.linalg.eigvalsh(gram) > 0).all()


def test_projection_of_a_cell_of_that_system_is_the_identity():
    cells = {"cubic": Lattice.cubic(4.1), "tetragonal": Lattice.tetragonal(3.8, 9.5),
             "orthorhombic": Lattice.orthorhombic(3, 4, 5), "monoclinic": Lattice.monoclinic(3, 4, 5, 103),
             "hexagonal": Lattice.hexagonal(3.2, 5.2), "rhombohedral": Lattice.rhombohedral(5.0, 55.0),
             "fcc-primitive": Lattice.from_parameters(4, 4, 4, 60, 60, 60)}
    for metric, lat in cells.items():
        m = torch.tensor(lat.matrix)[None]
        assert torch.allclose(sh.project_lattice(m, metric), m, atol=1e-10), metric
    # None = no hint: the very same tensor back
    m = torch.randn(2, 3, 3)
    assert sh.project_lattice(m, None) is m


# ----------------------------------------------------------------------------- resolving the hint
def test_resolve_hint_mirrors_the_templates_backend():
    assert sh.resolve_hint(_obs("NaCl")) is None
    h = sh.resolve_hint(_obs("NaCl", spacegroup=225))
    assert (h.crystal_system, h.symbol, h.metric, h.centring) == ("cubic", "Fm-3m", "fcc-primitive", 1)
    assert sh.resolve_hint(_obs("NaCl", spacegroup="Fm-3m")) == h
    assert sh.resolve_hint(_obs("Fe", spacegroup=229)).metric == "bcc-primitive"
    assert sh.resolve_hint(_obs("NaCl", spacegroup=221)).metric == "cubic"
    assert sh.resolve_hint(_obs("Bi2Te3", spacegroup=166)).metric == "rhombohedral"
    assert sh.resolve_hint(_obs("ZnO", spacegroup=186)).metric == "hexagonal"
    assert sh.resolve_hint(_obs("ZnO", crystal_system="Trigonal")).metric == "hexagonal"
    assert sh.resolve_hint(_obs("ZnO", crystal_system="triclinic")).metric is None
    tio2 = sh.resolve_hint(_obs("TiO2", spacegroup=141))  # anatase, I4_1/amd: conventional cell, even counts
    assert (tio2.metric, tio2.centring) == ("tetragonal", 2)
    assert tio2.allowed_z({"Ti": 1, "O": 2}, [1, 2, 3, 4, 5, 6]) == [2, 4, 6]
    with pytest.warns(UserWarning, match="multiple of 2"):
        assert tio2.allowed_z({"Ti": 1, "O": 2}, [1]) == [1]
    with pytest.raises(BackendError, match="contradict"):
        sh.resolve_hint(_obs("NaCl", spacegroup=225, crystal_system="hexagonal"))
    with pytest.raises(BackendError, match="unknown crystal system"):
        sh.resolve_hint(_obs("NaCl", crystal_system="cubical"))


def test_t_subgroups_follow_the_international_tables():
    # Fm-3m > F-43m, R-3m, I4/mmm (t-subgroups: same translations)
    assert {216, 166, 139, 225}.issubset(sh.t_subgroups(225))
    # but Fm-3m is only a k-subgroup of Pm-3m (doubled cell): CsCl must not count as rock salt
    assert 225 not in sh.t_subgroups(221)
    assert 123 in sh.t_subgroups(221) and 1 in sh.t_subgroups(221)
    assert sh.t_subgroups(1) == {1}
    assert sh.hint_matches(225, sh.resolve_hint(_obs("NaCl", spacegroup=216)))
    assert not sh.hint_matches(221, sh.resolve_hint(_obs("NaCl", spacegroup=225)))
    # crystal-system hints: hexagonal groups have orthorhombic t-subgroups, cubic groups have no hexagonal ones
    assert sh.hint_matches(194, sh.resolve_hint(_obs("Mg", crystal_system="orthorhombic")))
    assert not sh.hint_matches(225, sh.resolve_hint(_obs("Mg", crystal_system="hexagonal")))


# ----------------------------------------------------------------------------- after sampling
def _rattled_rock_salt(amplitude=0.04, seed=0):
    prim = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    rng = np.random.default_rng(seed)
    return Structure(prim.lattice, prim.species, prim.cart_coords + rng.normal(scale=amplitude, size=(len(prim), 3)),
                     coords_are_cartesian=True)


def _cscl():
    return Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_apply_hint_symmetrises_matching_proposals_and_ranks_them_first():
    rattled = _rattled_rock_salt()
    assert _sg(rattled) == 1  # really off the special positions at a tight tolerance
    props = [Proposal(_cscl(), "diffusion", provenance={"z": 1}), Proposal(rattled, "diffusion", provenance={"z": 1})]
    hint = sh.resolve_hint(_obs("NaCl", spacegroup=225))
    out = sh.apply_hint(props, hint, max_atoms=20, per_fu=2)
    assert [p.structure is not None for p in out] == [True, True]
    first, second = out
    h = first.provenance["hint"]
    assert h["matched"] and h["symmetrised"] and h["spacegroup"] == 225 and h["spacegroup_found"] == 225
    assert h["tolerance_A"] in sh.LOOSE_TOLERANCES
    assert _sg(first.structure) == 225  # idealised: Fm-3m at 0.001 Å
    assert len(first.structure) == 8 and first.provenance["z"] == 4 and h["z_sampled"] == 1  # conventional cell
    assert first.structure.composition.reduced_formula == "NaCl"
    assert np.allclose(first.structure.lattice.angles, 90) and np.allclose(first.structure.lattice.abc, 5.64, atol=0.1)
    # CsCl is Pm-3m: not rock salt, kept unmodified and ranked after
    assert second.provenance["hint"]["matched"] is False and second.provenance["hint"]["spacegroup_found"] == 221
    assert len(second.structure) == 2 and _sg(second.structure) == 221

    # a t-subgroup hint (F-43m) is met by rock salt (its Fm-3m cell is kept)
    out = sh.apply_hint([Proposal(_rattled_rock_salt(seed=0), "diffusion")],
                        sh.resolve_hint(_obs("NaCl", spacegroup=216)))
    assert out[0].provenance["hint"]["matched"] and _sg(out[0].structure) == 225

    # atom cap: the 8-atom conventional cell does not fit 4 atoms -> the idealised primitive cell
    out = sh.apply_hint([Proposal(_rattled_rock_salt(seed=0), "diffusion")], hint, max_atoms=4, per_fu=2)
    assert len(out[0].structure) == 2 and _sg(out[0].structure) == 225


def test_apply_hint_returns_all_unmodified_with_a_warning_when_none_matches():
    props = [Proposal(_cscl(), "diffusion"), Proposal(_cscl(), "diffusion")]
    before = [p.structure.copy() for p in props]
    with pytest.warns(UserWarning, match="none of the 2 proposals has space group Fm-3m"):
        out = sh.apply_hint(props, sh.resolve_hint(_obs("NaCl", spacegroup=225)))
    assert len(out) == 2
    for p, s in zip(out, before):
        assert p.structure == s and p.provenance["hint"]["matched"] is False
        assert p.provenance["hint"]["tolerance_A"] is None and p.provenance["hint"]["symmetrised"] is False


def test_crystal_system_hint_checks_but_does_not_touch_the_structure():
    rattled = _rattled_rock_salt()
    out = sh.apply_hint([Proposal(rattled, "diffusion")], sh.resolve_hint(_obs("NaCl", crystal_system="cubic")))
    h = out[0].provenance["hint"]
    assert h["matched"] and not h["symmetrised"] and h["spacegroup_found"] == 225
    assert out[0].structure is rattled


# ----------------------------------------------------------------------------- the backend
def _lattice_checks(props, metric, tol=1e-6):
    for p in props:
        worst = max(abs(x) for x in METRIC_CHECKS[metric](*p.structure.lattice.parameters))
        assert worst < tol, (metric, p.structure.lattice.parameters)
        assert p.structure.lattice.volume > 0 and np.linalg.det(p.structure.lattice.matrix) > 0  # right-handed


@pytest.mark.parametrize("system,metric,guided", [("cubic", "cubic", True), ("hexagonal", "hexagonal", False),
                                                   ("monoclinic", "monoclinic", False)])
def test_crystal_system_hint_gives_that_metric_at_every_sample(backend, monkeypatch, system, metric, guided):
    monkeypatch.setattr(backend, "physics_guidance", guided)  # guided: the lattice guidance step is projected too
    calls = []
    project = sh.project_lattice

    def counting(lattice, metric):
        calls.append(metric)
        return project(lattice, metric)

    monkeypatch.setattr(sh, "project_lattice", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "none matches" is allowed here
        props = backend.sample(_obs("SrTiO3", crystal_system=system, max_atoms=10), 6, seed=0)
    assert len(props) == 6
    # every reverse step projects the state and the predicted clean cell, plus once at the end, in
    # every batch (one per Z and sampling round)
    per_batch = 2 * backend.steps + 1
    assert calls and set(calls) == {metric} and len(calls) % per_batch == 0
    _lattice_checks(props, metric)
    for p in props:
        assert p.structure.composition.reduced_formula == "SrTiO3" and len(p.structure) <= 20
        assert p.provenance["hint"]["crystal_system"] == system
        d = p.structure.distance_matrix + np.eye(len(p.structure)) * 1e9
        assert d.min() >= 0.5 - 1e-9


def test_rhombohedral_space_group_hint_samples_the_primitive_rhombohedral_cell(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        props = backend.sample(_obs("NaCl", spacegroup="R-3m", max_atoms=8), 6, seed=3)
    unmatched = [p for p in props if not p.provenance["hint"]["matched"]]  # matched ones are idealised R-3m cells
    _lattice_checks(unmatched, "rhombohedral")
    for p in props:
        if p.provenance["hint"]["matched"]:
            assert 166 in sh.t_subgroups(_sg(p.structure))


def test_rock_salt_space_group_hint_gives_fm3m_proposals_first(backend):
    props = backend.sample(_rock_salt_obs(spacegroup=225), 8, seed=0)
    assert len(props) == 8
    flags = [p.provenance["hint"]["matched"] for p in props]
    assert flags == sorted(flags, reverse=True)  # matched first
    assert any(flags), "no Fm-3m rock salt among 8 hinted samples (the unhinted model finds it at Z = 1)"
    for p in props:
        h = p.provenance["hint"]
        assert (h["spacegroup"], h["spacegroup_symbol"], h["crystal_system"]) == (225, "Fm-3m", "cubic")
        assert p.structure.composition.reduced_formula == "NaCl" and len(p.structure) <= 20
        if h["matched"]:
            assert h["symmetrised"] and h["tolerance_A"] <= max(sh.LOOSE_TOLERANCES)
            assert _sg(p.structure) == 225
        else:
            _lattice_checks([p], "fcc-primitive")  # sampled in fcc's primitive cell (training cells are primitive)


def test_no_hint_bypasses_the_hint_code_and_is_unchanged(backend, monkeypatch):
    monkeypatch.setattr(backend, "physics_guidance", True)
    monkeypatch.setattr(backend, "steps", 6)
    # why: without a hint a quarter of the candidates are sampled in suggested space groups, which a
    # hint (even a trivial one) switches off; this test is about the hint plumbing alone
    monkeypatch.setattr(backend, "wyckoff_fraction", 0.0)
    be = backend
    obs = _obs("SrTiO3", max_atoms=10)
    ref = be.sample(obs, 4, seed=7)

    def boom(*args, **kwargs):
        raise AssertionError("hint code ran without a hint")

    with monkeypatch.context() as m:
        for name in ("resolve_hint", "apply_hint", "project_lattice"):
            m.setattr(sh, name, boom)
        bypassed = be.sample(obs, 4, seed=7)
    # a hint that imposes nothing (triclinic: no metric, every group matches) runs the hint plumbing
    # through the same sampler and must give the very same structures in the same order
    trivial = be.sample(_obs("SrTiO3", crystal_system="triclinic", max_atoms=10), 4, seed=7)
    for a, b, c in zip(ref, bypassed, trivial):
        assert "hint" not in a.provenance and "hint" not in b.provenance
        assert c.provenance["hint"]["matched"] and not c.provenance["hint"]["symmetrised"]
        for other in (b, c):
            assert np.array_equal(a.structure.lattice.matrix, other.structure.lattice.matrix)
            assert np.array_equal(a.structure.frac_coords, other.structure.frac_coords)
            assert a.structure.species == other.structure.species
