"""Screen stage C (coordinates fitted through differentiable structure factors) off and on: raw vs final.

Diffusion backend alone, the evaluation's settings (n 128, top 10, 1 refined, seed 0, energy ranking
off) on the first LIMIT structures of the training pool's validation split (never the evaluation set),
simulated PXRD at SIZE nm. Per target: first matching rank among the raw samples, and among the final
top 10 without and with stage C (the same raw samples, reused). One JSON line per target.

    DIFFPY_DIFFUSION_DATA=<datasets> python benchmarks/screen_stage_c.py 24 10 20 48
    # LIMIT SIZE_NM STAGE_C_STEPS STAGE_C_TOP
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings


def first_match(props, truth, matcher) -> int | None:
    """1-based rank of the first proposal that matches ``truth``, else None."""
    from diffpy_diffusion.evaluate.protocol import match

    for rank, p in enumerate(props, 1):
        if match(p.structure, truth, matcher) is not None:
            return rank
    return None


def main() -> None:
    limit, size, steps, top = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    warnings.simplefilter("ignore")
    os.environ["DIFFPY_DIFFUSION_ENERGY"] = "off"
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from diffpy_diffusion.evaluate.protocol import MATCH, pool_validation_entries, simulate_target
    from diffpy_diffusion.pipeline import propose

    torch.set_num_threads(1)
    sm = StructureMatcher(**MATCH)
    for i, e in enumerate(pool_validation_entries(limit)):
        truth = e.structure()
        if len(truth) > 20:
            continue
        obs = simulate_target(truth, size, seed=i)
        cache: dict = {}
        row = {"i": i, "formula": truth.composition.reduced_formula, "natoms": len(truth)}
        for name, sopts in (("off", None), ("on", {"coordinate_steps": steps, "coordinate_top": top})):
            t0 = time.time()
            props = propose(obs, backend="diffusion", n=128, top=10, seed=0, output_dir=None, progress=False,
                            refine_top=1, sample_cache=cache, screen_options=sopts)
            row[name] = first_match(props, truth, sm)
            row[name + "_s"] = round(time.time() - t0, 1)
        raw = next(iter(cache.values()))[0]
        row["raw"] = first_match(raw, truth, sm)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
