"""The ``random`` backend: contract kit, symmetry, volume and distance checks."""

from __future__ import annotations

import pytest

from diffpy_diffusion.backends import random as R
from diffpy_diffusion.errors import BackendError
from diffpy_diffusion.testing import BackendContract, make_observation


class TestRandomContract(BackendContract):
    backend_name = "random"
    compositions = ("NaCl", "CdSe")
    n = 3


def test_spacegroup_hint_and_volume():
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from diffpy_diffusion.backends.priors import estimated_volume

    obs = make_observation("TiO2", spacegroup=136)
    props = R.RandomBackend().sample(obs, 4, seed=3)
    assert len(props) == 4
    for p in props:
        s = p.structure
        assert p.provenance["spacegroup"] == 136
        # the random positions may sit on special positions of a supergroup, never lower
        sg = SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number()
        assert sg >= 136 or sg in (191, 194, 221, 225, 229)
        comp = {el.symbol: n for el, n in s.composition.items()}
        v = estimated_volume(comp)
        assert 0.85 * v <= s.volume <= 1.2 * v
        assert R.min_distance_ok(s)


def test_crystal_system_hint():
    obs = make_observation("NaCl", crystal_system="cubic")
    props = R.RandomBackend().sample(obs, 3, seed=1)
    assert all(195 <= p.provenance["spacegroup"] <= 230 for p in props)


def test_z_hint():
    obs = make_observation("NaCl", z=4)
    props = R.RandomBackend().sample(obs, 3, seed=1)
    assert all(len(p.structure) == 8 for p in props)


def test_impossible():
    with pytest.raises(BackendError):
        R.RandomBackend().sample(make_observation("Ba2TiO4", max_atoms=3), 2)


def test_min_distance_check():
    from pymatgen.core import Lattice, Structure

    bad = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]])
    good = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert not R.min_distance_ok(bad)
    assert R.min_distance_ok(good)


@pytest.mark.parametrize("number", [1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230])
def test_shared_crystal_system_matches_pymatgen(number):
    """backends.common (used by random, templates and the diffusion hint) agrees with pymatgen's table."""
    from pymatgen.symmetry.groups import SpaceGroup

    from diffpy_diffusion.backends.common import crystal_system, spacegroup_number

    assert crystal_system(number) == SpaceGroup.from_int_number(number).crystal_system
    assert spacegroup_number(SpaceGroup.from_int_number(number).symbol) == number
    assert spacegroup_number(str(number)) == number and spacegroup_number(None) is None
