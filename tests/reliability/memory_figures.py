"""Measure peak memory for the largest inputs the caps allow (figures for docs/reliability.md).

Not a test (it takes minutes of CPU).  Run::

    .venv/bin/python tests/reliability/memory_figures.py [--tracemalloc] [case ...]

Each case runs in a fresh subprocess so that peak RSS (``resource.getrusage``
ru_maxrss) belongs to that case alone.  With ``--tracemalloc`` the Python-heap
peak is reported too, in a separate run, because tracemalloc's own bookkeeping
inflates RSS (numpy/torch buffers allocated in C are in RSS only).  The baseline (imports)
is measured too, so "work" = peak - baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {}
TRACEMALLOC = False


def case(f):
    CASES[f.__name__] = f
    return f


def _setup_imports():
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import diffpy_diffusion.io  # noqa: F401
    import diffpy_diffusion.physics.debye  # noqa: F401


@case
def baseline(tmp):
    """Imports only (numpy, torch, pymatgen via io)."""
    return {}


@case
def read_pattern_max_rows(tmp):
    """read_observation of a 2-column .xy at the pattern-points cap (1,000,000 rows)."""
    import numpy as np

    from diffpy_diffusion.io import read_observation
    from diffpy_diffusion.limits import PATTERN_POINTS

    n = PATTERN_POINTS.value()
    x = np.linspace(5, 150, n)
    p = Path(tmp) / "big.xy"
    with open(p, "w") as fh:
        fh.write("# 2theta intensity\n")
        np.savetxt(fh, np.column_stack([x, 100 + np.sin(x)]), fmt="%.7f")
    size = p.stat().st_size
    return {"rows": n, "file_MiB": round(size / 2**20, 1),
            "_run": lambda: read_observation(p, wavelength=1.54)}


@case
def read_pattern_max_rows_4col(tmp):
    """read_observation of a 4-column .gr at the cap (1,000,000 rows x 4 = the values cap)."""
    import numpy as np

    from diffpy_diffusion.io import read_observation
    from diffpy_diffusion.limits import PATTERN_POINTS

    n = PATTERN_POINTS.value()
    r = np.linspace(0.01, 100, n)
    p = Path(tmp) / "big.gr"
    with open(p, "w") as fh:
        fh.write("# r G dr dG\n")
        np.savetxt(fh, np.column_stack([r, np.sin(r), 0 * r, 0.01 + 0 * r]), fmt="%.8f")
    return {"rows": n, "file_MiB": round(p.stat().st_size / 2**20, 1), "_run": lambda: read_observation(p)}


def _debye(n_target: int, method: str, nq: int = 1000):
    import numpy as np
    import torch
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.physics.debye import cut_sphere, debye_iq

    ni = Structure(Lattice.cubic(3.524), ["Ni"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    # fcc Ni: 4 atoms per 43.76 Å^3 -> diameter for n_target atoms
    d_nm = (6 * n_target * 43.76 / 4 / np.pi) ** (1 / 3) / 10
    pos, num = cut_sphere(ni, d_nm)
    q = torch.linspace(0.5, 25, nq, dtype=torch.float64)
    return {"atoms": int(pos.shape[0]), "diameter_nm": round(d_nm, 2), "q_points": nq, "method": method,
            "_run": lambda: debye_iq(pos, num, q, method=method)}


@case
def debye_histogram_cap(tmp):
    """Debye I(Q), histogram method, cluster at the Debye cap (50,000 atoms), 1000 Q points."""
    from diffpy_diffusion.limits import DEBYE_ATOMS

    return _debye(DEBYE_ATOMS.value(), "histogram")


@case
def debye_histogram_20k(tmp):
    """Debye I(Q), histogram method, 20,000 atoms, 1000 Q points."""
    return _debye(20_000, "histogram")


@case
def debye_exact_5k(tmp):
    """Debye I(Q), exact pair sum, 5,000 atoms, 1000 Q points (memory is chunked: O(chunk), not O(N^2))."""
    return _debye(5_000, "exact")


@case
def xrd_200_atoms_10k_points(tmp):
    """XRD pattern of a 200-atom cell (the atoms-per-cell cap), 10,000 2theta points, 3 nm size."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.simulation import simulate

    rng = np.random.default_rng(0)
    s = Structure(Lattice.orthorhombic(14.0, 15.0, 16.0), ["Cd", "Se"] * 100, rng.random((200, 3)))
    x = np.linspace(10, 120, 10_000)
    return {"atoms": len(s), "points": len(x),
            "_run": lambda: simulate(s, kind="xrd", x=x, wavelength=1.5406, size_nm=3.0)}


