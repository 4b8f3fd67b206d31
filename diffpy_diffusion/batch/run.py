"""``propose_batch``: one proposal run per pattern file, resumable, locally or on Dask.

The parent process reads every pattern and writes every output; workers
(:func:`~diffpy_diffusion.batch.task.propose_task`) only receive an observation and return
plain records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DiffpyDiffusionError, InputFileError
from . import executor
from .discovery import find_patterns, observation_for, read_composition_table
from .executor import TaskError
from .records import summary_row, write_failure, write_pattern_result, write_summary
from .resume import MANIFEST_FILE, check_manifest, is_finished, remove_stale_partials, remove_stale_temp_files
from .task import propose_task
from .ui import progress_bar

__all__ = ["BatchSummary", "propose_batch"]


@dataclass
class BatchSummary:
    """What :func:`propose_batch` did.

    Attributes
    ----------
    rows : list of dict
        One row per pattern (the contents of ``summary.csv``), input order.
    computed, skipped, failed : list of str
        Pattern names computed in this run, skipped because already finished, failed.
    output_dir : Path
    seconds : float
    """

    rows: list[dict[str, Any]]
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    output_dir: Path | None = None
    seconds: float = 0.0


def propose_batch(patterns: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike, *,
                  compositions: str | os.PathLike | dict | None = None, composition: str | None = None,
                  wavelength=None, size_nm: float | None = None, x_kind: str | None = None,
                  radiation: str | None = None, backend: str = "diffusion", n: int = 200, top: int = 5,
                  seed: int = 0, screen_only: bool = False, screen_options: dict | None = None,
                  backend_options: dict | None = None,
                  workers: int = 1, scheduler: Any = None, force: bool = False, progress: bool = True,
                  limit: int | None = None, plot: bool = False) -> BatchSummary:
    """Propose structures for every pattern in a folder, resumably, locally or on Dask.

    Parameters
    ----------
    patterns : path or list of paths
        A folder of pattern files (.xy .xye .dat .chi .gr ...) or a list of files.
    output_dir : path
        One sub-folder per pattern (``<stem>/results.json`` + CIF/.stru), ``batch.json``
        (settings) and ``summary.csv``.
    compositions : path or dict, optional
        ``names.csv`` (see :func:`read_composition_table`) or an already read table.
    composition : str, optional
        Composition for patterns not in the table.
    wavelength, size_nm, x_kind, radiation
        Defaults for every pattern (a table row overrides them).
    backend, n, top, seed, backend_options
        As for :func:`diffpy_diffusion.pipeline.propose`; every pattern uses the same seed,
        so a pattern's answer does not depend on how the batch was split.
    screen_only : bool
        Sample and screen only (no srfit refinement): a fast first pass over a campaign.
    screen_options : dict, optional
        Keyword arguments of :func:`diffpy_diffusion.screen.screen` for ``screen_only``
        (e.g. ``{"gradient_steps": 0}`` for the fastest screen).
    workers : int
        Local worker processes.
    scheduler : str or distributed.Client, optional
        Dask distributed scheduler address; overrides ``workers``.
    force : bool
        Redo every pattern, even finished ones, and accept changed settings.
    progress : bool
        Show a rich progress bar.
    limit : int, optional
        Only the first ``limit`` patterns.
    plot : bool
        Also write ``<pattern>/candidates.png`` and ``.svg`` (:func:`diffpy_diffusion.plots.overview_figure`).

    Returns
    -------
    BatchSummary

    Raises
    ------
    OutputExistsError
        ``output_dir`` holds a batch run with different settings (use ``force``).
    """
    t0 = time.perf_counter()
    files = find_patterns(patterns)
    if compositions is not None and not isinstance(compositions, dict):  # names.csv inside the folder
        table_path = Path(compositions).resolve()
        files = [f for f in files if f.resolve() != table_path]
    if limit is not None:
        files = files[: int(limit)]
    table = compositions if isinstance(compositions, dict) else (
        read_composition_table(compositions) if compositions is not None else {})
    names = [f.stem for f in files]
    dupes = {x for x in names if names.count(x) > 1}
    if dupes:
        raise InputFileError(files[0].parent, f"two pattern files share the name(s) {sorted(dupes)}; rename one")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"backend": backend, "n": int(n), "top": int(top), "seed": int(seed), "screen_only": bool(screen_only),
                "screen_options": dict(screen_options or {}), "backend_options": dict(backend_options or {})}
    key = check_manifest(out, settings, force)
    started_at = time.time()
    remove_stale_partials(out)
    from .. import __version__
    from ..io import write_json

    write_json({"settings": settings, "settings_key": key, "version": __version__,
                "patterns": [str(f) for f in files]}, out / MANIFEST_FILE, force=True)

    defaults = {"composition": composition, "wavelength": wavelength, "size_nm": size_nm, "x_kind": x_kind,
                "radiation": radiation}
    rows_comp: dict[str, str] = {}
    todo, skipped, failed = [], [], []
    for f in files:
        row = table.get(f.name) or table.get(f.stem)
        rows_comp[f.stem] = (row or {}).get("composition") or composition or ""
        if not force and is_finished(out, f.stem):
            skipped.append(f.stem)
            continue
        todo.append((f, row))
    tasks, metas = [], {}
    for f, row in todo:
        err = out / f"{f.stem}.error.json"
        if err.exists():
            err.unlink()
        try:
            obs = observation_for(f, row, defaults)
        except (DiffpyDiffusionError, ValueError, OSError) as exc:
            write_failure(out, f.stem, TaskError(-1, " ".join(str(exc).split())), {"pattern": str(f)})
            failed.append(f.stem)
            continue
        metas[f.stem] = {"pattern": str(f), "composition": obs.formula, "kind": obs.kind,
                         "settings": settings, "version": __version__}
        tasks.append({"name": f.stem, "observation": obs, "settings": settings})

    computed = []
    with progress_bar(progress, len(files), len(skipped) + len(failed)) as advance:
        for _i, result in executor.map_tasks(propose_task, tasks, workers=workers, scheduler=scheduler,
                                             on_error="return"):
            if isinstance(result, TaskError):
                name = tasks[result.index]["name"]
                write_failure(out, name, result, metas[name])
                failed.append(name)
            else:
                name = result["name"]
                write_pattern_result(out, name, result, metas[name], plot=plot)
                computed.append(name)
            advance(name)
    rows = [summary_row(f.stem, rows_comp[f.stem], out) for f in files]
    write_summary(out, rows)
    remove_stale_temp_files(out, started_at)
    return BatchSummary(rows=rows, computed=computed, skipped=skipped, failed=failed, output_dir=out,
                        seconds=time.perf_counter() - t0)
