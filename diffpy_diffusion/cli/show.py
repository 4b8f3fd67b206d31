"""What ``propose`` prints: the ranked table or ``--json``, and warnings about failed refinements."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .group import one_line


def refine_note(row: dict) -> str:
    """What the table's note column says about a candidate's refinement ("" when it went fine)."""
    if row.get("refine_error"):
        return "not refined: fit failed"
    if row.get("refine_converged") is False:
        return "fit not converged"
    return ""


def refine_warnings(rows: list[dict]) -> list[str]:
    """One warning per distinct refinement failure, naming the ranks it hit."""
    from .. import errors

    by_msg: dict[str, list[int]] = {}
    for r in rows:
        if r.get("refine_error"):
            msg = one_line(r["refine_error"])
            name, _, rest = msg.partition(": ")
            if rest and isinstance(getattr(errors, name, None), type):  # our own errors read without their class
                msg = rest
            by_msg.setdefault(msg, []).append(r["rank"])
    out = []
    for msg, ranks in by_msg.items():
        which = (f"candidate {ranks[0]} not refined, its screened structure is kept" if len(ranks) == 1 else
                 f"candidates {', '.join(str(k) for k in ranks)} not refined, their screened structures are kept")
        out.append(f"warning: {which}: {msg}")
    return out


def print_proposals(results, obs, output, as_json: bool, seconds: float) -> None:
    """Print the ranked candidates (:func:`diffpy_diffusion.report.candidate_record` rows)."""
    from ..report import candidate_record

    rows = [candidate_record(p, i) for i, p in enumerate(results, 1)]
    for w in refine_warnings(rows):  # on stderr, also with --json/--quiet: the results are incomplete
        click.echo(w, err=True)
    if as_json:
        from ..io.writers import to_json_text

        click.echo(to_json_text({"source": obs.source, "composition": obs.formula, "seconds": seconds,
                                 "output": str(output) if output else None, "candidates": rows}), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Candidates for {obs.formula} ({Path(obs.source or '').name})")
    notes = [refine_note(r) for r in rows]
    for col in ("#", "formula", "atoms", "space group", "a, b, c (Å)", "backend", "score") + (
            ("note",) if any(notes) else ()):
        table.add_column(col)
    for r, note in zip(rows, notes):
        score = f"{r['score_name']}={r['score']:.3f}" if r["score"] is not None else "-"
        lat = r["lattice"]
        table.add_row(str(r["rank"]), r["formula"], str(r["n_atoms"]), str(r["spacegroup"] or "?"),
                      f"{lat['a']:.3f}, {lat['b']:.3f}, {lat['c']:.3f}", str(r["backend"]), score,
                      *((note,) if any(notes) else ()))
    con = Console(width=None if sys.stdout.isatty() else 120)
    con.print(table)
    where = f"outputs in {output}/" if output else "no files written (use -o DIR to save CIF/.stru)"
    for r, note in zip(rows, notes):
        if note == "fit not converged":
            con.print(f"candidate {r['rank']}: {note} ({r.get('refine_message') or 'no message'}); "
                      "refined values kept, check its fit plot", markup=False, highlight=False)
    if rows and obs.kind == "xrd":
        from ..report import print_unexplained_peaks

        print_unexplained_peaks((rows[0].get("provenance") or {}).get("unexplained_peaks"), console=con)
    con.print(f"{len(rows)} candidate(s) in {seconds:.1f} s; {where}")
