"""Reference structures for physics tests and benchmarks (MP-20 from ``$DIFFPY_DIFFUSION_DATA``, or pymatgen-built).

The physics layer does not import :mod:`diffpy_diffusion.datasets` (a higher layer), so
:func:`shared_data_dir` reads the environment variable itself.
"""

from __future__ import annotations

import warnings

import numpy as np


def cdse_zincblende():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("F-43m", Lattice.cubic(6.077), ["Cd", "Se"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def ni_fcc():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(3.52), ["Ni"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def built_structures(n: int = 60, seed: int = 0):
    """``n`` varied crystals built with pymatgen (fallback when MP-20 is absent)."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    protos = [
        ("Fm-3m", lambda a, b, c: Lattice.cubic(a), [[0, 0, 0], [0.5, 0.5, 0.5]], 2),  # rock salt
        ("Fm-3m", lambda a, b, c: Lattice.cubic(a), [[0, 0, 0], [0.25, 0.25, 0.25]], 2),  # fluorite
        ("Pm-3m", lambda a, b, c: Lattice.cubic(a * 0.7), [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]], 3),
        ("P6_3mc", lambda a, b, c: Lattice.hexagonal(a * 0.7, c), [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]], 2),
        ("P4/mmm", lambda a, b, c: Lattice.tetragonal(a * 0.6, c * 0.7), [[0, 0, 0], [0.5, 0.5, 0.3]], 2),
        ("Pnma", lambda a, b, c: Lattice.orthorhombic(a, b, c), [[0.1, 0.25, 0.2], [0.35, 0.25, 0.6]], 2),
        ("P2_1/c", lambda a, b, c: Lattice.monoclinic(a, b, c, 100.0), [[0.12, 0.31, 0.22], [0.4, 0.1, 0.7]], 2),
        ("P-1", lambda a, b, c: Lattice.from_parameters(a, b, c, 80, 95, 105), [[0.1, 0.2, 0.3], [0.6, 0.7, 0.2]], 2),
    ]
    elements = ["Li", "O", "Na", "Cl", "Mg", "S", "Ca", "F", "Ti", "Zn", "Se", "Cd", "Ba", "Sr", "Cu", "Fe", "Ni", "Al"]
    out = []
    i = 0
    while len(out) < n:
        sg, lat, coords, k = protos[i % len(protos)]
        a, b, c = rng.uniform(4.0, 7.0, 3)
        species = list(rng.choice(elements, size=k, replace=False))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_spacegroup(sg, lat(a, b, c), species, coords)
        except ValueError:
            i += 1
            continue
        if 1 <= len(s) <= 20:
            out.append(s)
        i += 1
    return out


def mp20_structures(shared_data, n: int = 60):
    """First ``n`` structures of ``<shared_data>/mp20/test.csv.gz``, or ``None`` when absent.

    Parameters
    ----------
    shared_data : Path or None
        The datasets folder (:func:`shared_data_dir`); ``None`` gives ``None``.
    n : int
        Number of rows to read.
    """
    if shared_data is None:
        return None
    path = shared_data / "mp20" / "test.csv.gz"
    if not path.exists():
        return None
    import pandas as pd
    from pymatgen.core import Structure

    df = pd.read_csv(path, nrows=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_str(c, fmt="cif") for c in df["cif"]]


def shared_data_dir():
    """The datasets folder ``$DIFFPY_DIFFUSION_DATA`` when it is set and exists, else ``None``.

    Returns
    -------
    Path or None
        Callers fall back to :func:`built_structures` on ``None``.
    """
    import os
    from pathlib import Path

    env = os.environ.get("DIFFPY_DIFFUSION_DATA")
    if env and Path(env).expanduser().is_dir():
        return Path(env).expanduser()
    return None
