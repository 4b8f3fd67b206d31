"""Batch screening of many patterns: local processes or an existing Dask cluster, resumable.

Two layers:

* :func:`map_tasks` -- the executor abstraction.  It runs a picklable function over
  a list of items sequentially, in a local process pool (``workers=N``) or on an
  existing `Dask distributed <https://distributed.dask.org>`_ cluster
  (``scheduler="tcp://host:port"``) and yields ``(index, result)`` as tasks finish.
  ``evaluate`` uses it too, so both commands scale out the same way.
* :func:`propose_batch` -- ``diffpy-diffuse propose-batch``: one proposal run per
  pattern file, each result written atomically into its own folder, so an
  interrupted campaign is resumed by running the same command again (finished
  patterns are skipped), then a summary table and ``summary.csv``.

Design choices that keep remote runs simple: the parent process reads every pattern
and writes every output; workers only receive an :class:`~diffpy_diffusion.types.Observation`
and return plain data.  A Dask cluster therefore needs no access to the input or
output folders, only the same diffpy-diffusion installation.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DiffpyDiffusionError, InputFileError, OutputExistsError

#: Name of the file that marks a finished pattern (written last, atomically).
RESULT_FILE = "results.json"
#: Batch settings; a rerun with different settings refuses to mix results.
MANIFEST_FILE = "batch.json"
SUMMARY_CSV = "summary.csv"

_PATTERN_EXTENSIONS = (".xy", ".xye", ".dat", ".txt", ".csv", ".chi", ".gr", ".fgr", ".iq")


# --------------------------------------------------------------------------- executor


@dataclass
class TaskError:
    """A task that raised: returned instead of a result by :func:`map_tasks` with ``on_error="return"``."""

    index: int
    error: str
    traceback: str = ""

    def __str__(self) -> str:
        return self.error


def _worker_init(threads: int) -> None:
    """Pool initializer: one BLAS/torch thread per worker process so N workers use N cores."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:  # torch may already be imported (fork); without torch nothing to do
        import sys

        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    except Exception:  # noqa: BLE001 - best effort only
        pass


class _Call:
    """Picklable wrapper: runs ``fn(item)`` and turns an exception into a :class:`TaskError`."""

    def __init__(self, fn: Callable[[Any], Any], threads: int | None = None):
        self.fn = fn
        self.threads = threads

    def __call__(self, indexed):
        index, item = indexed
        if self.threads:
            _worker_init(self.threads)
        try:
            return index, self.fn(item)
        except Exception as exc:  # noqa: BLE001 - reported per task, the batch goes on
            return index, TaskError(index, f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                                    traceback.format_exc())


def map_tasks(fn: Callable[[Any], Any], items: Iterable[Any], *, workers: int = 1, scheduler: Any = None,
              on_error: str = "raise", threads_per_worker: int | None = 1) -> Iterator[tuple[int, Any]]:
    """Run ``fn`` over ``items`` and yield ``(index, result)`` as each task finishes.

    Parameters
    ----------
    fn : callable
        A module-level (picklable) function of one argument.
    items : iterable
        Task inputs; must be picklable for ``workers > 1`` or a scheduler.
    workers : int
        Local worker processes; 1 runs in this process, in order.
    scheduler : str or distributed.Client, optional
        Address of an existing Dask distributed scheduler (``"tcp://host:8786"``)
        or a connected ``Client``.  Overrides ``workers``.  Needs the ``dask``
        extra (``pip install diffpy-diffusion[dask]``).
    on_error : {"raise", "return"}
        "return" yields a :class:`TaskError` for a failed task and goes on;
        "raise" raises :class:`DiffpyDiffusionError` naming the task.
    threads_per_worker : int, optional
        BLAS/torch threads in each local worker process (None: leave as is).

    Yields
    ------
    (int, object)
        Index of the item in ``items`` and ``fn(item)`` (or a :class:`TaskError`).
        Order is completion order, not input order, except for ``workers=1``.
    """
    if on_error not in ("raise", "return"):
        raise ValueError("on_error must be 'raise' or 'return'")
    indexed = list(enumerate(items))
    if not indexed:
        return
    if scheduler is not None:
        gen = _map_dask(fn, indexed, scheduler)
    elif workers is None or int(workers) <= 1:
        call = _Call(fn)
        gen = (call(it) for it in indexed)
    else:
        gen = _map_processes(fn, indexed, int(workers), threads_per_worker)
    for index, result in gen:
        if isinstance(result, TaskError) and on_error == "raise":
            raise DiffpyDiffusionError(f"task {index} failed: {result.error}")
        yield index, result


