"""Shared dataset loaders: the evaluation set and the training pool of DESIGN.md.

The split (see ``../shared/DESIGN.md``):

* **evaluation set** — the first 1,000 rows of ``mp20/test.csv.gz``;
* **training pool** — mp20 train + val, mp20 test rows after the first 1,000,
  MPTS-52 (val + test) cells of at most 20 atoms, perov_5 (train + val + test),
  **excluding every structure whose ``material_id`` is in the evaluation set**
  (MPTS-52 shares ids with MP-20, so the filter is on ``material_id``, not on rows).

Used by the ``templates`` backend (``library="training-pool"``), by ``evaluate``
and by the neural backend's training data loader.  The data folder is
``$DIFFPY_DIFFUSION_DATA`` when set, else the first existing of
``<repo>/../shared/data`` and ``/work/shared/data``.  Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import NotAvailableError

#: Number of leading rows of ``mp20/test.csv.gz`` that form the evaluation set.
EVAL_SET_SIZE = 1000

#: Element symbol -> atomic number (pymatgen's table, built lazily).
_Z: dict[str, int] = {}


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The shared data folder (``../shared/data``).

    Parameters
    ----------
    path : path-like, optional
        Explicit folder; else ``$DIFFPY_DIFFUSION_DATA``, else ``<repo>/../shared/data``,
        else ``/work/shared/data``.

    Raises
    ------
    NotAvailableError
        When no candidate folder exists (names the environment variable to set).
    """
    cands = []
    if path is not None:
        cands.append(Path(path))
    if os.environ.get("DIFFPY_DIFFUSION_DATA"):
        cands.append(Path(os.environ["DIFFPY_DIFFUSION_DATA"]))
    cands.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    cands.append(Path("/work/shared/data"))
    for c in cands:
        if (c / "mp20").is_dir():
            return c
    raise NotAvailableError(
        "dataset folder not found: set DIFFPY_DIFFUSION_DATA to the folder holding mp20/ "
        f"(looked in {', '.join(str(c) for c in cands)})"
    )


def _atomic_number(sym: str) -> int:
    if not _Z:
        from pymatgen.core.periodic_table import Element

        for el in Element:
            _Z[el.symbol] = el.Z
    return _Z[sym]


_NUM = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"
_CELL_RE = {k: re.compile(rf"_cell_{k}\s+{_NUM}") for k in
            ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")}


def lattice_from_parameters(a, b, c, alpha, beta, gamma) -> np.ndarray:
    """Lattice rows (Å) in pymatgen's ``Lattice.from_parameters`` convention (vesta=False)."""
    from pymatgen.core import Lattice

    return Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix


def parse_p1_cif(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast reader of the pymatgen-written P1 CIFs of the CDVAE/DiffCSP CSVs.

    Returns
    -------
    lattice : ndarray (3, 3)
        Rows in Å (pymatgen convention, so the result equals ``CifParser``'s).
    frac : ndarray (N, 3)
        Fractional coordinates.
    numbers : ndarray (N,)
        Atomic numbers.

    Falls back to pymatgen's ``CifParser`` when the text is not such a file
    (symmetry operations other than ``x, y, z``, partial occupancies...).
    """
    simple = "'P 1'" in text and text.count("_symmetry_equiv_pos_as_xyz") == 1
    if simple:
        try:
            pars = [float(_CELL_RE[k].search(text).group(1)) for k in
                    ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")]
            loop = text.split("_atom_site_occupancy", 1)[1]
            frac, nums = [], []
            for line in loop.strip().splitlines():
                tok = line.split()
                if len(tok) < 7:
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
    """Parse a CIF text with pymatgen (first block, conventional setting as written)."""
    import warnings

    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(text).parse_structures(primitive=False)[0]


def arrays_to_structure(lattice, frac, numbers):
    """A pymatgen Structure from arrays."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(lattice), [int(z) for z in numbers], frac)


@dataclass
class Entry:
    """One structure of a dataset: where it is from and its CIF text."""

    material_id: str
    source: str  # e.g. "mp20/train"
    cif: str
    spacegroup: int | None = None

    def arrays(self):
        """(lattice rows Å, frac, atomic numbers)."""
        return parse_p1_cif(self.cif)

    def structure(self):
        """The structure as pymatgen ``Structure``."""
        return arrays_to_structure(*self.arrays())


def _read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def eval_set(limit: int | None = None, *, data: str | os.PathLike | None = None) -> list[Entry]:
    """The evaluation set: the first ``min(limit, 1000)`` rows of ``mp20/test.csv.gz``."""
    n = EVAL_SET_SIZE if limit is None else min(int(limit), EVAL_SET_SIZE)
    df = _read_csv(data_dir(data) / "mp20" / "test.csv.gz").iloc[:n]
    return [
        Entry(str(r.material_id), "mp20/test", r.cif, int(r["spacegroup.number"]))
        for _, r in df.iterrows()
    ]


def eval_material_ids(*, data: str | os.PathLike | None = None) -> set[str]:
    """``material_id`` of every evaluation-set structure (what the training pool must exclude)."""
    df = _read_csv(data_dir(data) / "mp20" / "test.csv.gz").iloc[:EVAL_SET_SIZE]
    return {str(m) for m in df["material_id"]}


def _natoms_from_cif(cif: str) -> int:
    return sum(1 for line in cif.split("_atom_site_occupancy", 1)[-1].strip().splitlines()
               if len(line.split()) >= 7)


def iter_training_pool(
    *, data: str | os.PathLike | None = None, max_atoms: int = 20, include_perov: bool = True
) -> Iterator[Entry]:
    """Iterate over the training pool of DESIGN.md (never an evaluation-set ``material_id``).

    Parameters
    ----------
    data : path-like, optional
        Data folder (see :func:`data_dir`).
    max_atoms : int
        Cap on atoms per cell for the MPTS-52 part (MP-20 and perov_5 are ≤ 20 already).
    include_perov : bool
        Include perov_5 (its ids are integers, disjoint from MP ids).
    """
    root = data_dir(data)
    banned = eval_material_ids(data=root)
    parts = [("mp20", "train", None), ("mp20", "val", None), ("mp20", "test", EVAL_SET_SIZE)]
    parts += [("mpts_52", "val", None), ("mpts_52", "test", None)]
    if include_perov:
        parts += [("perov_5", s, None) for s in ("train", "val", "test")]
    seen: set[str] = set()
    for ds, split, skip in parts:
        f = root / ds / f"{split}.csv.gz"
        if not f.exists():
            continue
        df = _read_csv(f)
        if skip:
            df = df.iloc[skip:]
        sg = df["spacegroup.number"] if "spacegroup.number" in df else None
        for i, (mid, cif) in enumerate(zip(df["material_id"], df["cif"])):
            mid = str(mid) if ds != "perov_5" else f"perov_5:{mid}"
            if mid in banned or mid in seen:
                continue
            if ds == "mpts_52" and _natoms_from_cif(cif) > max_atoms:
                continue
            seen.add(mid)
            yield Entry(mid, f"{ds}/{split}", cif, int(sg.iloc[i]) if sg is not None else None)


def training_pool(**kwargs) -> list[Entry]:
    """The training pool as a list (see :func:`iter_training_pool`)."""
    return list(iter_training_pool(**kwargs))
