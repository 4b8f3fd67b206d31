"""The datasets module: data folder, CIF reading, the evaluation set, the training pool and its split.

The rules of the pool are checked on a small synthetic data folder (CSV files in the CDVAE
layout, CIFs written by pymatgen) and, when ``$DIFFPY_DIFFUSION_DATA`` is set, against the
row counts the data README states for the staged files.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from diffpy_diffusion import datasets
from diffpy_diffusion.errors import NotAvailableError

pd = pytest.importorskip("pandas")


# --------------------------------------------------------------------------- data folder
def test_data_dir_without_env_names_the_variable(monkeypatch):
    monkeypatch.delenv("DIFFPY_DIFFUSION_DATA", raising=False)
    with pytest.raises(NotAvailableError) as err:
        datasets.data_dir()
    msg = str(err.value)
    assert "DIFFPY_DIFFUSION_DATA" in msg and "\n" not in msg
    assert "shared" not in msg and "looked in" not in msg  # no folder is guessed


def test_data_dir_rejects_a_folder_without_mp20(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPY_DIFFUSION_DATA", str(tmp_path))
    with pytest.raises(NotAvailableError, match="DIFFPY_DIFFUSION_DATA") as err:
        datasets.data_dir()
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_explicit_data_dir_overrides_env(tmp_path, monkeypatch):
    (tmp_path / "a" / "mp20").mkdir(parents=True)
    (tmp_path / "b" / "mp20").mkdir(parents=True)
    monkeypatch.setenv("DIFFPY_DIFFUSION_DATA", str(tmp_path / "a"))
    assert datasets.data_dir() == tmp_path / "a"
    assert datasets.data_dir(tmp_path / "b") == tmp_path / "b"


# --------------------------------------------------------------------------- CIF reading
def _structures():
    from pymatgen.core import Lattice, Structure

    return [
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]),
        Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(4.3, 7.0), ["Cd", "Se"],
                                  [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]]),
        Structure(Lattice.from_parameters(4.1, 5.2, 6.3, 80, 95, 105), ["Ba", "Ti", "O", "O"],
                  [[0.1, 0.2, 0.3], [0.6, 0.7, 0.2], [0.3, 0.9, 0.55], [0.8, 0.4, 0.05]]),
    ]


def _p1_cif(structure) -> str:
    """A P1 CIF as pymatgen writes it (the format of the CDVAE/DiffCSP CSVs)."""
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(structure))


@pytest.mark.parametrize("k", range(3))
def test_count_atoms_and_fast_parser_agree_with_pymatgen(k):
    s = _structures()[k]
    cif = _p1_cif(s)
    assert datasets.count_atoms_in_cif(cif) == len(s)
    lattice, frac, numbers = datasets.parse_p1_cif(cif)
    ref = datasets.cif_to_structure(cif)  # pymatgen's CifParser, the data README's recipe
    np.testing.assert_allclose(lattice, ref.lattice.matrix, atol=1e-6)
    got = sorted(zip(numbers.tolist(), np.round(np.mod(frac, 1.0), 5).tolist()))
    want = sorted(zip([sp.Z for sp in ref.species], np.round(np.mod(ref.frac_coords, 1.0), 5).tolist()))
    assert got == want


def test_count_atoms_of_text_without_atom_sites_is_zero():
    assert datasets.count_atoms_in_cif("data_x\n_cell_length_a 3.0\n") == 0


# --------------------------------------------------------------------------- pool rules (synthetic data)
def _cell(n_atoms: int):
    """A P1 cell of ``n_atoms`` Li atoms on a line (only the atom count matters here)."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(3.0 * n_atoms), ["Li"] * n_atoms, [[i / n_atoms, 0, 0] for i in range(n_atoms)])


