"""Wall time of ``propose`` after set-up (issue 16: the bundled demo and a 5-atom lab pattern, <= 5 s each).

Two cases, each run ``--runs`` times in one process through the click entry point:

* ``demo``: the command of ``make demo`` (``diffpy-diffuse propose nacl_3nm_cuka.xy --composition
  NaCl --wavelength CuKa --size 3nm --n 16 --top 3 --seed 0``);
* ``lab``: a measured 5-atom Cu Kα lab pattern of ~6,000 points, NaCu2P2 (I4/mmm; 6,252 points,
  10-135° 2θ; ``measured_xrd/crystalyze_8/NaCu2P2`` of the datasets, so ``$DIFFPY_DIFFUSION_DATA``
  must be set), with ``--backend templates --top 5`` as the issue states it.

The first run pays for the set-up (imports, weights, the plugins' models); the later ones are
``propose`` after set-up.  Prints, for each run, wall and CPU seconds of the whole command (reading
the file and writing the outputs included), propose's own ``timings`` from ``results.json``, and the
candidates (space group, Rw, whether the fit converged), which must not change between runs.

Usage::

    python benchmarks/demo_warm.py [--case demo|lab] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "diffpy_diffusion" / "examples_data" / "nacl_3nm_cuka.xy"
LAB = Path("measured_xrd") / "crystalyze_8" / "NaCu2P2" / "Na_Cu2_P2_raw.xy"


def command(case: str, out: str) -> list[str]:
    """The ``propose`` arguments of ``case``."""
    if case == "demo":
        return ["propose", str(DEMO), "--composition", "NaCl", "--wavelength", "CuKa", "--size", "3nm", "--n", "16",
                "--top", "3", "--seed", "0", "-o", out, "--force", "-q"]
    data = os.environ.get("DIFFPY_DIFFUSION_DATA")
    if not data or not (Path(data) / LAB).is_file():
        sys.exit(f"--case lab needs $DIFFPY_DIFFUSION_DATA pointing at the datasets folder (with {LAB})")
    return ["propose", str(Path(data) / LAB), "--composition", "NaCu2P2", "--wavelength", "CuKa", "--x", "2theta",
            "--backend", "templates", "--top", "5", "--seed", "0", "-o", out, "--force", "-q"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("demo", "lab"), default="demo")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    from diffpy_diffusion.cli import cli

    with tempfile.TemporaryDirectory() as d:
        cmd = command(args.case, d)
        for i in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            cli.main(args=cmd, prog_name="diffpy-diffuse", standalone_mode=False)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            doc = json.loads((Path(d) / "results.json").read_text(encoding="utf-8"))
            found = [(c["spacegroup"], round(c["rw"], 5), c.get("refine_converged")) for c in doc["candidates"]]
            print(f"run {i + 1}: wall {wall:.2f} s, cpu {cpu:.2f} s, timings {doc['timings']}, candidates {found}",
                  flush=True)


if __name__ == "__main__":
    main()
