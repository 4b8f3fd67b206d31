"""The evaluation on patterns from our simulator and from an independent code, side by side (issue 17).

Runs ``diffpy-diffuse evaluate`` twice on the same targets with the same settings and seed:
once on the protocol's patterns (our forward model, :func:`diffpy_diffusion.evaluate.protocol.simulate_target`)
and once on patterns made by pymatgen's ``XRDCalculator`` peaks broadened with Scherrer Gaussians
(:func:`diffpy_diffusion.evaluate.targets.simulate_pymatgen_target`).  Prints both tables and a
third with the differences (pymatgen − ours, in points for the rates).  Issue 17 asks that the
figures agree within 5 points: the model must not be tuned to our own simulator.

Usage::

    python benchmarks/independent_patterns.py --limit 100 --size 10nm --backend diffusion,templates -o runs/indep10
    python benchmarks/independent_patterns.py --limit 3 --backend templates --n 16   # a quick look

With ``-o`` each run goes to ``OUT/builtin`` and ``OUT/pymatgen`` (``evaluation.json``/``.md``; rerun with
``--resume`` to continue either) and the comparison to ``OUT/comparison.md``.  Needs the evaluation
set (``$DIFFPY_DIFFUSION_DATA``) unless ``--dataset`` is a CSV with a ``cif`` column.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RATE_KEYS = ("top1", "top5", "top10")
COLUMNS = (("top1", "top-1"), ("top5", "top-5"), ("top10", "top-10"), ("mean_rms", "mean RMS"),
           ("mean_rwp_top1", "mean Rwp#1"), ("s_per_target", "s/target"))


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if key in RATE_KEYS or key == "mean_rwp_top1":
        return f"{100 * v:.1f} %"
    if key == "s_per_target":
        return f"{v:.1f}"
    return f"{v:.3f}"


def _diff(key: str, a, b) -> str:
    if a is None or b is None:
        return "-"
    d = b - a
    if key in RATE_KEYS or key == "mean_rwp_top1":
        return f"{100 * d:+.1f}"
    if key == "s_per_target":
        return f"{d:+.1f}"
    return f"{d:+.3f}"


def comparison_table(ours: dict, theirs: dict) -> str:
    """Markdown: per backend, our simulator's row, pymatgen's row and the difference (pymatgen − ours)."""
    head = "| backend | patterns | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    worst = 0.0
    for b, ro in ours["summary"].items():
        if b.startswith("_"):
            continue
        rp = theirs["summary"].get(b, {})
        lines.append(f"| {b} | ours | " + " | ".join(_fmt(k, ro.get(k)) for k, _ in COLUMNS) + " |")
        lines.append(f"| {b} | pymatgen | " + " | ".join(_fmt(k, rp.get(k)) for k, _ in COLUMNS) + " |")
        lines.append(f"| {b} | difference | " + " | ".join(_diff(k, ro.get(k), rp.get(k)) for k, _ in COLUMNS)
                     + " |")
        for k in RATE_KEYS:
            if ro.get(k) is not None and rp.get(k) is not None:
                worst = max(worst, abs(rp[k] - ro[k]))
    lines += ["", f"Largest difference of a top-k rate: {100 * worst:.1f} points (issue 17 asks for at most 5)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mp20-test", help="mp20-test (default) or a CSV with a cif column")
    ap.add_argument("--limit", type=int, default=100, help="first N targets (default 100)")
    ap.add_argument("--size", default="10nm", help="crystallite size, e.g. 10nm, 1nm (default 10nm)")
    ap.add_argument("--backend", default="auto", help="comma-separated backend specs (default auto)")
    ap.add_argument("--n", type=int, default=128, help="raw proposals per backend (default 128, as evaluate)")
    ap.add_argument("--top", type=int, default=10, help="ranked candidates kept (default 10)")
    ap.add_argument("--refine-top", type=int, default=1, help="candidates refined (default 1, as evaluate)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--library", default=None, help="template library of the templates backend")
    ap.add_argument("--workers", "-j", type=int, default=1)
    ap.add_argument("-o", "--output", type=Path, default=None, help="folder for both runs and comparison.md")
    ap.add_argument("--resume", action="store_true", help="continue the runs in -o")
    ap.add_argument("--force", action="store_true", help="overwrite the runs in -o")
    args = ap.parse_args(argv)

    from diffpy_diffusion.cli.choice import resolve_backend
    from diffpy_diffusion.evaluate import run_evaluation
    from diffpy_diffusion.evaluate.protocol import markdown_table

    backend = ",".join(resolve_backend(b, True) for b in args.backend.split(",") if b.strip())
    docs = {}
    for sim in ("builtin", "pymatgen"):
        print(f"evaluating on {'our' if sim == 'builtin' else 'pymatgen'} patterns ...", file=sys.stderr)
        docs[sim] = run_evaluation(dataset=args.dataset, limit=args.limit, size_nm=args.size, backend=backend,
                                   n=args.n, top=args.top, refine_top=args.refine_top, seed=args.seed,
                                   library=args.library, workers=args.workers, simulator=sim, quiet=True,
                                   output_dir=None if args.output is None else args.output / sim,
                                   resume=args.resume, force=args.force)
    text = "\n".join([
        "## Our simulator", "", markdown_table(docs["builtin"]["summary"], docs["builtin"]["meta"]),
        "## pymatgen XRDCalculator + Scherrer Gaussians", "",
        markdown_table(docs["pymatgen"]["summary"], docs["pymatgen"]["meta"]),
        "## Side by side (difference = pymatgen − ours; rates in points)", "",
        comparison_table(docs["builtin"], docs["pymatgen"]),
        f"Command: python benchmarks/independent_patterns.py {' '.join(argv if argv is not None else sys.argv[1:])}",
    ])
    print(text)
    if args.output is not None:
        from diffpy_diffusion.io import atomic_write_text

        atomic_write_text(args.output / "comparison.md", text + "\n", force=True)
    return docs


if __name__ == "__main__":
    main()