def _write(root: Path, ds: str, split: str, rows: list[tuple[object, int]], *, sg: bool = True):
    (root / ds).mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"material_id": [r[0] for r in rows], "cif": [_p1_cif(_cell(r[1])) for r in rows]})
    if sg:
        df["spacegroup.number"] = 1
    df.to_csv(root / ds / f"{split}.csv.gz", index=True)


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """mp20 (evaluation set = first 2 test rows), MPTS-52 and perov_5 with every rule exercised once."""
    monkeypatch.setattr(datasets, "EVAL_SET_SIZE", 2)
    root = tmp_path / "data"
    _write(root, "mp20", "train", [("mp-1", 2), ("mp-2", 3)])
    # no mp20/val.csv.gz: an absent split is skipped
    _write(root, "mp20", "test", [("mp-10", 2), ("mp-11", 2), ("mp-12", 4), ("mp-13", 1)])
    _write(root, "mpts_52", "val", [("mp-10", 2),  # an evaluation-set id: excluded from every source
                                   ("mp-1", 2),  # already in mp20/train: kept once
                                   ("mp-20", 21),  # over the 20-atom cap
                                   ("mp-21", 20)], sg=False)
    _write(root, "mpts_52", "test", [("mp-22", 5), ("mp-22", 6)], sg=False)  # a duplicate within a file
    _write(root, "perov_5", "val", [(1, 5), (2, 5)], sg=False)
    _write(root, "perov_5", "test", [(1, 5)], sg=False)  # same perov_5 id in two splits: kept once
    return root


def test_pool_rules_on_synthetic_data(tiny_data):
    pool = datasets.training_pool(data=tiny_data)
    assert [(e.material_id, e.source) for e in pool] == [
        ("mp-1", "mp20/train"), ("mp-2", "mp20/train"),
        ("mp-12", "mp20/test"), ("mp-13", "mp20/test"),
        ("mp-21", "mpts_52/val"), ("mp-22", "mpts_52/test"),
        ("perov_5:1", "perov_5/val"), ("perov_5:2", "perov_5/val"),
    ]
    assert [len(e.structure()) for e in pool[:5]] == [2, 3, 4, 1, 20]
    assert pool[0].spacegroup == 1 and pool[4].spacegroup is None
    assert datasets.eval_material_ids(data=tiny_data) == {"mp-10", "mp-11"}
    assert [e.material_id for e in datasets.eval_set(data=tiny_data)] == ["mp-10", "mp-11"]
    assert [e.material_id for e in datasets.eval_set(1, data=tiny_data)] == ["mp-10"]


def test_pool_options_on_synthetic_data(tiny_data, monkeypatch):
    no_perov = datasets.training_pool(data=tiny_data, include_perov=False)
    assert not any(e.material_id.startswith("perov_5:") for e in no_perov)
    capped = [e.material_id for e in datasets.training_pool(data=tiny_data, max_atoms=5)]
    assert "mp-21" not in capped and "mp-22" in capped  # the cap applies to MPTS-52 only
    monkeypatch.setenv("DIFFPY_DIFFUSION_DATA", str(tiny_data))
    assert [e.material_id for e in datasets.training_pool()] == [e.material_id for e in
                                                                 datasets.training_pool(data=tiny_data)]


def test_split_ids_is_stable_and_near_the_fraction():
    ids = [f"mp-{i}" for i in range(20000)]
    val = datasets.split_ids(ids, 0.02)
    assert val.dtype == bool and val.shape == (20000,)
    # binomial(20000, 0.02): mean 400, sd 19.8; 5 sd either side
    assert 300 < val.sum() < 500
    # a structure's side does not depend on the rest of the pool
    sub = datasets.split_ids(ids[::7], 0.02)
    np.testing.assert_array_equal(sub, val[::7])
    assert not datasets.split_ids(ids[:100], 0.0).any() and datasets.split_ids(ids[:100], 1.0).all()


def test_pool_cache_lives_in_the_user_cache_dir(monkeypatch, tmp_path):
    from platformdirs import user_cache_dir

    from diffpy_diffusion.backends.diffusion import data

    monkeypatch.delenv("DIFFPY_DIFFUSION_CACHE", raising=False)
    path = data.pool_cache_path()
    assert path.parent == Path(user_cache_dir("diffpy-diffusion"))
    assert Path(data.__file__).resolve().parents[2] not in path.resolve().parents  # never inside the package
    monkeypatch.setenv("DIFFPY_DIFFUSION_CACHE", str(tmp_path))
    assert data.pool_cache_path().parent == tmp_path


