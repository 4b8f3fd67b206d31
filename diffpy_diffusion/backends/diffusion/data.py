"""Training data of the diffusion backend: the training pool of DESIGN.md and its array cache.

The pool is everything in ``../shared/data`` that DESIGN.md allows for training:

* ``mp20/train.csv.gz`` and ``mp20/val.csv.gz`` (all rows),
* ``mp20/test.csv.gz`` rows after the first 1,000,
* ``mpts_52/{val,test}.csv.gz`` cells of at most 20 atoms,
* ``perov_5/{train,val,test}.csv.gz``,

minus every structure whose ``material_id`` is in the **evaluation set** (the first
1,000 rows of ``mp20/test.csv.gz``); duplicates of a ``material_id`` are kept once.
perov_5 ids are integers of another database and get the prefix ``perov_5:``.

CIFs are parsed with pymatgen once; the arrays (canonical Niggli lattice, fractional
coordinates, atomic numbers and the X-ray reflection list up to Q = 8.2 Å⁻¹) are cached in
an ``.npz`` under a gitignored cache folder (``$DIFFPY_DIFFUSION_CACHE`` or
``<repo>/.cache/diffpy_diffusion``).  Nothing at module level imports pymatgen or torch,
so the GPU training path (which reads only the ``.npz``) runs without pymatgen.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

#: Rows of mp20/test.csv.gz that form the evaluation set (never trained on).
EVAL_ROWS = 1000
#: Atom cap of the training pool (atoms per cell).
MAX_ATOMS = 20
#: Upper end of the stored reflection lists, Å⁻¹ (covers the canonical grid 0–8.15).
Q_MAX_REFL = 8.2
#: Width of the Q bins reflections are merged into, Å⁻¹ (≪ the narrowest peak, FWHM ≈ 0.028 at 20 nm).
Q_BIN = 0.004
#: Strongest merged reflections kept per structure.
MAX_REFL = 384

POOL_SOURCES = (
    ("mp20", "train", None),
    ("mp20", "val", None),
    ("mp20", "test", "after_eval"),
    ("mpts_52", "val", "max_atoms"),
    ("mpts_52", "test", "max_atoms"),
    ("perov_5", "train", None),
    ("perov_5", "val", None),
    ("perov_5", "test", None),
)


def default_data_dir() -> Path:
    """``$DIFFPY_DIFFUSION_DATA`` or ``../shared/data`` next to the repository."""
    env = os.environ.get("DIFFPY_DIFFUSION_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path("../shared/data")


def default_cache_dir() -> Path:
    """``$DIFFPY_DIFFUSION_CACHE`` or ``<repo>/.cache/diffpy_diffusion`` (gitignored)."""
    env = os.environ.get("DIFFPY_DIFFUSION_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    return repo / ".cache" / "diffpy_diffusion"


def _read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def evaluation_ids(data_dir: str | Path | None = None) -> set[str]:
    """material_ids of the evaluation set: the first 1,000 rows of ``mp20/test.csv.gz``."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    df = _read_csv(data_dir / "mp20" / "test.csv.gz")
    return set(df["material_id"].astype(str).iloc[:EVAL_ROWS])


def _count_atoms_in_cif(cif: str) -> int:
    """Atom sites of a P1 pymatgen CIF without parsing it (lines of the atom_site loop)."""
    n = 0
    in_loop = False
    for line in cif.splitlines():
        s = line.strip()
        if s.startswith("_atom_site_"):
            in_loop = True
            continue
        if in_loop:
            if not s or s.startswith("loop_") or s.startswith("_"):
                if n:
                    break
                continue
            n += 1
    return n


@dataclass
class PoolRecord:
    """One structure of the training pool (unparsed)."""

    material_id: str
    source: str
    cif: str


