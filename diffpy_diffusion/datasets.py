"""The datasets: where they are, the evaluation set, the training pool and its validation split.

This module is the only place that knows the data layout and the split (``docs/design.md``):

* **data folder** -- ``$DIFFPY_DIFFUSION_DATA`` or an explicit ``data`` argument (the CLI's
  ``--data-dir``/``--data``); it holds ``mp20/``, ``mpts_52/`` and ``perov_5/`` with the
  CDVAE/DiffCSP ``{train,val,test}.csv.gz`` files.  Nothing is guessed: without either, a
  one-line :class:`~diffpy_diffusion.errors.NotAvailableError` names the variable to set;
* **evaluation set** -- the first 1,000 rows of ``mp20/test.csv.gz``, never trained on;
* **training pool** -- the sources of :data:`POOL_SOURCES` in that order: mp20 train + val,
  mp20 test rows after the first 1,000, MPTS-52 val + test cells of at most 20 atoms, perov_5
  train + val + test (ids prefixed ``perov_5:``), each ``material_id`` once, **no
  evaluation-set ``material_id``** (MPTS-52 shares ids with MP-20, so the filter is on
  ``material_id``, not on rows);
* **validation split** of the pool -- :func:`split_ids`, by an md5 hash of ``material_id``.

Used by the ``templates`` backend (``library="training-pool"``), the built-in priors,
``evaluate`` and the diffusion backend's array cache.  Nothing here imports torch; pandas
and pymatgen are imported when data is read.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NotAvailableError

#: Environment variable naming the data folder.
DATA_ENV = "DIFFPY_DIFFUSION_DATA"

#: Number of leading rows of ``mp20/test.csv.gz`` that form the evaluation set.
EVAL_SET_SIZE = 1000

#: Atoms per cell allowed in the training pool (MP-20 and perov_5 are within it by construction).
MAX_ATOMS = 20

#: The training pool's sources in order: (dataset folder, split, rule).  Rules: ``"after_eval"``
#: drops the evaluation-set rows, ``"max_atoms"`` drops cells of more than ``max_atoms`` atoms.
POOL_SOURCES: tuple[tuple[str, str, str | None], ...] = (
    ("mp20", "train", None),
    ("mp20", "val", None),
    ("mp20", "test", "after_eval"),
    ("mpts_52", "val", "max_atoms"),
    ("mpts_52", "test", "max_atoms"),
    ("perov_5", "train", None),
    ("perov_5", "val", None),
    ("perov_5", "test", None),
)

#: Prefix of perov_5 ids: they are integers of another database and could collide with others.
PEROV_PREFIX = "perov_5:"

#: Element symbol -> atomic number (pymatgen's table, built lazily).
_Z: dict[str, int] = {}


#: Environment variable naming the cache folder (indexed template libraries, the pool's array cache).
CACHE_ENV = "DIFFPY_DIFFUSION_CACHE"


def cache_dir(create: bool = True) -> Path:
    """The cache folder: ``$DIFFPY_DIFFUSION_CACHE``, else ``platformdirs.user_cache_dir("diffpy-diffusion")``.

    One home for everything the package derives from data and keeps between runs (never the
    package folder: that is site-packages once installed).  Created when ``create``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        d = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        d = Path(user_cache_dir("diffpy-diffusion"))
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data folder: ``path`` when given, else ``$DIFFPY_DIFFUSION_DATA``.

    Parameters
    ----------
    path : path-like, optional
        Explicit folder (the CLI's ``--data-dir``); overrides the environment variable.

    Returns
    -------
    Path
        A folder that holds ``mp20/``.

    Raises
    ------
    NotAvailableError
        When neither is set, or the folder has no ``mp20/`` (the message names the variable).
    """
    if path is None or str(path) == "":
        env = os.environ.get(DATA_ENV, "")
        if not env:
            raise NotAvailableError(
                f"no dataset folder: set {DATA_ENV} to the folder that holds mp20/, mpts_52/ and perov_5/")
        root, origin = Path(env).expanduser(), f"{DATA_ENV}={env}"
    else:
        root, origin = Path(path).expanduser(), str(path)
    if not (root / "mp20").is_dir():
        raise NotAvailableError(f"{origin}: no mp20/ folder there; the dataset folder ({DATA_ENV}, or the "
                                "command's data option) is the one that holds mp20/, mpts_52/ and perov_5/")
    return root


# --------------------------------------------------------------------------- CIF parsing
def _atomic_number(sym: str) -> int:
    if not _Z:
        from pymatgen.core.periodic_table import Element

        for el in Element:
            _Z[el.symbol] = el.Z
    return _Z[sym]


_NUM = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"
_CELL_KEYS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")
_CELL_RE = {k: re.compile(rf"_cell_{k}\s+{_NUM}") for k in _CELL_KEYS}


def lattice_from_parameters(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Lattice rows (Å) from a, b, c (Å) and α, β, γ (degrees), as pymatgen's ``Lattice.from_parameters``."""
    from pymatgen.core import Lattice

    return Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix


def count_atoms_in_cif(cif: str) -> int:
    """Rows of the ``_atom_site_`` loop of a CIF text, without parsing it.

    For the P1 CIFs of the CDVAE/DiffCSP datasets (one row per atom, occupancy 1) this is
    the number of atoms in the cell.

    Parameters
    ----------
    cif : str
        CIF text.

    Returns
    -------
    int
        Data rows of the first ``_atom_site_`` loop (0 when there is none).
    """
    n = 0
    in_tags = False
    for line in cif.splitlines():
        s = line.strip()
        if n:
            if not s or s.startswith(("loop_", "_", "data_", "#")):
                break
            n += 1
        elif s.startswith("_atom_site_") and not s.startswith("_atom_site_aniso"):
            in_tags = True
        elif in_tags and s and not s.startswith("#"):
            if s.startswith(("loop_", "_", "data_")):  # the loop had no rows
                return 0
            n = 1
    return n


def parse_p1_cif(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays of a structure from the pymatgen-written P1 CIFs of the CDVAE/DiffCSP CSVs.

    Fast path for those files; any other CIF (symmetry operations other than ``x, y, z``,
    partial occupancies...) goes through :func:`cif_to_structure`.

    Parameters
    ----------
    text : str
        CIF text.

    Returns
    -------
    lattice : ndarray (3, 3)
        Rows in Å (pymatgen convention, so the result equals ``CifParser``'s).
    frac : ndarray (N, 3)
        Fractional coordinates.
    numbers : ndarray (N,)
        Atomic numbers.
    """
    simple = "'P 1'" in text and text.count("_symmetry_equiv_pos_as_xyz") == 1
    if simple:
        try:
            pars = [float(_CELL_RE[k].search(text).group(1)) for k in _CELL_KEYS]
            loop = text.split("_atom_site_occupancy", 1)[1]
            frac, nums = [], []
            for line in loop.strip().splitlines():
                tok = line.split()
                if len(tok) < 7:  # symbol, label, multiplicity, x, y, z, occupancy
                    break
                if abs(float(tok[6]) - 1.0) > 1e-6:
                    raise ValueError("partial occupancy")
                nums.append(_atomic_number(tok[0]))
                frac.append([float(tok[3]), float(tok[4]), float(tok[5])])
            if nums:
                return lattice_from_parameters(*pars), np.array(frac), np.array(nums, dtype=np.int64)
        except (AttributeError, ValueError, IndexError, KeyError):
            pass
    s = cif_to_structure(text)
    return s.lattice.matrix, s.frac_coords, np.array([sp.Z for sp in s.species], dtype=np.int64)


def cif_to_structure(text: str):
    """A pymatgen ``Structure`` from a CIF text (first block, conventional setting as written).

    This is the data README's recipe, ``CifParser.from_str(text).parse_structures(primitive=False)[0]``,
    with pymatgen's warnings silenced.
    """
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(text).parse_structures(primitive=False)[0]


def arrays_to_structure(lattice, frac, numbers):
    """A pymatgen ``Structure`` from lattice rows (Å), fractional coordinates and atomic numbers."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(lattice), [int(z) for z in numbers], frac)


# --------------------------------------------------------------------------- entries
@dataclass
class Entry:
    """One structure of a dataset: its id, where it is from and its CIF text.

    Attributes
    ----------
    material_id : str
        Materials Project id (``mp-…``) or ``perov_5:<int>``.
    source : str
        ``"<dataset>/<split>"``, e.g. ``"mp20/train"``.
    cif : str
        The CIF text of the CSV row.
    spacegroup : int or None
        International space-group number when the CSV has one (MP-20).
    """

    material_id: str
    source: str
    cif: str
    spacegroup: int | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lattice rows Å, fractional coordinates, atomic numbers); see :func:`parse_p1_cif`."""
        return parse_p1_cif(self.cif)

    def structure(self):
        """The structure as a pymatgen ``Structure``."""
        return arrays_to_structure(*self.arrays())


def _read_csv(path: Path, nrows: int | None = None):
    import pandas as pd

    return pd.read_csv(path, nrows=nrows)


def eval_set(limit: int | None = None, *, data: str | os.PathLike | None = None) -> list[Entry]:
    """The evaluation set: the first ``min(limit, 1000)`` rows of ``mp20/test.csv.gz``.

    Parameters
    ----------
    limit : int, optional
        Take the first ``limit`` rows (default all 1,000).
    data : path-like, optional
        Data folder (see :func:`data_dir`).
    """
    n = EVAL_SET_SIZE if limit is None else min(int(limit), EVAL_SET_SIZE)
    df = _read_csv(data_dir(data) / "mp20" / "test.csv.gz", nrows=n)
    return [
        Entry(str(mid), "mp20/test", cif, int(sg))
        for mid, cif, sg in zip(df["material_id"], df["cif"], df["spacegroup.number"])
    ]


def eval_material_ids(*, data: str | os.PathLike | None = None) -> set[str]:
    """``material_id`` of every evaluation-set structure (what the training pool excludes)."""
    df = _read_csv(data_dir(data) / "mp20" / "test.csv.gz", nrows=EVAL_SET_SIZE)
    return {str(m) for m in df["material_id"]}


def iter_training_pool(
    *, data: str | os.PathLike | None = None, max_atoms: int = MAX_ATOMS, include_perov: bool = True
) -> Iterator[Entry]:
    """Iterate over the training pool (never an evaluation-set ``material_id``).

    The order is that of :data:`POOL_SOURCES`, and within a file the row order; a
    ``material_id`` seen before is skipped.  A source file that is absent is skipped
    (the staged data may lack some splits).

    Parameters
    ----------
    data : path-like, optional
        Data folder (see :func:`data_dir`).
    max_atoms : int
        Cap on atoms per cell for the MPTS-52 part (MP-20 and perov_5 are ≤ 20 already).
    include_perov : bool
        Include perov_5 (its ids are integers of another database, prefixed ``perov_5:``).

    Yields
    ------
    Entry
    """
    root = data_dir(data)
    banned = eval_material_ids(data=root)
    seen: set[str] = set()
    for ds, split, rule in POOL_SOURCES:
        if ds == "perov_5" and not include_perov:
            continue
        path = root / ds / f"{split}.csv.gz"
        if not path.is_file():
            continue
        df = _read_csv(path)
        if rule == "after_eval":
            df = df.iloc[EVAL_SET_SIZE:]
        ids = df["material_id"].astype(str)
        if ds == "perov_5":
            ids = PEROV_PREFIX + ids
        sgs = df["spacegroup.number"] if "spacegroup.number" in df else [None] * len(df)
        for mid, cif, sg in zip(ids, df["cif"], sgs):
            if mid in banned or mid in seen:
                continue
            if rule == "max_atoms" and count_atoms_in_cif(cif) > max_atoms:
                continue
            seen.add(mid)
            yield Entry(mid, f"{ds}/{split}", cif, None if sg is None else int(sg))


def training_pool(**kwargs) -> list[Entry]:
    """The training pool as a list (keyword arguments of :func:`iter_training_pool`)."""
    return list(iter_training_pool(**kwargs))


def split_ids(ids: Iterable[str], val_fraction: float = 0.02) -> np.ndarray:
    """Deterministic train/validation split of the pool by an md5 hash of ``material_id``.

    A structure's side does not depend on the rest of the pool, so the split is stable
    when the pool grows.

    Parameters
    ----------
    ids : iterable of str
        ``material_id`` values.
    val_fraction : float
        Expected fraction in the validation set (resolution 1e-4).

    Returns
    -------
    ndarray of bool
        True = validation.
    """
    h = np.array([int(hashlib.md5(str(i).encode()).hexdigest()[:8], 16) for i in ids], dtype=np.int64)
    return (h % 10000) < val_fraction * 10000