# --------------------------------------------------------------------------- the staged data
#: Rows per staged file, from the data README (mp20: "train 1,847 · val 7,344 · test 7,342";
#: perov_5: "train 1,024 · val 3,787 · test 3,785").  No material_id occurs in two mp20 splits
#: and perov_5 ids are prefixed, so each of these files contributes all its rows (mp20/test: all
#: but the 1,000 evaluation rows).
README_ROWS = {"mp20/train": 1847, "mp20/val": 7344, "mp20/test": 7342 - 1000,
               "perov_5/train": 1024, "perov_5/val": 3787, "perov_5/test": 3785}
#: The whole pool on the staged data; the rest (4,161) are MPTS-52 cells of ≤ 20 atoms whose ids
#: are neither evaluation-set ids nor already in mp20.
POOL_SIZE = 28290


def test_training_pool_on_the_staged_data(shared_data):
    pool = datasets.training_pool(data=shared_data)
    counts = collections.Counter(e.source for e in pool)
    assert {k: counts[k] for k in README_ROWS} == README_ROWS
    assert len(pool) == POOL_SIZE
    assert counts["mpts_52/val"] + counts["mpts_52/test"] == POOL_SIZE - sum(README_ROWS.values())
    ids = [e.material_id for e in pool]
    assert len(set(ids)) == len(ids)
    # order: the sources in POOL_SOURCES order, rows in file order
    order = [f"{ds}/{split}" for ds, split, _ in datasets.POOL_SOURCES]
    assert [e.source for e in pool] == sorted((e.source for e in pool), key=order.index)
    test_rows = pd.read_csv(shared_data / "mp20" / "test.csv.gz", usecols=["material_id"])["material_id"].astype(str)
    assert [e.material_id for e in pool if e.source == "mp20/test"] == list(test_rows.iloc[1000:])
    assert not set(ids) & set(test_rows.iloc[:1000])
    # the atom cap, checked with pymatgen's parser on a sample of kept and dropped MPTS-52 cells
    rng = np.random.default_rng(0)
    kept = [e for e in pool if e.source.startswith("mpts_52")]
    for i in rng.choice(len(kept), 40, replace=False):
        assert len(datasets.cif_to_structure(kept[i].cif)) <= datasets.MAX_ATOMS
    mpts = pd.read_csv(shared_data / "mpts_52" / "val.csv.gz", usecols=["material_id", "cif"])
    dropped = mpts[~mpts["material_id"].astype(str).isin(set(ids) | set(test_rows.iloc[:1000]))]
    for cif in dropped["cif"].iloc[:40]:
        assert len(datasets.cif_to_structure(cif)) > datasets.MAX_ATOMS


def test_eval_set_is_the_first_test_rows(shared_data):
    es = datasets.eval_set(5, data=shared_data)
    head = pd.read_csv(shared_data / "mp20" / "test.csv.gz", nrows=5)
    assert [e.material_id for e in es] == list(head["material_id"].astype(str))
    assert [e.spacegroup for e in es] == list(head["spacegroup.number"])
    assert len(datasets.eval_material_ids(data=shared_data)) == datasets.EVAL_SET_SIZE == 1000


def test_cache_dir_env_then_user_cache_never_the_package(tmp_path, monkeypatch):
    """One cache folder for the template libraries and the pool arrays: the variable wins, else platformdirs."""
    from platformdirs import user_cache_dir

    import diffpy_diffusion
    from diffpy_diffusion.backends import templates
    from diffpy_diffusion.backends.diffusion import data

    monkeypatch.setenv("DIFFPY_DIFFUSION_CACHE", str(tmp_path / "c"))
    assert datasets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    assert templates.cache_dir() == data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DIFFPY_DIFFUSION_CACHE")
    d = datasets.cache_dir(create=False)
    assert d == Path(user_cache_dir("diffpy-diffusion"))
    assert Path(diffpy_diffusion.__file__).parent not in d.parents
