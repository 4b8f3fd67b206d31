"""Speed of the forward models against the reference tools, measured in the same run.

Each figure is the best of ``repeats`` runs (process CPU time by default, see
:func:`run`) for both sides, on the same structures and grids, and is printed as
a ratio ``reference / ours``.  The repeats are many for the cheap cases because
the minimum is what survives other jobs sharing the cores.

* PXRD: pymatgen ``XRDCalculator.get_pattern`` (Cu Kα, 0–90°) per structure
  vs the batched merged peak list (:func:`~.xrd.reflections` + Lorentz–
  polarisation) over 256 MP-20 structures (pymatgen-built ones when
  ``$DIFFPY_DIFFUSION_DATA`` is not set), and vs full patterns on a 2θ grid.
* PDF: ``diffpy.pdffit2`` ``calc()`` vs :func:`~.pdf.pdf_gr` for a 20-atom
  cell, r = 1–30 Å step 0.01, Qmax 25, Qdamp 0.04, delta2 2, spdiameter 40 Å.
* Debye: I(Q) of a 5 nm CdSe sphere, Q = 0.5–25 Å⁻¹ (1000 points).

Run ``diffpy-diffuse bench`` or ``python benchmarks/bench_physics.py``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable

from . import reference

#: "cpu" (process CPU time; robust when other jobs share the cores) or "wall".
CLOCK = "cpu"


def _best(fn: Callable, repeats: int) -> float:
    """Best of ``repeats`` timings of ``fn()`` in seconds, on :data:`CLOCK`."""
    clock = time.process_time if CLOCK == "cpu" else time.perf_counter
    fn()  # warm-up (caches, allocator)
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def _structures(n: int):
    s = reference.mp20_structures(reference.shared_data_dir(), n=n)
    if s is not None and len(s) >= n:
        return s, "MP-20 test rows"
    return reference.built_structures(n), "pymatgen-built structures (DIFFPY_DIFFUSION_DATA not set)"


def bench_xrd(n_structures: int = 256, n_reference: int = 32, repeats: int = 15) -> dict:
    import torch
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    from .crystal import CrystalBatch
    from .xrd import lorentz_polarization, reflections, xrd_pattern

    lam = 1.540598
    structures, source = _structures(n_structures)
    calc = XRDCalculator(wavelength=lam)
    ref_set = structures[:n_reference]
    t_ref = _best(lambda: [calc.get_pattern(s) for s in ref_set], repeats) / len(ref_set)
    batch = CrystalBatch.from_structures(structures, dtype=torch.float32)
    q_max = 4 * math.pi * math.sin(math.radians(45.0)) / lam

    def peaks():
        with torch.inference_mode():
            r = reflections(batch, q_max)
            th = torch.asin(lam * r.q / (4 * math.pi))
            return r.intensity * lorentz_polarization(th)

    t_peaks = _best(peaks, repeats) / len(structures)
    x = torch.arange(10.0, 90.0, 0.02)

    def pattern():
        with torch.inference_mode():
            return xrd_pattern(batch, x, size_nm=10.0, W=0.01)

    t_pat = _best(pattern, repeats) / len(structures)

    def pattern_fft():
        with torch.inference_mode():
            return xrd_pattern(batch, x, size_nm=10.0)  # pure size broadening: FFT path

    t_fft = _best(pattern_fft, repeats) / len(structures)
    return {
        "structures": len(structures),
        "source": source,
        "pymatgen_ms_per_structure": 1e3 * t_ref,
        "peaks_ms_per_structure": 1e3 * t_peaks,
        "pattern_ms_per_structure": 1e3 * t_pat,
        "speedup_peaks": t_ref / t_peaks,
        "speedup_pattern": t_ref / t_pat,
        "pattern_fft_ms_per_structure": 1e3 * t_fft,
        "speedup_pattern_fft": t_ref / t_fft,
    }


def _cell20():
    data = reference.shared_data_dir()
    if data is not None and (data / "mp20" / "test.csv.gz").exists():
        import pandas as pd
        from pymatgen.core import Structure

        for cif in pd.read_csv(data / "mp20" / "test.csv.gz", nrows=300)["cif"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_str(cif, fmt="cif")
            if len(s) == 20:
                return s
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    s.make_supercell([2, 2, 1])
    return s


def bench_pdf(repeats: int = 15) -> dict:
    import numpy as np
    import torch
    from diffpy.pdffit2 import PdfFit, redirect_stdout
    from diffpy.structure import Atom, Lattice as DL, Structure as DS

    from .crystal import CrystalBatch
    from .pdf import pdf_gr

    s = _cell20()
    redirect_stdout(open(os.devnull, "w"))
    L = s.lattice
    ds = DS(lattice=DL(L.a, L.b, L.c, L.alpha, L.beta, L.gamma))
    for site in s:
        a = Atom(site.specie.symbol, xyz=site.frac_coords)
        a.Uisoequiv = 0.005
        ds.append(a)
    p = PdfFit()
    p.add_structure(ds)
    p.alloc("X", 25.0, 0.04, 1.0, 30.0, 2901)
    p.setvar("delta2", 2.0)
    p.setvar("spdiameter", 40.0)
    t_ref = _best(p.calc, repeats)
    g_ref = np.array(p.getpdf_fit())
    r = torch.tensor(np.array(p.getR()))
    out = {"formula": s.composition.reduced_formula, "atoms": len(s), "pdffit2_ms": 1e3 * t_ref}
    for name, dt in (("float64", torch.float64), ("float32", torch.float32)):
        b = CrystalBatch.from_structures([s], uiso=0.005, dtype=dt)
        rr = r.to(dt)

        def run(b=b, rr=rr):
            with torch.inference_mode():
                return pdf_gr(b, rr, qmax=25.0, qdamp=0.04, delta2=2.0, spdiameter=40.0)

        t = _best(run, repeats)
        err = float(np.abs(run()[0].double().numpy() - g_ref).max() / np.abs(g_ref).max())
        out[f"ours_{name}_ms"] = 1e3 * t
        out[f"speedup_{name}"] = t_ref / t
        out[f"max_rel_diff_{name}"] = err
    return out


def bench_debye(diameter_nm: float = 5.0, repeats: int = 10) -> dict:
    import torch

    from .debye import cut_sphere, debye_iq

    pos, z = cut_sphere(reference.cdse_zincblende(), diameter_nm)
    out = {"diameter_nm": diameter_nm, "atoms": int(len(z))}
    q = torch.linspace(0.5, 25.0, 1000, dtype=torch.float64)
    for name, dt in (("float64", torch.float64), ("float32", torch.float32)):
        pp, qq = pos.to(dt), q.to(dt)

        def run(pp=pp, qq=qq):
            with torch.inference_mode():
                return debye_iq(pp, z, qq, uiso=0.005)

        out[f"{name}_ms"] = 1e3 * _best(run, repeats)
    return out


def run(quick: bool = False, threads: int | None = 1, clock: str = "cpu") -> dict:
    """All benchmarks; ``quick`` uses fewer structures and repeats.

    ``threads``: torch intra-op threads (default 1, so that CPU time equals the
    work done, as for the single-threaded references; None keeps torch's).
    ``clock``: "cpu" (process time) or "wall".
    """
    import torch

    global CLOCK
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock: must be 'cpu' or 'wall', got {clock!r}")
    CLOCK = clock
    if threads:
        torch.set_num_threads(int(threads))
    res = {
        "clock": clock,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if quick:
        res["xrd"] = bench_xrd(n_structures=32, n_reference=8, repeats=1)
        res["pdf"] = bench_pdf(repeats=1)
        res["debye"] = bench_debye(diameter_nm=3.0, repeats=1)
    else:
        res["xrd"] = bench_xrd()
        res["pdf"] = bench_pdf()
        res["debye"] = bench_debye()
    res["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return res


def format_report(res: dict) -> str:
    x, p, d = res["xrd"], res["pdf"], res["debye"]
    lines = [
        f"torch threads {res['torch_threads']}, {res['cpu_count']} CPUs, load average "
        f"{res['load_average']:.1f} -> {res['load_average_end']:.1f}; best of N, {res['clock']} time",
        f"PXRD  {x['structures']} {x['source']}, Cu Kα 0-90°:",
        f"  pymatgen XRDCalculator.get_pattern        {x['pymatgen_ms_per_structure']:8.2f} ms/structure",
        f"  ours, batched merged peak list (+LP)      {x['peaks_ms_per_structure']:8.3f} ms/structure"
        f"   {x['speedup_peaks']:6.1f}x faster",
        f"  ours, 2θ pattern 10-90°/0.02°, 10 nm (FFT) {x['pattern_fft_ms_per_structure']:7.3f} ms/structure"
        f"   {x['speedup_pattern_fft']:6.1f}x faster",
        f"  ours, same + Caglioti W=0.01 (FFT+instr.) {x['pattern_ms_per_structure']:8.3f} ms/structure"
        f"   {x['speedup_pattern']:6.1f}x faster",
        f"PDF   {p['formula']} ({p['atoms']} atoms), r 1-30 Å step 0.01, Qmax 25:",
        f"  diffpy.pdffit2 calc()                     {p['pdffit2_ms']:8.1f} ms",
        f"  ours float64                              {p['ours_float64_ms']:8.1f} ms   "
        f"{p['speedup_float64']:6.1f}x faster   max|ΔG|/max|G| {p['max_rel_diff_float64']:.1e}",
        f"  ours float32                              {p['ours_float32_ms']:8.1f} ms   "
        f"{p['speedup_float32']:6.1f}x faster   max|ΔG|/max|G| {p['max_rel_diff_float32']:.1e}",
        f"Debye CdSe sphere {d['diameter_nm']:g} nm ({d['atoms']} atoms), I(Q) at 1000 Q points:",
        f"  histogram float64                         {d['float64_ms']:8.1f} ms",
        f"  histogram float32                         {d['float32_ms']:8.1f} ms",
    ]
    return "\n".join(lines)
