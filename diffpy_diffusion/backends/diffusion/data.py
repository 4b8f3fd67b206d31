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
    """``$DIFFPY_DIFFUSION_CACHE``, else the user cache folder ``platformdirs.user_cache_dir("diffpy-diffusion")``."""
    env = os.environ.get("DIFFPY_DIFFUSION_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("diffpy-diffusion"))


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
                bins, inten = reflections(lat, frac, z, max_refl=max_refl)
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
