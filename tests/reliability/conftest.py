"""Helpers shared by the reliability tests (pattern folders, CLI runner, result comparison)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# (formula, space group, species, frac coords, a in Å): simple cubic prototypes
PROTOTYPES = [
    ("NaCl", "Fm-3m", ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 5.64),
    ("CsCl", "Pm-3m", ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 4.12),
    ("Cu", "Fm-3m", ["Cu"], [[0, 0, 0]], 3.615),
    ("ZnS", "F-43m", ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]], 5.41),
]

#: timing fields: the only keys allowed to differ between two runs with the same seed
TIMING_KEYS = {"seconds", "timings", "wall_s", "elapsed_s", "started", "finished", "time", "date", "created",
               "duration_s", "total_s", "sample_s", "screen_s", "refine_s"}


def make_patterns(folder: Path, count: int) -> Path:
    """``count`` simulated PXRD patterns (Cu Kα1) with the project's XRD model, and names.csv."""
    import torch
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.io import write_xy
    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.xrd import xrd_pattern

    folder.mkdir(parents=True, exist_ok=True)
    x = np.arange(15.0, 75.0, 0.1)
    rows = ["file,composition"]
    structures, names = [], []
    for i in range(count):
        formula, sg, species, coords, a = PROTOTYPES[i % len(PROTOTYPES)]
        structures.append(Structure.from_spacegroup(sg, Lattice.cubic(a * (1 + 0.002 * i)), species, coords))
        names.append((f"p{i:02d}_{formula}", formula))
    b = CrystalBatch.from_structures(structures, dtype=torch.float64)
    y = xrd_pattern(b, torch.as_tensor(x), x_kind="2theta", wavelength=1.540598, size_nm=5.0).numpy()
    for (name, formula), yi in zip(names, y):
        write_xy(x, 1000 * yi / yi.max() + 20, folder / f"{name}.xy", columns=("2theta", "intensity"), force=True)
        rows.append(f"{name}.xy,{formula}")
    (folder / "names.csv").write_text("\n".join(rows) + "\n")
    return folder


def strip_timing(obj):
    """A copy of a JSON object without timing fields (recursively)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def tree_snapshot(out: Path) -> dict[str, object]:
    """Every file under ``out``: JSON files without timing fields, summary.csv without its seconds
    column, others as bytes."""
    snap: dict[str, object] = {}
    for f in sorted(out.rglob("*")):
        if not f.is_file():
            continue
        rel = str(f.relative_to(out))
        if f.suffix == ".json":
            snap[rel] = strip_timing(json.loads(f.read_text()))
        elif f.name == "summary.csv":
            import csv
            import io

            rows = list(csv.DictReader(io.StringIO(f.read_text())))
            snap[rel] = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
        else:
            snap[rel] = f.read_bytes()
    return snap


def cli(*args: str, env: dict | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m diffpy_diffusion ARGS`` in a subprocess (one BLAS thread)."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "diffpy_diffusion", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=kw.pop("cwd", None), **kw)


@pytest.fixture(scope="session")
def batch_patterns(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("reliability-patterns"), 8)
