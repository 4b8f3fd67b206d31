"""Measure what the ranking rule's constants rest on, on NON-evaluation structures.

For rows ``--start`` .. ``--start + --count`` of ``mp20/test.csv.gz`` (the evaluation uses the
first 100 rows; rows from 1000 on are never evaluated): simulate the evaluation's 1 nm
pattern (``evaluate.protocol.simulate_target``), run ``propose`` with the ``templates``
(training-pool library) and ``random`` backends without refinement (top 10 screened), and
record for every candidate whether it matches the truth (``evaluate.protocol.match``), its
screening Rwp and its CHGNet energy; plus the energies of the truth and of the truth with
0.1 Å rms random displacements (what a refinement against a broad pattern leaves).

Writes one JSON line per target to ``--out``; ``--summary`` prints the statistics that
docs/energy.rst quotes.

    DIFFPY_DIFFUSION_DATA=/work/shared/data python measure_rule.py --out rule.jsonl
    python measure_rule.py --summary rule.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings

import numpy as np

#: rms displacement (Å) of the "near-correct" candidates.
SIGMA_NEAR = 0.1


def rows(start: int, count: int):
    import pandas as pd
    from pymatgen.io.cif import CifParser

    df = pd.read_csv(os.path.join(os.environ["DIFFPY_DIFFUSION_DATA"], "mp20", "test.csv.gz"))
    for i in range(start, min(start + count, len(df))):
        r = df.iloc[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = CifParser.from_str(r["cif"]).parse_structures(primitive=False)[0]
        yield i, r["material_id"], s


def perturbed(s, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    t = s.copy()
    disp = rng.normal(0.0, sigma / math.sqrt(3.0), size=(len(t), 3))
    for k, d in enumerate(disp):
        t.translate_sites([k], d, frac_coords=False, to_unit_cell=True)
    return t


def measure(args) -> None:
    from diffpy_diffusion_chgnet.energy import shared_model

    from diffpy_diffusion.evaluate.protocol import match, simulate_target
    from diffpy_diffusion.pipeline import propose

    model = shared_model()
    with open(args.out, "a", encoding="utf-8") as fh:
        for i, mid, truth in rows(args.start, args.count):
            t0 = time.perf_counter()
            obs = simulate_target(truth, args.size_nm, seed=i)
            rec = {"row": i, "material_id": mid, "formula": truth.composition.reduced_formula, "n_atoms": len(truth)}
            near = [perturbed(truth, SIGMA_NEAR, seed=i * 10 + k) for k in range(3)]
            e, why = model.energies([truth, *near])
            rec["e_true"], rec["e_near"], rec["errors"] = e[0], e[1:], [w for w in why if w]
            for backend, opts in (("templates", {"library": "training-pool"}), ("random", {})):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        props = propose(obs, backend=backend, n=args.n, top=10, seed=0, progress=False,
                                        refine=False, backend_options=opts)
                except Exception as exc:  # noqa: BLE001 - recorded, the next backend/target goes on
                    rec[backend] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                ce, cwhy = model.energies([p.structure for p in props])
                rec[backend] = [{"rwp": float(p.scores.get("screen_rwp", math.nan)), "e": ce[k],
                                 "match": match(p.structure, truth) is not None, "error": cwhy[k]}
                                for k, p in enumerate(props)]
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            print(i, rec["formula"], rec["seconds"], flush=True)


def _q(a, qs=(0.5, 0.9, 0.95, 0.99)):
    a = np.asarray([x for x in a if x is not None and math.isfinite(x)])
    return "n/a" if not len(a) else f"n={len(a)} " + " ".join(f"q{int(q * 100)}={np.quantile(a, q):.3f}" for q in qs)


def summary(path: str, windows=(0.1, 0.2, 0.3, 0.5, 1.0), margins=(0.0, 0.005, 0.01, 0.02, 0.05)) -> None:
    recs = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    print(f"{len(recs)} targets (rows {recs[0]['row']}-{recs[-1]['row']})")
    near_d = [e - r["e_true"] for r in recs for e in r["e_near"] if r["e_true"] is not None]
    print("near-correct (0.1 A rms) minus truth, eV/atom:", _q(near_d))
    right, wrong, right_above, wrong_above, pairs = [], [], [], [], []
    for r in recs:
        for b in ("templates", "random"):
            c = r.get(b)
            if not isinstance(c, list) or not c:
                continue
            es = [x["e"] for x in c if x["e"] is not None and math.isfinite(x["e"])]
            if not es:
                continue
            best = min(es)
            for x in c:
                if x["e"] is None or not math.isfinite(x["e"]):
                    continue
                d = x["e"] - r["e_true"]
                (right if x["match"] else wrong).append(d)
                (right_above if x["match"] else wrong_above).append(x["e"] - best)
            rights = [x for x in c if x["match"] and x["e"] is not None and math.isfinite(x["e"])]
            for x in c:
                if x["match"] or x["e"] is None or not math.isfinite(x["e"]):
                    continue
                for y in rights:
                    pairs.append((x["e"] - best, y["e"] - best, x["rwp"], y["rwp"]))
    print("matching candidates minus truth, eV/atom:", _q(right))
    print("wrong candidates minus truth, eV/atom:   ", _q(wrong, (0.01, 0.05, 0.1, 0.25, 0.5)))
    print("matching candidates above the best candidate:", _q(right_above))
    print("wrong candidates above the best candidate:   ", _q(wrong_above, (0.05, 0.1, 0.25, 0.5)))
    for w in windows:
        r_out = np.mean([a > w for a in right_above]) if right_above else math.nan
        w_out = np.mean([a > w for a in wrong_above]) if wrong_above else math.nan
        print(f"window {w:.2f} eV/atom: matching outside {100 * r_out:.1f} %, wrong outside {100 * w_out:.1f} %")
    # (wrong, right) pairs of one list where the wrong one screens better: does the rule fix them?
    better = [p for p in pairs if p[2] < p[3]]
    print(f"{len(pairs)} (wrong, matching) pairs in one short list; the wrong one fits better in {len(better)};"
          " Rwp advantage of the wrong one:", _q([p[3] - p[2] for p in better]))
    for w in windows:
        for m in margins:
            fixed = sum(1 for p in better if p[0] > w and not p[1] > w and p[2] + m >= p[3])
            broken = sum(1 for p in pairs if p[1] > w and not p[0] > w and p[3] < p[2] and p[3] + m >= p[2])
            print(f"  window {w:.2f}, margin {m:.3f}: pairs put right {fixed}, put wrong {broken}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="rule.jsonl")
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--n", type=int, default=64, help="raw proposals per backend")
    ap.add_argument("--size-nm", type=float, default=1.0)
    ap.add_argument("--summary", metavar="JSONL")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary)
    else:
        measure(a)
