"""Wall time of the bundled demo's ``propose`` after set-up (issue 16: "the bundled demo <= 5 s").

Runs the command of ``make demo`` (``diffpy-diffuse propose nacl_3nm_cuka.xy --composition NaCl
--wavelength CuKa --size 3nm --n 16 --top 3 --seed 0``) three times in one process through the
click entry point. The first run pays for the imports, the weights and the plugins' models (the
set-up); the later ones are ``propose`` after set-up, as ``bench_propose.py`` measures it. Prints,
for each run, wall and CPU seconds of the whole command, propose's own ``timings`` from
``results.json``, and the candidates (space group, Rw), which must not change between runs.

Usage::

    python benchmarks/demo_warm.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "diffpy_diffusion" / "examples_data" / "nacl_3nm_cuka.xy"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    from diffpy_diffusion.cli import cli

    with tempfile.TemporaryDirectory() as d:
        cmd = ["propose", str(DEMO), "--composition", "NaCl", "--wavelength", "CuKa", "--size", "3nm", "--n", "16",
               "--top", "3", "--seed", "0", "-o", d, "--force", "-q"]
        for i in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            cli.main(args=cmd, prog_name="diffpy-diffuse", standalone_mode=False)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            doc = json.loads((Path(d) / "results.json").read_text(encoding="utf-8"))
            found = [(c["spacegroup"], round(c["rw"], 5)) for c in doc["candidates"]]
            print(f"run {i + 1}: wall {wall:.2f} s, cpu {cpu:.2f} s, timings {doc['timings']}, candidates {found}")


if __name__ == "__main__":
    main()
