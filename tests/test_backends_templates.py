"""The ``templates`` backend: contract kit, stoichiometry matching, species assignment, libraries."""

from __future__ import annotations

import numpy as np
import pytest

from diffpy_diffusion.backends import templates as T
from diffpy_diffusion.errors import BackendError, CompositionError
from diffpy_diffusion.testing import BackendContract, make_observation


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DIFFPY_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


class TestTemplatesContract(BackendContract):
    backend_name = "templates"
    compositions = ("NaCl", "CdSe", "TiO2")
    n = 4


def test_integer_counts():
    assert T.integer_counts({"Ti": 1, "O": 2}) == {"Ti": 1, "O": 2}
    assert T.integer_counts({"Ti": 2, "O": 4}) == {"Ti": 1, "O": 2}
    assert T.integer_counts({"Fe": 0.5, "O": 0.75}) == {"Fe": 2, "O": 3}
    with pytest.raises(CompositionError):
        T.integer_counts({"Fe": 1 / np.pi, "O": 1.0})


def test_anon_key():
    assert T.anon_key([56, 22, 8, 8, 8]) == "1-1-3"
    assert T.anon_key([30, 30, 16, 16]) == "1-1"


def test_assignments_keep_electronegativity_order_first():
    # template HgS (Hg: X=2.0, S: X=2.58) onto ZnS (Zn 1.65, S 2.58): Hg->Zn, S->S is best
    out = T.assignments({80: 1, 16: 1}, {30: 1, 16: 1})
    assert out[0][1] == {80: 30, 16: 16}
    assert len(out) == 2  # both permutations of an AB compound are tried
    # counts must match: AB2 template cannot serve ABC
    assert T.assignments({22: 1, 8: 2}, {56: 1, 22: 1, 8: 1}) == []


def test_substitute_rescales_volume():
    from diffpy_diffusion.backends.priors import atomic_volume

    lat = np.eye(3) * 4.0
    s = T.substitute(lat, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17], {11: 55, 17: 17})
    ratio = (atomic_volume("Cs") + atomic_volume("Cl")) / (atomic_volume("Na") + atomic_volume("Cl"))
    assert s.volume == pytest.approx(64.0 * ratio, rel=1e-9)
    assert s.composition.reduced_formula == "CsCl"


@pytest.mark.parametrize("formula, expected_sg", [("NaCl", 225), ("CsCl", 221), ("Ni", 225), ("BaTiO3", 221)])
def test_aflow_library_contains_the_right_type(formula, expected_sg):
    obs = make_observation(formula)
    props = T.TemplatesBackend(library="aflow").sample(obs, 50)
    sgs = [p.provenance["template_spacegroup"] for p in props]
    assert expected_sg in sgs[:10]


def test_hints_filter():
    obs = make_observation("ZnS", spacegroup=186)
    props = T.TemplatesBackend().sample(obs, 20)
    assert props and all(p.provenance["template_spacegroup"] == 186 for p in props)
    obs = make_observation("ZnS", crystal_system="cubic")
    props = T.TemplatesBackend().sample(obs, 20)
    from pymatgen.symmetry.groups import SpaceGroup  # an independent table of crystal systems

    assert props and all(SpaceGroup.from_int_number(p.provenance["template_spacegroup"]).crystal_system == "cubic"
                         for p in props)


def test_no_match_is_a_clear_error():
    obs = make_observation("Ba2TiO4", max_atoms=3)
    with pytest.raises(BackendError, match="stoichiometry"):
        T.TemplatesBackend().sample(obs, 3)