def _map_processes(fn, indexed, workers: int, threads: int | None):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: forking a process that has torch/OpenMP threads can deadlock
    ctx = mp.get_context("spawn")
    call = _Call(fn, threads)
    with ProcessPoolExecutor(max_workers=min(workers, len(indexed)), mp_context=ctx,
                             initializer=_worker_init if threads else None,
                             initargs=(threads,) if threads else ()) as pool:
        pending = {pool.submit(call, it) for it in indexed}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:  # interrupted: don't start what has not started
                fut.cancel()


def _dask_client(scheduler):
    try:
        from distributed import Client
    except ImportError:
        from .errors import NotAvailableError

        raise NotAvailableError("--dask-scheduler needs dask.distributed: pip install 'diffpy-diffusion[dask]'") \
            from None
    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(str(scheduler), timeout="20s", set_as_default=False), True
    except (OSError, TimeoutError) as exc:
        raise DiffpyDiffusionError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None


def _map_dask(fn, indexed, scheduler):
    from distributed import as_completed

    client, owned = _dask_client(scheduler)
    call = _Call(fn)
    try:
        futures = client.map(call, indexed, pure=False)
        try:
            for fut in as_completed(futures, loop=client.loop):
                yield fut.result()
        finally:
            client.cancel([f for f in futures if not f.done()])
    finally:
        if owned:
            client.close()


# --------------------------------------------------------------------------- compositions


