"""The template library shipped inside the package (``library="pool"``, the default).

Checked against the training pool it was built from (when ``$DIFFPY_DIFFUSION_DATA`` is set) and,
without any data, against rock salt built by pymatgen.
"""

from __future__ import annotations

import numpy as np
import pytest

from diffpy_diffusion.backends import templates as T
from diffpy_diffusion.types import Observation

pytestmark = pytest.mark.skipif(not T.SHIPPED_LIBRARY.is_file(), reason="shipped template library not built")


def _obs(formula: str) -> Observation:
    x = np.linspace(10, 80, 50)
    return Observation(kind="xrd", x=x, y=np.ones_like(x), x_kind="2theta", wavelength=1.5406,
                       composition=formula)


def test_shipped_library_is_compact_and_pickle_free():
    assert T.SHIPPED_LIBRARY.stat().st_size < 6_000_000
    with np.load(T.SHIPPED_LIBRARY, allow_pickle=False) as d:  # raises if anything needs pickle
        assert {"lattices", "frac_u16", "numbers", "offsets", "ids", "spacegroup", "wyckoff"} <= set(d.files)
    lib = T.load_library("pool")
    assert len(lib) > 20_000
    assert all(lib._wyck.get(i) is not None for i in range(0, len(lib), 997))  # precomputed, no spglib run


def test_default_library_is_the_shipped_pool_and_aflow():
    assert T.default_library() == "pool,aflow"
    assert T.TemplatesBackend().library_name == "pool,aflow"
    both = T.load_library(None)
    pool, aflow = T.load_library("pool"), T.load_library("aflow")
    assert len(both) == len(pool) + len(aflow)
    assert both.ids[len(pool):] == aflow.ids
    i = len(pool) + 5  # an AFLOW member keeps its arrays and Wyckoff orbits in the union
    assert all(np.array_equal(a, b) for a, b in zip(both.member(i), aflow.member(5)))
    aflow.ensure_wyckoff([5])
    assert both.full_type_key(i) == aflow.full_type_key(5)


@pytest.mark.parametrize("formula, expected_sg, within",
                         [("Ni", 225, 3), ("Cu", 225, 3), ("W", 229, 3), ("Pt", 225, 10)])
def test_elements_get_their_canonical_type_first(formula, expected_sg, within):
    """An element gets AFLOW's prototypes unless a library is chosen: the pool's few elemental
    polymorphs would push fcc Pt to ninth place."""
    backend = T.TemplatesBackend()
    assert backend.library_name_for(_obs(formula)) == "aflow"
    props = backend.sample(_obs(formula), 10, seed=0)
    assert expected_sg in [p.provenance["template_spacegroup"] for p in props[:within]]
    assert T.TemplatesBackend(library="pool,aflow").library_name_for(_obs(formula)) == "pool,aflow"


def test_rock_salt_from_the_shipped_library_without_data(monkeypatch):
    """NaCl's first proposals include rock salt (Fm-3m, a ≈ 5.6 Å after volume scaling), as pymatgen sees it."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    monkeypatch.delenv("DIFFPY_DIFFUSION_DATA", raising=False)
    props = T.TemplatesBackend().sample(_obs("NaCl"), 10, seed=0)
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    matcher = StructureMatcher(stol=0.3, ltol=0.2, angle_tol=5)
    assert any(matcher.fit(p.structure, rock_salt) for p in props)
    assert all(p.provenance["library"] == "pool,aflow" for p in props)


def test_shipped_library_equals_the_indexed_training_pool(shared_data):
    """Same members in the same order, lattices to float32 precision, coordinates to 1/65536."""
    shipped = T.load_library("pool")
    pool = T.load_library("training-pool")
    assert shipped.ids == pool.ids
    assert np.array_equal(shipped.offsets, pool.offsets)
    assert np.array_equal(shipped.numbers, pool.numbers)
    assert np.array_equal(shipped.spacegroup, pool.spacegroup)
    assert np.allclose(shipped.lattices, pool.lattices, rtol=1e-6, atol=1e-5)
    d = (shipped.frac - pool.frac + 0.5) % 1.0 - 0.5
    assert np.abs(d).max() <= 1.0 / 65536
    assert shipped.anon == pool.anon and shipped.type_key == pool.type_key


@pytest.mark.parametrize("formula", ["BaTiO3", "ZnO", "Fe2O3", "LiFePO4"])
def test_shipped_and_training_pool_propose_the_same_templates(shared_data, formula):
    a = T.TemplatesBackend(library="pool").sample(_obs(formula), 12, seed=0)
    b = T.TemplatesBackend(library="training-pool").sample(_obs(formula), 12, seed=0)
    assert [p.provenance["template"] for p in a] == [p.provenance["template"] for p in b]
    assert [p.provenance["assignment"] for p in a] == [p.provenance["assignment"] for p in b]


def test_excluded_members_are_never_proposed():
    """``exclude`` (what ``evaluate`` sets to each target's id) removes exactly those members."""
    backend = T.TemplatesBackend(library="pool")
    first = backend.sample(_obs("NaCl"), 5, seed=0)
    gone = first[0].provenance["template"]
    again = T.TemplatesBackend(library="pool", exclude=f" {gone} ,").sample(_obs("NaCl"), 5, seed=0)
    assert gone not in [p.provenance["template"] for p in again]
    assert [p.provenance["template"] for p in again[:4]] != [] and len(again) == 5
    assert T.TemplatesBackend(exclude=[gone, "x"]).exclude == {gone, "x"}
