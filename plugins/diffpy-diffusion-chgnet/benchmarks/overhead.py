"""Time the plugin's overhead per target: CHGNet energies of 10 candidates, and one relaxation.

Candidates: rows ``--start`` .. of ``mp20/test.csv.gz`` (non-evaluation rows), each with 0.1 Å
rms random displacements (what refined candidates look like; no two share a cache entry).
Prints the one-off model load, the first (cold) batch of 10 and a second batch of 10 new
structures (what every further target of a run costs), on 1 torch thread.

    DIFFPY_DIFFUSION_DATA=/work/shared/data python overhead.py
"""

from __future__ import annotations

import argparse
import time

from measure_rule import perturbed, rows

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", type=int, default=1100)
    ap.add_argument("--relax", type=int, default=1, help="structures to relax (300 FIRE steps at most)")
    a = ap.parse_args()
    structs = [s for _, _, s in rows(a.start, 20)]
    t0 = time.perf_counter()
    from diffpy_diffusion_chgnet.energy import shared_model

    model = shared_model()
    _ = model.model
    t_load = time.perf_counter() - t0
    batches = [[perturbed(s, 0.1, seed=k) for k, s in enumerate(structs[:10])],
               [perturbed(s, 0.1, seed=k) for k, s in enumerate(structs[10:])]]
    times = []
    for b in batches:
        t0 = time.perf_counter()
        model.energies(b)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.energies(batches[1])
    t_cached = time.perf_counter() - t0
    print(f"model load {t_load:.2f} s; 10 candidates: cold {times[0]:.2f} s, warm {times[1]:.2f} s, "
          f"cached {t_cached * 1000:.1f} ms; atoms per cell {[len(s) for s in batches[1]]}")
    if a.relax:
        from diffpy_diffusion_chgnet.relax import relax_structure

        for s in batches[1][: a.relax]:
            _, info = relax_structure(s)
            print(f"relax {s.composition.reduced_formula} ({len(s)} atoms): {info}")
