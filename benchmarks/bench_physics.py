"""Benchmark the physics forward models against pymatgen and pdffit2 (same run, same inputs).

Usage::

    python benchmarks/bench_physics.py [--quick] [--threads N] [--json]

or ``diffpy-diffuse bench``.  See :mod:`diffpy_diffusion.physics.benchmark`.
"""

from __future__ import annotations

import argparse
import json

from diffpy_diffusion.physics.benchmark import format_report, run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer structures and repeats")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time (default) or wall")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, threads=args.threads, clock=args.clock)
    print(json.dumps(res, indent=2) if args.json else format_report(res))


if __name__ == "__main__":
    main()