def training_pool_records(
    data_dir: str | Path | None = None, *, max_atoms: int = MAX_ATOMS
) -> list[PoolRecord]:
    """The training pool of DESIGN.md as (material_id, source, CIF text) records.

    This is also what ``--library training-pool`` of the templates backend resolves to.

    Parameters
    ----------
    data_dir : path, optional
        The ``shared/data`` folder (default :func:`default_data_dir`).
    max_atoms : int
        Cap on cell size for MPTS-52 (MP-20 and perov_5 are ≤ 20 atoms already).

    Returns
    -------
    list of PoolRecord
        Unique material_ids, none in the evaluation set.
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if not (data_dir / "mp20" / "test.csv.gz").is_file():
        raise FileNotFoundError(f"training data not found under {data_dir} (set DIFFPY_DIFFUSION_DATA)")
    excluded = evaluation_ids(data_dir)
    seen: set[str] = set()
    out: list[PoolRecord] = []
    for ds, split, rule in POOL_SOURCES:
        path = data_dir / ds / f"{split}.csv.gz"
        if not path.is_file():
            continue
        df = _read_csv(path)
        if rule == "after_eval":
            df = df.iloc[EVAL_ROWS:]
        ids = df["material_id"].astype(str)
        if ds == "perov_5":
            ids = "perov_5:" + ids
        for mid, cif in zip(ids, df["cif"]):
            if mid in excluded or mid in seen:
                continue
            if rule == "max_atoms" and _count_atoms_in_cif(cif) > max_atoms:
                continue
            seen.add(mid)
            out.append(PoolRecord(mid, f"{ds}/{split}", cif))
    return out


def parse_cif(cif: str):
    """A pymatgen Structure from a pool CIF (the README's recipe)."""
    from pymatgen.io.cif import CifParser

    return CifParser.from_str(cif).parse_structures(primitive=False)[0]


def training_pool_structures(data_dir=None) -> Iterator[tuple[str, object]]:
    """Yield ``(material_id, pymatgen Structure)`` for the training pool (parses lazily)."""
    for rec in training_pool_records(data_dir):
        try:
            yield rec.material_id, parse_cif(rec.cif)
        except Exception:  # a broken CIF is skipped, not fatal
            continue


# --------------------------------------------------------------------------- reflections
_XRAY_PARAMS: dict | None = None


def xray_params() -> dict:
    """Cromer–Mann-like coefficients used by pymatgen's XRDCalculator (symbol -> [[a, b] x4])."""
    global _XRAY_PARAMS
    if _XRAY_PARAMS is None:
        import json
        import importlib.util

        spec = importlib.util.find_spec("pymatgen.analysis.diffraction")
        path = Path(spec.submodule_search_locations[0]) / "atomic_scattering_params.json"
        _XRAY_PARAMS = json.loads(path.read_text())
    return _XRAY_PARAMS


def xray_form_factor_table(numbers: np.ndarray, q: np.ndarray) -> np.ndarray:
    """X-ray form factors f(Q) as in pymatgen's XRDCalculator, shape (len(numbers), len(q)).

    f = Z - 41.78214 s² Σ a_i exp(-b_i s²), s = Q / 4π (Å⁻¹).
    """
    from pymatgen.core.periodic_table import Element

    params = xray_params()
    s2 = (np.asarray(q) / (4 * np.pi)) ** 2
    out = np.empty((len(numbers), len(s2)))
    for i, z in enumerate(numbers):
        coeffs = np.asarray(params[Element.from_Z(int(z)).symbol])
        out[i] = z - 41.78214 * s2 * np.sum(coeffs[:, 0, None] * np.exp(-coeffs[:, 1, None] * s2), axis=0)
    return out


def reflections(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray,
                q_max: float = Q_MAX_REFL, q_bin: float = Q_BIN, max_refl: int = MAX_REFL):
    """Merged X-ray reflection list: Q bin index and Σ|F|² (multiplicity included, no LP/DW).

    Parameters
    ----------
    lattice : (3, 3) array
        Lattice vectors as rows, Å.
    frac, numbers : arrays
        Fractional coordinates (N, 3) and atomic numbers (N,).

    Returns
    -------
    bins : uint16 array
        Q / q_bin rounded (Q in Å⁻¹).
    intensity : float32 array
        Σ |F(hkl)|² over all hkl (both Friedel mates) in the bin, divided by its maximum.
    """
    lattice = np.asarray(lattice, float)
    recip = 2 * np.pi * np.linalg.inv(lattice).T  # rows b_i, Å⁻¹
    hmax = np.floor(q_max * np.linalg.norm(lattice, axis=1) / (2 * np.pi)).astype(int)
    rng = [np.arange(-m, m + 1) for m in hmax]
    hkl = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
    g = hkl @ recip
    q = np.linalg.norm(g, axis=1)
    keep = (q > 1e-8) & (q <= q_max)
    hkl, q = hkl[keep], q[keep]
    b = np.rint(q / q_bin).astype(np.int64)
    # form factors on the unique bins (they vary slowly with Q)
    ub, inv = np.unique(b, return_inverse=True)
    species = np.unique(numbers)
    ff = xray_form_factor_table(species, ub * q_bin)  # (S, U)
    sidx = np.searchsorted(species, numbers)
    phase = 2 * np.pi * (hkl @ np.asarray(frac, float).T)  # (R, N)
    f_at = ff[sidx][:, inv].T  # (R, N)
    re = (f_at * np.cos(phase)).sum(1)
    im = (f_at * np.sin(phase)).sum(1)
    inten = np.bincount(inv, weights=re**2 + im**2, minlength=len(ub))
    nz = inten > 1e-8 * inten.max()
    ub, inten = ub[nz], inten[nz]
    if len(ub) > max_refl:
        top = np.sort(np.argsort(inten)[-max_refl:])
        ub, inten = ub[top], inten[top]
    return ub.astype(np.uint16), (inten / inten.max()).astype(np.float32)


def canonical_arrays(structure):
    """Niggli-reduced lattice in the canonical orientation (from a, b, c, α, β, γ) + frac + Z."""
    from pymatgen.core import Lattice

    s = structure.get_reduced_structure("niggli")
    lat = Lattice.from_parameters(*s.lattice.abc, *s.lattice.angles)
    frac = np.mod(s.frac_coords, 1.0)
    return lat.matrix.astype(np.float32), frac.astype(np.float32), np.array(s.atomic_numbers, dtype=np.int16)


def pool_cache_path(cache_dir=None) -> Path:
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    return cache_dir / "pool_v1.npz"


def build_pool_arrays(data_dir=None, out: str | Path | None = None, *, limit: int | None = None,
                      with_reflections: bool = True, progress: bool = True, max_refl: int = MAX_REFL) -> Path:
    """Parse the pool once and save its arrays as ``.npz`` (the training input).

    Saved keys: ``ids``, ``source``, ``lattice`` (B,3,3) Å, ``natoms`` (B,), ``frac`` (N,3),
    ``numbers`` (N,), and with reflections ``refl_n`` (B,), ``refl_bin`` (R,) uint16,
    ``refl_int`` (R,) float16, ``q_bin``.
    """
    records = training_pool_records(data_dir)
    if limit:
        records = records[:limit]
    out = Path(out) if out else pool_cache_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    ids, srcs, lats, nat, fracs, nums, rn, rb, ri = [], [], [], [], [], [], [], [], []
    for k, rec in enumerate(records):
        try:
            s = parse_cif(rec.cif)
            if len(s) > MAX_ATOMS or not s.is_ordered:
                continue
            lat, frac, z = canonical_arrays(s)
            if with_reflections:
                bins, inten = reflections(lat, frac, z, max_refl=max_refl)
        except Exception as exc:  # skip unparsable rows, report them
            print(f"skip {rec.material_id}: {exc}")
            continue
        ids.append(rec.material_id)
        srcs.append(rec.source)
        lats.append(lat)
        nat.append(len(z))
        fracs.append(frac)
        nums.append(z)
        if with_reflections:
            rn.append(len(bins))
            rb.append(bins)
            ri.append(inten.astype(np.float16))
        if progress and k % 1000 == 0:
            print(f"{k}/{len(records)}", flush=True)
    arrays = dict(
        ids=np.array(ids), source=np.array(srcs), lattice=np.stack(lats), natoms=np.array(nat, np.int16),
        frac=np.concatenate(fracs), numbers=np.concatenate(nums), q_bin=np.float32(Q_BIN),
    )
    if with_reflections:
        arrays.update(refl_n=np.array(rn, np.int32), refl_bin=np.concatenate(rb), refl_int=np.concatenate(ri))
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return out


def split_ids(ids, val_fraction: float = 0.02):
    """Deterministic train/validation split of the pool by a hash of material_id (bool mask: True = val)."""
    h = np.array([int(hashlib.md5(str(i).encode()).hexdigest()[:8], 16) for i in ids])
    return (h % 10000) < val_fraction * 10000


if __name__ == "__main__":  # python -m diffpy_diffusion.backends.diffusion.data [out.npz] [limit]
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else None
    lim = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(build_pool_arrays(out=out, limit=lim))
