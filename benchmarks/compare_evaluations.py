"""Compare two evaluation runs target by target (same targets and settings, two code versions).

Usage::

    python benchmarks/compare_evaluations.py BEFORE AFTER

BEFORE and AFTER are each an ``evaluation.json`` or an ``evaluation.partial.jsonl`` written by
``diffpy-diffuse evaluate -o``.  Prints how many targets both runs finished, every
(target, backend) whose first matching rank differs, the top-1/5/10 counts of both on the
common targets, and the largest difference of the rank-1 Rwp.
"""

from __future__ import annotations

import json
import sys


def load(path: str) -> dict[tuple[int, str], dict]:
    """Records keyed by (target index, backend spec)."""
    if path.endswith(".json"):
        records = json.load(open(path, encoding="utf-8"))["records"]
    else:
        records = []
        with open(path, encoding="utf-8") as fh:
            next(fh)  # the settings line
            for line in fh:
                try:
                    records.extend(json.loads(line))
                except ValueError:  # a line cut by a kill
                    continue
    return {(r["index"], r["backend"]): r for r in records}


def main(before: str, after: str) -> None:
    a, b = load(before), load(after)
    common = sorted(set(a) & set(b))
    targets = sorted({k[0] for k in common})
    backends = sorted({k[1] for k in common})
    print(f"targets finished by both runs: {len(targets)}")
    same = 0
    for key in common:
        if a[key]["match_rank"] == b[key]["match_rank"]:
            same += 1
        else:
            print(f"differs: target {key[0]} {a[key]['formula']} {key[1]}: "
                  f"{a[key]['match_rank']} -> {b[key]['match_rank']}")
    print(f"identical first matching rank: {same}/{len(common)} (target, backend) pairs")
    for be in backends:
        for k in (1, 5, 10):
            def solved(recs, be=be, k=k):
                return sum(1 for i in targets if (r := recs[(i, be)]["match_rank"]) is not None and r <= k)
            print(f"{be:22s} top-{k:<2d} before {solved(a)}/{len(targets)}  after {solved(b)}/{len(targets)}")
    drw = [abs((a[key]["rw_top1"] or 0.0) - (b[key]["rw_top1"] or 0.0)) for key in common]
    print(f"largest |difference| of the rank-1 Rwp: {max(drw) if drw else float('nan'):.3g}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
