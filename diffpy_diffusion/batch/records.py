"""What ``propose-batch`` writes per pattern: the result folder, the error file, ``summary.csv``.

Each pattern's folder is built under a temporary name and renamed into place, and its
``results.json`` (:data:`RESULT_FILE`) is what marks it finished
(:func:`diffpy_diffusion.batch.resume.is_finished`).  Candidate entries are
:func:`diffpy_diffusion.report.candidate_record` records, as in ``propose``'s results.json.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .executor import TaskError

__all__ = ["RESULT_FILE", "SUMMARY_CSV", "SUMMARY_COLUMNS", "write_pattern_result", "write_failure", "summary_row",
           "write_summary"]

#: Name of the file that marks a finished pattern (written last, atomically).
RESULT_FILE = "results.json"
SUMMARY_CSV = "summary.csv"


def write_pattern_result(out: Path, name: str, record: dict, meta: dict, plot: bool = False) -> Path:
    """Write one pattern's folder atomically: build it under a temporary name, then rename."""
    from pymatgen.core import Structure

    from ..io import write_cif, write_json, write_stru

    final = out / name
    tmp = out / f".{name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    cands = []
    for c in record["candidates"]:
        s = Structure.from_dict(c["structure"])
        stem = f"candidate_{c['rank']:02d}_{c['formula']}"
        write_cif(s, tmp / f"{stem}.cif")
        try:
            write_stru(s, tmp / f"{stem}.stru")
        except Exception:  # noqa: BLE001 - .stru needs diffpy.structure; CIF is the primary output
            pass
        cands.append({k: v for k, v in c.items() if k != "structure"} | {"cif": f"{stem}.cif"})
    if plot and cands:  # candidates overview: Rw/Rwp, structure type, space group
        from .. import plots

        rows = []
        for c in record["candidates"]:
            st = plots.structure_type(Structure.from_dict(c["structure"]))
            rows.append({**{k: c[k] for k in ("rank", "formula", "score", "score_name")},
                         **{k: st[k] for k in ("spacegroup", "pearson")}})
        plots.save_figure(plots.overview_figure(rows, title=f"{name}: candidates"), tmp / "candidates")
    write_json({**meta, "seconds": record.get("seconds"), "candidates": cands,
                "structures": [c["structure"] for c in record["candidates"]]}, tmp / RESULT_FILE)
    if final.exists():  # an unfinished earlier attempt (no results.json) or --force
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def write_failure(out: Path, name: str, error: TaskError, meta: dict) -> None:
    """``<name>.error.json``: the task's one-line error and traceback (rewritten on every failure)."""
    from ..io import write_json

    write_json({**meta, "error": error.error, "traceback": error.traceback}, out / f"{name}.error.json",
               force=True)


SUMMARY_COLUMNS = ("pattern", "composition", "status", "formula", "spacegroup", "score_name", "score",
                   "a", "b", "c", "alpha", "beta", "gamma", "n_candidates", "seconds", "error")


def summary_row(name: str, composition: str, out: Path) -> dict[str, Any]:
    """One ``summary.csv`` row: the pattern's status and its rank-1 candidate (from its results.json)."""
    row: dict[str, Any] = {c: "" for c in SUMMARY_COLUMNS}
    row.update(pattern=name, composition=composition)
    res = out / name / RESULT_FILE
    err = out / f"{name}.error.json"
    if res.is_file():
        data = json.loads(res.read_text())
        cands = data.get("candidates", [])
        row.update(status="ok" if cands else "no candidates", n_candidates=len(cands),
                   seconds=data.get("seconds") or "")
        if cands:
            c = cands[0]
            row.update(formula=c["formula"], spacegroup=c.get("spacegroup") or "", score_name=c.get("score_name") or "",
                       score=c.get("score") if c.get("score") is not None else "",
                       **{k: c["lattice"][k] for k in ("a", "b", "c", "alpha", "beta", "gamma")})
    elif err.is_file():
        data = json.loads(err.read_text())
        row.update(status="failed", error=data.get("error", ""))
    else:
        row.update(status="pending")
    return row


def write_summary(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``summary.csv`` (one row per pattern, the best candidate's answer) atomically."""
    from ..io import atomic_write_text

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in SUMMARY_COLUMNS})
    return atomic_write_text(out / SUMMARY_CSV, buf.getvalue(), force=True)
