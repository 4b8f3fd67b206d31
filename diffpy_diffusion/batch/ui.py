"""The terminal side of ``propose-batch``: the progress bar and the summary table."""

from __future__ import annotations

from .records import SUMMARY_CSV

__all__ = ["progress_bar", "print_summary"]


class progress_bar:
    """Rich progress bar over patterns (a no-op when disabled); ``advance(name)`` per finished pattern."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done
        self._prog = None

    def __enter__(self):
        if not self.enabled:
            return lambda name: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._prog = Progress(TextColumn("[bold]patterns"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                              TextColumn("{task.description}"), transient=False)
        self._prog.__enter__()
        task = self._prog.add_task("", total=self.total, completed=self.done)

        def advance(name):
            self._prog.update(task, advance=1, description=name)

        return advance

    def __exit__(self, *exc):
        if self._prog is not None:
            self._prog.__exit__(*exc)
        return False


def print_summary(summary, *, console=None) -> None:
    """Print the summary table (rank-1 answer per pattern) and the counts.

    ``summary`` is a :class:`~diffpy_diffusion.batch.run.BatchSummary`.
    """
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    table = Table(title=f"propose-batch: {len(summary.rows)} pattern(s)")
    for col in ("pattern", "composition", "status", "best", "space group", "score"):
        table.add_column(col)
    for r in summary.rows:
        score = f"{r['score_name']}={float(r['score']):.3f}" if r["score"] not in ("", None) else "-"
        table.add_row(r["pattern"], r["composition"], r["status"] if not r["error"] else f"failed: {r['error']}",
                      r["formula"] or "-", str(r["spacegroup"] or "-"), score)
    con.print(table)
    out = summary.output_dir
    con.print(f"computed {len(summary.computed)}, already done {len(summary.skipped)}, failed {len(summary.failed)} "
              f"in {summary.seconds:.1f} s; summary in {out / SUMMARY_CSV if out else '-'}")
