"""Training data of the diffusion backend: the array cache of the training pool.

The pool itself (which structures, in which order, never an evaluation-set ``material_id``)
is :func:`diffpy_diffusion.datasets.iter_training_pool`.  Here its CIFs are parsed with
pymatgen once and the arrays (canonical Niggli lattice, fractional coordinates, atomic
numbers and the X-ray reflection list up to Q = 8.2 Å⁻¹) are cached in an ``.npz`` in the
user cache folder (``$DIFFPY_DIFFUSION_CACHE``, else ``platformdirs.user_cache_dir("diffpy-diffusion")``).
Nothing at module level imports pymatgen or torch, so the GPU training path (which reads
only the ``.npz``) runs without pymatgen.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...datasets import MAX_ATOMS

#: Upper end of the stored reflection lists, Å⁻¹ (covers the canonical grid 0–8.15).
Q_MAX_REFL = 8.2
#: Width of the Q bins reflections are merged into, Å⁻¹ (≪ the narrowest peak, FWHM ≈ 0.028 at 20 nm).
Q_BIN = 0.004
#: Strongest merged reflections kept per structure.
MAX_REFL = 384


def default_cache_dir() -> Path:
    """The pool's array cache folder: :func:`diffpy_diffusion.datasets.cache_dir` (not created here)."""
    from ...datasets import cache_dir

    return cache_dir(create=False)


# --------------------------------------------------------------------------- reflections
def binned_reflections(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray,
                       q_max: float = Q_MAX_REFL, q_bin: float = Q_BIN, max_refl: int = MAX_REFL):
    """The cached reflection list of one structure: Q bin index and Σ|F|² (multiplicity included, no LP/DW).

    The reflections are :func:`physics.xrd.reflections` (pymatgen's XRDCalculator form-factor
    coefficients, no Debye–Waller); the cache policy here sums them into ``q_bin`` wide Q bins,
    drops bins below 1e-8 of the strongest (systematic absences) and keeps the ``max_refl``
    strongest.

    Parameters
    ----------
    lattice : (3, 3) array
        Lattice vectors as rows, Å.
    frac, numbers : arrays
        Fractional coordinates (N, 3) and atomic numbers (N,).
    q_max, q_bin : float
        Largest Q and bin width, Å⁻¹.
    max_refl : int

    Returns
    -------
    bins : uint16 array
        Q / q_bin rounded (Q in Å⁻¹).
    intensity : float32 array
        Σ |F(hkl)|² over all hkl (both Friedel mates) in the bin, divided by its maximum.
    """
    import torch

    from ...physics.crystal import CrystalBatch
    from ...physics.xrd import reflections

    batch = CrystalBatch.from_arrays([lattice], [frac], [numbers], dtype=torch.float64)
    with torch.no_grad():
        refl = reflections(batch, q_max, table="pymatgen", debye_waller=False, merge=True)
    b = np.rint(refl.q.numpy() / q_bin).astype(np.int64)
    ub, inv = np.unique(b, return_inverse=True)
    inten = np.bincount(inv, weights=refl.intensity.numpy(), minlength=len(ub))
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


def pool_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The pool's array cache file in ``cache_dir`` (default :func:`default_cache_dir`)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    return cache_dir / "pool_v1.npz"


def build_pool_arrays(data_dir: str | os.PathLike | None = None, out: str | Path | None = None, *,
                      limit: int | None = None, with_reflections: bool = True, progress: bool = True,
                      max_refl: int = MAX_REFL) -> Path:
    """Parse the training pool once and save its arrays as ``.npz`` (the training input).

    The pool is :func:`diffpy_diffusion.datasets.training_pool` of ``data_dir`` (default
    ``$DIFFPY_DIFFUSION_DATA``), its first ``limit`` structures when given; ``out`` defaults to
    :func:`pool_cache_path`.  Saved keys: ``ids``, ``source``, ``lattice`` (B,3,3) Å,
    ``natoms`` (B,), ``frac`` (N,3), ``numbers`` (N,), and with reflections ``refl_n`` (B,),
    ``refl_bin`` (R,) uint16, ``refl_int`` (R,) float16, ``q_bin``.
    """
    from ...datasets import cif_to_structure, training_pool

    records = training_pool(data=data_dir)
    if limit:
        records = records[:limit]
    out = Path(out) if out else pool_cache_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    ids, srcs, lats, nat, fracs, nums, rn, rb, ri = [], [], [], [], [], [], [], [], []
    for k, rec in enumerate(records):
        try:
            s = cif_to_structure(rec.cif)
            if len(s) > MAX_ATOMS or not s.is_ordered:
                continue
            lat, frac, z = canonical_arrays(s)
            if with_reflections:
                bins, inten = binned_reflections(lat, frac, z, max_refl=max_refl)
        except Exception as exc:  # noqa: BLE001 - skip unparsable rows, report them
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


if __name__ == "__main__":  # python -m diffpy_diffusion.backends.diffusion.data [out.npz] [limit]
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else None
    lim = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(build_pool_arrays(out=out, limit=lim))