def read_composition_table(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Read ``names.csv``: one row per pattern, columns ``file`` and ``composition`` (required)
    and optionally ``wavelength``, ``size``, ``spacegroup``, ``x``, ``radiation``.

    The ``file`` column may hold the file name (``cdse_01.xy``) or its stem
    (``cdse_01``); ``pattern`` and ``name`` are accepted as its header too.

    Returns
    -------
    dict
        Key (file name and stem, both) -> row dict.
    """
    from .types import parse_composition

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:  # reader contract: a clean error naming the file
        raise InputFileError(path, f"not a UTF-8 text table ({exc.reason} at byte {exc.start}); "
                                   "save it as UTF-8 CSV", 1) from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror or exc}") from None
    sample = text[:2048]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(_io.StringIO(text), dialect=dialect)
    if reader.fieldnames is None:
        raise InputFileError(path, "empty composition table; expected a header 'file,composition'", 1)
    fields = {f.strip().lower(): f for f in reader.fieldnames if f}
    key_col = next((fields[c] for c in ("file", "pattern", "name", "filename") if c in fields), None)
    comp_col = next((fields[c] for c in ("composition", "formula") if c in fields), None)
    if key_col is None or comp_col is None:
        raise InputFileError(path, f"header {reader.fieldnames} needs columns 'file' and 'composition'", 1)
    out: dict[str, dict[str, str]] = {}
    for lineno, row in enumerate(reader, start=2):
        name = (row.get(key_col) or "").strip()
        comp = (row.get(comp_col) or "").strip()
        if not name and not comp:
            continue
        if not name or not comp:
            raise InputFileError(path, "each row needs a file name and a composition", lineno)
        try:
            parse_composition(comp)
        except DiffpyDiffusionError as exc:
            raise InputFileError(path, str(exc), lineno) from None
        clean = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        clean["composition"] = comp
        clean["_line"] = str(lineno)
        out[name] = clean
        out.setdefault(Path(name).stem, clean)
    return out


def find_patterns(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Pattern files in a folder (sorted by name, not recursive) or the given list of files."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _PATTERN_EXTENSIONS)
            if not files:
                raise InputFileError(p, f"no pattern files ({' '.join(_PATTERN_EXTENSIONS)}) in this folder")
            return files
        return [p]
    return [Path(s) for s in source]


# --------------------------------------------------------------------------- the per-pattern task


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _spacegroup(structure) -> tuple[str | None, int | None]:
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        sga = SpacegroupAnalyzer(structure, symprec=0.1)
        return sga.get_space_group_symbol(), int(sga.get_space_group_number())
    except Exception:  # noqa: BLE001 - symmetry is descriptive only
        return None, None


def score_of(scores: dict) -> tuple[str | None, float | None]:
    """The figure of merit a candidate is ranked by: refined Rw/Rwp if present, else the screening one."""
    for key in ("rw", "rwp", "screen_rwp", "screen_rw"):
        if key in scores and scores[key] is not None:
            return key, float(scores[key])
    return None, None


def proposal_record(p, rank: int) -> dict[str, Any]:
    """Plain, JSON-friendly description of a ranked :class:`~diffpy_diffusion.types.Proposal`."""
    s = p.structure
    sg, sgn = _spacegroup(s)
    key, val = score_of(p.scores)
    lat = s.lattice
    return {
        "rank": rank, "formula": s.composition.reduced_formula, "n_atoms": len(s),
        "spacegroup": sg, "spacegroup_number": sgn, "backend": p.backend, "seed": p.seed,
        "score_name": key, "score": val,
        "lattice": {"a": lat.a, "b": lat.b, "c": lat.c, "alpha": lat.alpha, "beta": lat.beta, "gamma": lat.gamma},
        "scores": _jsonable(dict(p.scores)), "refined": _jsonable(dict(p.refined)),
        "structure": s.as_dict(),
    }


def _propose_one(obs, settings: dict) -> list:
    """The proposals for one observation: the full pipeline, or sample + screen with ``screen_only``."""
    backend, n, top, seed = settings["backend"], settings["n"], settings["top"], settings["seed"]
    options = dict(settings.get("backend_options") or {})
    if not settings.get("screen_only"):
        from .pipeline import propose

        return list(propose(obs, backend=backend, n=n, top=top, seed=seed, output_dir=None, progress=False,
                            backend_options=options or None))
    from . import plugins
    from .screen import screen

    names = backend.replace(",", "+").split("+")
    raw = []
    for j, name in enumerate(names):
        b = plugins.get_backend(name, **options)
        share = n // len(names) + (1 if j < n % len(names) else 0)
        raw.extend(b.sample(obs, share, seed=seed))
    return list(screen(obs, raw, k=top, **dict(settings.get("screen_options") or {})).kept)


def propose_task(task: dict) -> dict:
    """Worker side of :func:`propose_batch`: one observation in, plain records out (picklable both ways)."""
    t0 = time.perf_counter()
    props = _propose_one(task["observation"], task["settings"])
    return {"name": task["name"], "seconds": time.perf_counter() - t0,
            "candidates": [proposal_record(p, i) for i, p in enumerate(props, 1)]}


# --------------------------------------------------------------------------- writing results


def _settings_key(settings: dict) -> str:
    text = json.dumps(_jsonable(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_pattern_result(out: Path, name: str, record: dict, meta: dict, plot: bool = False) -> Path:
    """Write one pattern's folder atomically: build it under a temporary name, then rename."""
    from pymatgen.core import Structure

    from .io import write_cif, write_json, write_stru

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
        from . import plots

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


def _remove_stale_partials(out: Path) -> None:
    """Delete half-written result folders left by a killed run (their process is gone)."""
    for tmp in out.glob(".*.partial-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # still running: another batch is writing it
            continue
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temp_files(out: Path, started_at: float) -> None:
    """Delete the atomic writers' temp files (``.NAME.*.tmp``) in ``out`` that predate this run.

    A kill -9 during a write leaves one behind (``io.writers`` renames it into place only when
    the write completes).  A write takes milliseconds, so a temp file older than this whole run
    belongs to a process that is gone; newer ones are left alone.
    """
    for tmp in out.glob(".*.tmp"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < started_at:
                tmp.unlink()
        except OSError:  # removed meanwhile, or not ours to remove
            continue


def _write_failure(out: Path, name: str, error: TaskError, meta: dict) -> None:
    from .io import write_json

    write_json({**meta, "error": error.error, "traceback": error.traceback}, out / f"{name}.error.json",
               force=True)


def is_finished(out: Path, name: str) -> bool:
    """True when the pattern's result folder is complete (its ``results.json`` exists)."""
    return (Path(out) / name / RESULT_FILE).is_file()


# --------------------------------------------------------------------------- the batch


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


SUMMARY_COLUMNS = ("pattern", "composition", "status", "formula", "spacegroup", "score_name", "score",
                   "a", "b", "c", "alpha", "beta", "gamma", "n_candidates", "seconds", "error")


def _summary_row(name: str, composition: str, out: Path) -> dict[str, Any]:
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
                       score=c.get("score") if c.get("score") is not None else "", **c["lattice"])
    elif err.is_file():
        data = json.loads(err.read_text())
        row.update(status="failed", error=data.get("error", ""))
    else:
        row.update(status="pending")
    return row


def write_summary(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``summary.csv`` (one row per pattern, the best candidate's answer) atomically."""
    from .io import atomic_write_text

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in SUMMARY_COLUMNS})
    return atomic_write_text(out / SUMMARY_CSV, buf.getvalue(), force=True)


def _observation_for(path: Path, row: dict[str, str] | None, defaults: dict[str, Any]):
    from .io import parse_size_nm, parse_wavelength, read_observation

    kw = dict(defaults)
    if row:
        kw["composition"] = row["composition"]
        if row.get("wavelength"):
            kw["wavelength"] = parse_wavelength(row["wavelength"])
        if row.get("size"):
            kw["size_nm"] = parse_size_nm(row["size"])
        if row.get("spacegroup"):
            sg = row["spacegroup"]
            kw["spacegroup"] = int(sg) if sg.isdigit() else sg
        if row.get("x"):
            kw["x_kind"] = row["x"].lower()
        if row.get("radiation"):
            kw["radiation"] = row["radiation"].lower()
    if not kw.get("composition"):
        raise InputFileError(path, "no composition for this pattern: add it to --composition-from or give "
                                   "--composition")
    return read_observation(path, **{k: v for k, v in kw.items() if v is not None})


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
    manifest_path = out / MANIFEST_FILE
    key = _settings_key(settings)
    if manifest_path.exists() and not force:
        old = json.loads(manifest_path.read_text())
        if old.get("settings_key") != key:
            raise OutputExistsError(f"{out} holds a batch run with other settings ({old.get('settings')}); "
                                    "use another -o folder or --force to redo everything")
    started_at = time.time()
    _remove_stale_partials(out)
    from . import __version__
    from .io import write_json

    write_json({"settings": settings, "settings_key": key, "version": __version__,
                "patterns": [str(f) for f in files]}, manifest_path, force=True)

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
            obs = _observation_for(f, row, defaults)
        except (DiffpyDiffusionError, ValueError, OSError) as exc:
            _write_failure(out, f.stem, TaskError(-1, " ".join(str(exc).split())), {"pattern": str(f)})
            failed.append(f.stem)
            continue
        metas[f.stem] = {"pattern": str(f), "composition": obs.formula, "kind": obs.kind,
                         "settings": settings, "version": __version__}
        tasks.append({"name": f.stem, "observation": obs, "settings": settings})

    computed = []
    with _progress(progress, len(files), len(skipped) + len(failed)) as advance:
        for _i, result in map_tasks(propose_task, tasks, workers=workers, scheduler=scheduler, on_error="return"):
            if isinstance(result, TaskError):
                name = tasks[result.index]["name"]
                _write_failure(out, name, result, metas[name])
                failed.append(name)
            else:
                name = result["name"]
                _write_pattern_result(out, name, result, metas[name], plot=plot)
                computed.append(name)
            advance(name)
    rows = [_summary_row(f.stem, rows_comp[f.stem], out) for f in files]
    write_summary(out, rows)
    _remove_stale_temp_files(out, started_at)
    return BatchSummary(rows=rows, computed=computed, skipped=skipped, failed=failed, output_dir=out,
                        seconds=time.perf_counter() - t0)


class _progress:
    """Rich progress bar over patterns (a no-op when disabled); ``advance(name)`` per finished pattern."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done
        self._prog = None

    def __enter__(self):
        if not self.enabled:
            return lambda name: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

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


def print_summary(summary: BatchSummary, *, console=None) -> None:
    """Print the summary table (rank-1 answer per pattern) and the counts."""
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