@case
def xrd_20_atoms_cap_points(tmp):
    """XRD pattern of a 20-atom cell on a grid at the pattern-points cap (1,000,000 points)."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.limits import PATTERN_POINTS
    from diffpy_diffusion.simulation import simulate

    rng = np.random.default_rng(0)
    s = Structure(Lattice.orthorhombic(7.0, 7.5, 8.0), ["Cd", "Se"] * 10, rng.random((20, 3)))
    x = np.linspace(10, 120, PATTERN_POINTS.value())
    return {"atoms": len(s), "points": len(x),
            "_run": lambda: simulate(s, kind="xrd", x=x, wavelength=1.5406, size_nm=3.0)}


@case
def sample_candidates_2000(tmp):
    """random backend: 2,000 raw candidates of NaCl (Z up to 20 atoms) held in memory."""
    import numpy as np

    from diffpy_diffusion import plugins
    from diffpy_diffusion.types import Observation

    obs = Observation(kind="xrd", x=np.linspace(10, 80, 100), y=np.ones(100), x_kind="2theta",
                      composition="NaCl", wavelength=1.54)
    be = plugins.get_backend("random")
    return {"candidates": 2000, "_run": lambda: be.sample(obs, 2000, seed=0)}


@case
def propose_screen_example(tmp):
    """pipeline.propose, example backend, N raw candidates sampled and screened (no refinement),
    on the bundled 3 nm NaCl pattern (N from $MEM_N, default 2,000)."""
    import os

    from diffpy_diffusion.io import read_observation
    from diffpy_diffusion.pipeline import propose

    n = int(os.environ.get("MEM_N", "2000"))
    obs = read_observation(Path(__file__).resolve().parents[2] / "diffpy_diffusion" / "examples_data"
                           / "nacl_3nm_cuka.xy", composition="NaCl")
    return {"candidates": n, "points": len(obs.x),
            "_run": lambda: propose(obs, backend="example", n=n, top=5, seed=0, progress=False, refine=False)}


def _child(name: str) -> None:
    import resource
    import tracemalloc

    _setup_imports()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        info = CASES[name](tmp)
        run = info.pop("_run", None)
        t0 = time.perf_counter()
        peak_py = None
        if run is not None:
            if TRACEMALLOC:  # its bookkeeping inflates RSS and time: a separate run
                tracemalloc.start()
            run()
            if TRACEMALLOC:
                peak_py = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
                tracemalloc.stop()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        info.update(case=name, doc=CASES[name].__doc__, seconds=round(time.perf_counter() - t0, 1),
                    rss_before_MiB=round(base_rss), peak_rss_MiB=round(peak), work_MiB=round(peak - base_rss))
        if peak_py is not None:
            info["tracemalloc_peak_MiB"] = peak_py
    print("RESULT " + json.dumps(info))


def main(argv: list[str]) -> None:
    global TRACEMALLOC
    if "--tracemalloc" in argv:
        TRACEMALLOC = True
        argv = [a for a in argv if a != "--tracemalloc"]
    if argv[:1] == ["--child"]:
        _child(argv[1])
        return
    names = argv or list(CASES)
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--child", name] + (["--tracemalloc"] if TRACEMALLOC else []),
                              capture_output=True, text=True, timeout=1800)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        print(line[-1][7:] if line else json.dumps({"case": name, "error": proc.stderr[-800:]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
