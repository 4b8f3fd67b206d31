"""Refinement with exact Jacobians and Rw-stall stopping vs batched finite differences (issue 16).

Cases: the truth-recovery refinements of tests/test_refine.py (PXRD and PDF of wurtzite CdSe
and rutile TiO2, started from lattice +3 % and moved coordinates; the PXRD ones also with the
Rietveld instrument model, TCH peaks and Kα2) and the reference fits of the measured-PDF
acceptance cases (tests/test_pipeline_acceptance.py, data under
$DIFFPY_DIFFUSION_DATA/measured).  Each case is refined four ways:

* ``fd``: DIFFPY_DIFFUSION_JACOBIAN=fd and no Rw-stall stop (the path before issue 16);
* ``auto-`` : the default Jacobians (=auto) without the Rw-stall stop;
* ``auto``: the default: =auto with the stall stop (optimize.RW_STALL_RTOL[_FINAL]);
* ``exact``: =exact with the stall stop, PXRD only (for a PDF it is the same path as auto).

Printed: final Rw, the largest |Rw - Rw fd|, CPU seconds of the whole refinement
(time.process_time, 1 torch thread), the ratios fd/mode, CPU seconds spent in Jacobians and
the Jacobian counts.

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
        obs = _simulate_xrd(truth, np.arange(20.0, 90.0, 0.04))
        obs.wavelength2, obs.ka2_ratio = 1.544426, 0.5  # as a lab Cu tube (the simulation has Kα1 only)
        out[f"xrd_rietveld_{make.__name__}"] = (obs, start, {"instrument": "rietveld"})
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
    from diffpy_diffusion.refine import optimize, refine_structure

    jac, stall = {"fd": ("fd", False), "auto-": ("auto", False), "auto": ("auto", True),
                  "exact": ("exact", True)}[mode]
    os.environ["DIFFPY_DIFFUSION_JACOBIAN"] = jac
    saved = optimize.RW_STALL_RTOL, optimize.RW_STALL_RTOL_FINAL
    if not stall:
        optimize.RW_STALL_RTOL = optimize.RW_STALL_RTOL_FINAL = 0.0
    clock.cpu, clock.n = 0.0, 0
    t = time.process_time()
    try:
        res = refine_structure(obs, structure, **kw)
    finally:
        optimize.RW_STALL_RTOL, optimize.RW_STALL_RTOL_FINAL = saved
    return res.rw, time.process_time() - t, clock.cpu, clock.n


MODES = ("fd", "auto-", "auto", "exact")


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
    head = " ".join(f"{'Rw ' + m:>9s}" for m in MODES) + f" {'max|dRw|':>8s} "
    head += " ".join(f"{'cpu ' + m:>9s}" for m in MODES) + " "
    head += " ".join(f"{'fd/' + m:>8s}" for m in MODES[1:]) + " "
    head += " ".join(f"{'jac ' + m:>9s}" for m in MODES) + f" {'nJ ' + '/'.join(MODES):>20s}"
    print(f"{'case':30s} {head}")
    tot = {m: np.zeros(2) for m in MODES}
    with blas_one_thread():
        for name, (obs, s, kw) in cases.items():
            best = {}
            for mode in MODES if name.startswith("xrd") else MODES[:3]:
                for _ in range(max(args.repeat, 1)):
                    r = run(obs, s, kw, mode, clock)
                    if mode not in best or r[1] < best[mode][1]:
                        best[mode] = r
            if "exact" not in best:  # a PDF: "exact" is the same path as "auto"
                best["exact"] = best["auto"]
            for m in MODES:
                tot[m] += best[m][1:3]
            drw = max(abs(best[m][0] - best["fd"][0]) for m in MODES)
            line = " ".join(f"{best[m][0]:9.5f}" for m in MODES) + f" {drw:8.1e} "
            line += " ".join(f"{best[m][1]:9.2f}" for m in MODES) + " "
            line += " ".join(f"{best['fd'][1] / best[m][1]:8.2f}" for m in MODES[1:]) + " "
            line += " ".join(f"{best[m][2]:9.2f}" for m in MODES)
            line += f" {'/'.join(str(best[m][3]) for m in MODES):>20s}"
            print(f"{name:30s} {line}", flush=True)
    line = " ".join(f"{'':9s}" for m in MODES) + f" {'':8s} "
    line += " ".join(f"{tot[m][0]:9.2f}" for m in MODES) + " "
    line += " ".join(f"{tot['fd'][0] / tot[m][0]:8.2f}" for m in MODES[1:]) + " "
    line += " ".join(f"{tot[m][1]:9.2f}" for m in MODES)
    print(f"{'total':30s} {line}")


if __name__ == "__main__":
    main()
