"""Chemical priors shared by the baseline backends: atomic volumes and a space-group prior.

Both are fitted once on the MP-20 part of the training pool (never the evaluation
set) by :func:`build_priors` and shipped as ``priors.json`` next to this module,
so the backends work without the data folder:

* ``atomic_volumes`` — Å³ per atom of each element, the non-negative least-squares
  fit of ``V_cell = Σ_i n_i v_i`` over the pool (the usual "sum of atomic volumes"
  estimate of AIRSS-like random search); elements missing from the fit fall back to
  ``4/3 π r³`` of pymatgen's atomic radius times a packing factor.
* ``spacegroup_counts`` — how often each space group occurs in MP-20's pool rows.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

PRIORS_FILE = Path(__file__).with_name("priors.json")


@lru_cache(maxsize=1)
def load_priors() -> dict:
    """The shipped priors (``{"atomic_volumes": {sym: Å³}, "spacegroup_counts": {str(n): count}}``)."""
    with open(PRIORS_FILE) as fh:
        return json.load(fh)


def atomic_volume(symbol: str) -> float:
    """Typical volume per atom of ``symbol`` in a solid, Å³."""
    vols = load_priors()["atomic_volumes"]
    if symbol in vols:
        return float(vols[symbol])
    from pymatgen.core.periodic_table import Element

    r = Element(symbol).atomic_radius or 1.5
    return float(4.0 / 3.0 * np.pi * float(r) ** 3 * 0.74 / 0.52)  # crude, only for elements absent from MP-20


def estimated_volume(composition: dict[str, float]) -> float:
    """Cell volume (Å³) estimated as the sum of atomic volumes of ``composition`` (atoms per cell)."""
    return float(sum(n * atomic_volume(el) for el, n in composition.items()))


def spacegroup_weights() -> np.ndarray:
    """Prior probability of space groups 1..230 (index 0 = group 1), with add-one smoothing."""
    counts = load_priors()["spacegroup_counts"]
    w = np.ones(230)
    for k, v in counts.items():
        w[int(k) - 1] += float(v)
    return w / w.sum()


def build_priors(path: str | Path | None = None) -> dict:
    """Fit the priors on the MP-20 part of the training pool and write ``priors.json``.

    Run ``python -m diffpy_diffusion.backends.priors`` to regenerate.
    """
    from collections import Counter

    from scipy.optimize import nnls

    from ..datasets import iter_training_pool

    rows, vols, sgs = [], [], Counter()
    for e in iter_training_pool(include_perov=False):
        if not e.source.startswith("mp20"):
            continue
        lat, _, z = e.arrays()
        c = Counter(int(x) for x in z)
        rows.append(c)
        vols.append(abs(np.linalg.det(lat)))
        if e.spacegroup:
            sgs[e.spacegroup] += 1
    from pymatgen.core.periodic_table import Element

    zs = sorted({z for c in rows for z in c})
    col = {z: i for i, z in enumerate(zs)}
    A = np.zeros((len(rows), len(zs)))
    for i, c in enumerate(rows):
        for z, n in c.items():
            A[i, col[z]] = n
    # relative least squares: divide each row by its volume so big cells don't dominate
    vols = np.asarray(vols)
    v, _ = nnls(A / vols[:, None], np.ones(len(vols)))
    out = {
        "source": "fitted by diffpy_diffusion.backends.priors.build_priors on MP-20 training-pool rows "
                  f"({len(rows)} structures; evaluation set excluded)",
        "atomic_volumes": {Element.from_Z(z).symbol: round(float(v[col[z]]), 3) for z in zs if v[col[z]] > 0},
        "spacegroup_counts": {str(k): int(n) for k, n in sorted(sgs.items())},
    }
    with open(path or PRIORS_FILE, "w") as fh:
        json.dump(out, fh, indent=1)
    load_priors.cache_clear()
    return out


if __name__ == "__main__":  # pragma: no cover
    o = build_priors()
    print(f"wrote {PRIORS_FILE}: {len(o['atomic_volumes'])} elements, {len(o['spacegroup_counts'])} space groups")
