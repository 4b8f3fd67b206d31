"""Where the ``diffusion`` backend fails: the sampler (no raw candidate matches) or the screen.

For evaluation-set targets ``lo..hi-1`` (the PXRDnet-style 10 nm patterns of
``evaluate.protocol.simulate_target``), draw ``n`` raw candidates with the backend options
given as JSON, and print per target:

- how many candidates have the true Z (formula units per cell),
- how many *raw* candidates match the truth (pymatgen StructureMatcher, stol 0.3, ltol 0.2,
  angle_tol 5, the protocol's tolerances), and
- at which ranks of the screened top 10 a match sits (``screen.screen``, before refinement).

The last line sums both counts.  A target with raw matches but no screened match is lost by the
screen; one with no raw match is lost by the sampler.  ``"true_z": true`` gives the sampler the
true Z (an oracle, for the upper bound of the Z choice).

Usage::

    python benchmarks/sampler_diagnostics.py 0 10 '{}'
    python benchmarks/sampler_diagnostics.py 0 10 '{"corrector_steps": 0, "adapt_z": 0}'
    python benchmarks/sampler_diagnostics.py 10 20 '{"n": 256, "checkpoint": "runs/x/last.pt"}'

Needs the datasets (``DIFFPY_DIFFUSION_DATA``, for the evaluation set).  One torch thread (2-core machine).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings


def main(argv: list[str]) -> dict:
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend
    from diffpy_diffusion.datasets import eval_set
    from diffpy_diffusion.evaluate.protocol import MATCH, match, simulate_target
    from diffpy_diffusion.screen import screen

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    lo, hi = int(argv[0]), int(argv[1])
    opts = json.loads(argv[2]) if len(argv) > 2 else {}
    true_z = bool(opts.pop("true_z", False))
    n = int(opts.pop("n", 128))
    sm = StructureMatcher(**MATCH)
    backend = DiffusionBackend(**opts)
    entries = eval_set(hi)
    total = {"raw": 0, "top10": 0, "targets": hi - lo}
    for i in range(lo, hi):
        truth = entries[i].structure()
        obs = simulate_target(truth, 10.0, seed=i)  # the protocol's seed: seed 0 + target index
        per_fu = sum(int(v) for v in truth.composition.reduced_composition.values())
        z_true = len(truth) // per_fu
        if true_z:
            obs = dataclasses.replace(obs, z=z_true)
        t0 = time.perf_counter()
        props = backend.sample(obs, n, seed=0)
        t_sample = time.perf_counter() - t0
        raw = sum(match(p.structure, truth, sm) is not None for p in props)
        right_z = sum(p.provenance["z"] == z_true for p in props)
        t0 = time.perf_counter()
        kept = screen(obs, props, 10).kept
        t_screen = time.perf_counter() - t0
        ranks = [r for r, p in enumerate(kept, 1) if match(p.structure, truth, sm) is not None]
        total["raw"] += raw > 0
        total["top10"] += bool(ranks)
        print(f"{i:3d} {truth.composition.reduced_formula:14s} atoms={len(truth):2d} Z={z_true} "
              f"sg={entries[i].spacegroup:3d} rightZ={right_z:3d}/{len(props)} raw_matches={raw:3d} "
              f"screened_ranks={ranks} sample={t_sample:.1f}s screen={t_screen:.1f}s", flush=True)
    print("TOTAL", total, opts, "n", n, "true_z" if true_z else "")
    return total


if __name__ == "__main__":
    main(sys.argv[1:])
