"""Raw matches of the diffusion sampler with and without space-group constraints (issue 17, lever 3).

For validation-split cells of 10-20 atoms (never the evaluation set), the 10 nm pattern of each
is sampled ``n`` times by the ``diffusion`` backend in three modes, and every raw proposal is
matched against the truth (the evaluation's matcher):

* ``free``: P1 sampling only (``wyckoff_fraction=0``, the sampler before lever 3);
* ``default``: the shipped default (a quarter of the free candidates in Wyckoff form, in the
  groups that retrieval and the pilot's lattices suggest);
* ``hint``: the true space group given as a hint (every candidate in that group): the ceiling
  of group-constrained sampling when the group is known.

    DIFFPY_DIFFUSION_DATA=<datasets> python benchmarks/wyckoff_sampling.py --first 40 --count 40 \\
        --modes free,default,hint --json rows.json

Prints, per mode, the targets with at least one matching raw proposal, and one row per target.
Targets in P1 and P-1 are skipped (no constraint to impose).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings


def large_validation_cells(first: int, count: int, min_atoms: int = 10, max_atoms: int = 20):
    """(index, entry, structure) of validation-split cells of ``min_atoms``-``max_atoms`` atoms, groups >= 3."""
    from diffpy_diffusion.evaluate.protocol import pool_validation_entries

    out = []
    for e in pool_validation_entries(None):
        s = e.structure()
        if min_atoms <= len(s) <= max_atoms:
            out.append((e, s))
    out = out[first: first + count]
    return [(first + i, e, s) for i, (e, s) in enumerate(out) if (e.spacegroup or 0) >= 3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--first", type=int, default=40, help="skip this many large validation cells")
    ap.add_argument("--count", type=int, default=40, help="large validation cells to look at")
    ap.add_argument("--n", type=int, default=64, help="raw proposals per target and mode")
    ap.add_argument("--modes", default="free,default,hint")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend
    from diffpy_diffusion.evaluate.protocol import make_target, match

    modes = args.modes.split(",")
    options = {"free": {"wyckoff_fraction": 0.0}, "default": {}, "hint": {}}
    rows = []
    for index, entry, truth in large_validation_cells(args.first, args.count):
        obs = make_target(truth, 10.0, seed=index)
        row = {"index": index, "material_id": entry.material_id, "formula": truth.composition.reduced_formula,
               "atoms": len(truth), "spacegroup": int(entry.spacegroup)}
        for mode in modes:
            o = dataclasses.replace(obs, spacegroup=int(entry.spacegroup) if mode == "hint" else None)
            be = DiffusionBackend(exclude=entry.material_id, **options[mode])
            t0 = time.process_time()
            props = be.sample(o, args.n, seed=0)
            cpu = time.process_time() - t0
            hits = [p for p in props if match(p.structure, truth) is not None]
            row[mode] = {"hits": len(hits), "hits_constrained": sum("wyckoff" in p.provenance for p in hits),
                         "constrained": sum("wyckoff" in p.provenance for p in props), "cpu_s": round(cpu, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{len(rows)} targets (validation-split cells of 10-20 atoms, groups >= 3), n = {args.n}, 10 nm:")
    for mode in modes:
        solved = sum(r[mode]["hits"] > 0 for r in rows)
        cpu = sum(r[mode]["cpu_s"] for r in rows) / max(len(rows), 1)
        print(f"  {mode:8s} targets with a matching raw proposal: {solved:3d}   mean sampling CPU {cpu:5.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
