"""Re-evaluate one target of an `evaluate` run with the code of a given checkout (e.g. a git worktree).

Used to tell a code change from run-to-run numerical differences: run the same target with two
commits on the same machine and compare the records (``benchmarks/refactor_check_issue19.md``).

    DIFFPY_DIFFUSION_DATA=<datasets> python benchmarks/one_target.py <checkout> 32 diffusion [10]

Arguments: checkout folder, target index (row of mp20-test), comma-separated backends, size in nm
(default 10).  Settings are those of the 100-target tables: n 128, top 10, 1 refined, seed 0,
``--library training-pool``, energy ranking off, torch on one thread (as one evaluation worker).
It calls the evaluation's per-target function of that checkout (a private name: the checkouts
compared may predate any public one).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import asdict


def main() -> None:
    checkout, index, backends = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    size_nm = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    sys.path.insert(0, os.path.abspath(checkout))
    warnings.simplefilter("ignore")
    os.environ["DIFFPY_DIFFUSION_ENERGY"] = "off"
    import torch

    torch.set_num_threads(1)
    import diffpy_diffusion
    from diffpy_diffusion import datasets
    from diffpy_diffusion.evaluate import protocol

    if not diffpy_diffusion.__file__.startswith(os.path.abspath(checkout)):
        sys.exit(f"diffpy_diffusion was imported from {diffpy_diffusion.__file__}, not from {checkout}")
    entry = datasets.eval_set(index + 1)[index]
    task = {"index": index, "entry": asdict(entry), "size_nm": size_nm, "seed": 0, "backends": backends, "n": 128,
            "top": 10, "refine_top": 1, "backend_options": {"library": "training-pool"}}
    for r in protocol._eval_one(task):
        print(json.dumps({k: r[k] for k in ("index", "formula", "backend", "match_rank", "rw_top1", "ranks_matched")}))


if __name__ == "__main__":
    main()
