"""Refinement with exact Jacobians vs batched finite differences (issue 16), side by side.

Cases: the truth-recovery refinements of tests/test_refine.py (PXRD and PDF of wurtzite CdSe
and rutile TiO2, started from lattice +3 % and moved coordinates) and the reference fits of
the measured-PDF acceptance cases (tests/test_pipeline_acceptance.py, data under
$DIFFPY_DIFFUSION_DATA/measured).  Each case is refined with DIFFPY_DIFFUSION_JACOBIAN=fd
and =exact; printed: final Rw, CPU seconds of the whole refinement (time.process_time,
1 torch thread), CPU seconds spent in Jacobians, Jacobian count, and the ratios.

    nice -n 15 .venv/bin/python benchmarks/refine_jacobian.py [--cases NAME ...] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def truth_cases():
    from test_refine import _perturbed, _shift_o, _shift_se, _simulate_pdf, _simulate_xrd, rutile_tio2, wurtzite_cdse

    out = {}
    for make, shift in ((wurtzite_cdse, _shift_se), (rutile_tio2, _shift_o)):
        truth = make()
        start = _perturbed(truth, shift)
        out[f"xrd_{make.__name__}"] = (_simulate_xrd(truth, np.arange(20.0, 90.0, 0.04)), start, {})
        calc = "torch" if make is wurtzite_cdse else "auto"
        out[f"pdf_{make.__name__}"] = (_simulate_pdf(truth, np.arange(1.0, 10.0, 0.02)), start, {"calculator": calc})
    return out


def measured_cases():
    from pymatgen.core import Lattice, Structure
    from test_pipeline_acceptance import MEASURED

    from diffpy_diffusion.io import read_observation, read_structure

    root = Path(os.environ.get("DIFFPY_DIFFUSION_DATA", ROOT.parent / "shared" / "data")) / "measured"
    out = {}
    for folder, fname, comp, rad, ref in MEASURED:
        path = root / folder / fname
        if not path.exists():
            print(f"# {folder}: {path} not found, skipped")
            continue
        obs = read_observation(path, composition=comp, radiation=rad)
        s = (Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.924), ["Pt"], [[0, 0, 0]]) if ref is None
             else read_structure(root / folder / ref))
        out[f"measured_{folder}"] = (obs, s, {})
    return out


class JacobianClock:
    """CPU time and count of ResidualProblem.jacobian calls."""

    def __init__(self):
        from diffpy_diffusion.refine import optimize

        self.cpu, self.n = 0.0, 0
        orig = optimize.ResidualProblem.jacobian
        clock = self

        def timed(self_, p):
            t = time.process_time()
            try:
                return orig(self_, p)
            finally:
                clock.cpu += time.process_time() - t
                clock.n += 1

        optimize.ResidualProblem.jacobian = timed


def run(obs, structure, kw, mode, clock):
    from diffpy_diffusion.refine import refine_structure

    os.environ["DIFFPY_DIFFUSION_JACOBIAN"] = mode
    clock.cpu, clock.n = 0.0, 0
    t = time.process_time()
    res = refine_structure(obs, structure, **kw)
    return res.rw, time.process_time() - t, clock.cpu, clock.n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", help="case names (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode; the least CPU time is reported")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from diffpy_diffusion.refine.optimize import blas_one_thread

    clock = JacobianClock()
    cases = {**truth_cases(), **measured_cases()}
    if args.cases:
        cases = {k: v for k, v in cases.items() if any(c in k for c in args.cases)}
    first = next(iter(cases.values()))
    run(*first, "fd", clock)  # warm-up: imports and first-call costs
    print(f"{'case':34s} {'Rw fd':>9s} {'Rw exact':>9s} {'|dRw|':>8s} {'cpu fd':>8s} {'cpu ex':>8s} {'ratio':>6s}"
          f" {'jac fd':>8s} {'jac ex':>8s} {'ratio':>6s} {'nJ fd/ex':>9s}")
    tot = np.zeros(4)
    with blas_one_thread():
        for name, (obs, s, kw) in cases.items():
            best = {}
            for mode in ("fd", "exact"):
                for _ in range(max(args.repeat, 1)):
                    r = run(obs, s, kw, mode, clock)
                    if mode not in best or r[1] < best[mode][1]:
                        best[mode] = r
            (rf, cf, jf, nf), (re_, ce, je, ne) = best["fd"], best["exact"]
            tot += (cf, ce, jf, je)
            print(f"{name:34s} {rf:9.5f} {re_:9.5f} {abs(rf - re_):8.1e} {cf:8.2f} {ce:8.2f} {cf / ce:6.2f}"
                  f" {jf:8.2f} {je:8.2f} {jf / max(je, 1e-9):6.2f} {nf:4d}/{ne:<4d}", flush=True)
    print(f"{'total':34s} {'':9s} {'':9s} {'':8s} {tot[0]:8.2f} {tot[1]:8.2f} {tot[0] / tot[1]:6.2f}"
          f" {tot[2]:8.2f} {tot[3]:8.2f} {tot[2] / max(tot[3], 1e-9):6.2f}")


if __name__ == "__main__":
    main()