def test_user_library_folder_and_csv(tmp_path):
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    lib = tmp_path / "lib"
    lib.mkdir()
    s.to(filename=str(lib / "nacl.cif"))
    (lib / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
    with pytest.warns(UserWarning):
        b = T.TemplatesBackend(library=str(lib))
        props = b.sample(make_observation("KBr"), 5)
    assert len(props) == 2  # K->Na/Br->Cl and the swapped assignment
    assert props[0].structure.composition.reduced_formula == "KBr"
    assert props[0].provenance["assignment"] == {"Na": "K", "Cl": "Br"}
    # a CSV with a cif column
    import pandas as pd

    csv = tmp_path / "lib.csv"
    pd.DataFrame({"material_id": ["x-1"], "cif": [s.to(fmt="cif")]}).to_csv(csv, index=False)
    props = T.TemplatesBackend(library=str(csv)).sample(make_observation("KBr"), 5)
    assert props[0].provenance["template"] == "x-1"
    # cached: the second index load reads the npz
    assert list((tmp_path.parent).glob("**/templates-user-*.npz")) or list(T.cache_dir().glob("templates-user-*.npz"))


def test_missing_library_path():
    from diffpy_diffusion.errors import InputFileError

    with pytest.raises(InputFileError):
        T.TemplatesBackend(library="/nonexistent/lib").sample(make_observation("NaCl"), 2)


@pytest.mark.slow
def test_training_pool_library(shared_data):
    from diffpy_diffusion.datasets import eval_material_ids

    lib = T.load_library("training-pool")
    assert len(lib) > 20000
    assert not set(lib.ids) & eval_material_ids()


def _pymatgen_pattern(structure, composition, size_nm=14.0):
    """PXRD by pymatgen's calculator (an independent forward model), Gaussian peaks, flat background.

    The peaks' 0.59° FWHM at 2θ ≈ 30° is the Scherrer width of about 14 nm crystallites.
    """
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    from diffpy_diffusion.types import Observation

    pat = XRDCalculator(wavelength=1.5406).get_pattern(structure, two_theta_range=(10, 90))
    tt = np.linspace(10, 90, 2000)
    y = np.zeros_like(tt)
    for x0, h in zip(pat.x, pat.y):
        y += h * np.exp(-0.5 * ((tt - x0) / 0.25) ** 2)
    return Observation(kind="xrd", x=tt, y=y / y.max() + 0.02, x_kind="2theta", composition=composition,
                       wavelength=1.5406, size_nm=size_nm)


def _ab_types(a_el, b_el):
    from pymatgen.core import Lattice, Structure

    return {
        "rocksalt": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), [a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "cscl": Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.4), [a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "zincblende": Structure.from_spacegroup("F-43m", Lattice.cubic(6.0), [a_el, b_el],
                                                [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "wurtzite": Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(4.2, 6.9), [a_el, b_el],
                                              [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]]),
    }


def test_prescreen_ranks_the_right_structure_type_first():
    """Against pymatgen's pattern of rock salt, rock salt (cell off by 4 %) beats the other AB types."""
    from diffpy_diffusion.screen import prescreen

    types = _ab_types("Na", "Cl")
    obs = _pymatgen_pattern(types["rocksalt"], {"Na": 1, "Cl": 1})
    wrong_cell = types["rocksalt"].copy()
    wrong_cell.scale_lattice(wrong_cell.volume * 1.04**3)
    names = ["cscl", "zincblende", "wurtzite", "rocksalt"]
    rwp = prescreen(obs, [types[k] for k in names[:3]] + [wrong_cell])
    assert np.argmin(rwp) == 3 and rwp[3] < 0.8 * np.sort(rwp)[1]
    with pytest.raises(ValueError, match="PXRD"):
        prescreen(make_observation("NaCl", kind="pdf"), [wrong_cell])


def test_pattern_prescreen_brings_a_chemically_distant_template_into_the_list(tmp_path, monkeypatch):
    """A library whose only rock-salt member is chemically far from the target (MgO for NaCl): by
    chemistry it comes last; with the pattern pre-screen (the default) it is proposed first after
    the kept head; ``prescreen=False`` keeps the chemical order."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for name, s in _ab_types("K", "Cl").items():
        if name != "rocksalt":
            s.to(filename=str(lib / f"kcl_{name}.cif"))
    mgo = _ab_types("Mg", "O")["rocksalt"]
    # a cell that substitute() rescales to NaCl's (the pre-screen searches ±8 % around it)
    v = [T.atomic_volume(el) for el in ("Mg", "O", "Na", "Cl")]
    mgo.scale_lattice(mgo.volume * (v[0] + v[1]) / (v[2] + v[3]))
    mgo.to(filename=str(lib / "mgo_rocksalt.cif"))
    obs = _pymatgen_pattern(_ab_types("Na", "Cl")["rocksalt"], {"Na": 1, "Cl": 1})
    monkeypatch.setattr(T, "RETRIEVAL_KEEP", 1)
    chem = T.TemplatesBackend(library=str(lib), prescreen=False).sample(obs, 3)
    assert "mgo_rocksalt" not in [p.provenance["template"] for p in chem]
    head = chem[0].provenance["template"]
    by_pattern = T.TemplatesBackend(library=str(lib)).sample(obs, 3)
    assert [p.provenance["template"] for p in by_pattern][:2] == [head, "mgo_rocksalt"]
    assert "prescreen_rwp" in by_pattern[1].provenance and "prescreen_rwp" not in by_pattern[0].provenance
    assert T.TemplatesBackend(prescreen="false").prescreen is False
    with pytest.raises(ValueError, match="templates backend: prescreen"):
        T.TemplatesBackend(prescreen="maybe")
