"""The ``diffpy-diffuse`` command line.

Thin by design: every command parses its options, calls one public API
function and prints.  Heavy modules (torch, pymatgen, srfit) are imported
inside the commands, so ``diffpy-diffuse --help`` is fast.

Errors a user can cause (:class:`~diffpy_diffusion.errors.DiffpyDiffusionError`,
``ValueError`` from input checks, missing files) print one line and exit with
status 2; ``--debug`` shows the traceback instead.

Shared option decorators (:func:`composition_option`, :func:`wavelength_option`,
...) live here so that every command spells its options the same way; scripts
depend on these names.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import DiffpyDiffusionError, NotAvailableError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
BUILTIN_COMMANDS = ("propose", "propose-batch", "simulate", "refine", "train", "evaluate", "backends", "bench")


# --------------------------------------------------------------------------- errors


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _debug_enabled(ctx: click.Context | None) -> bool:
    if os.environ.get("DIFFPY_DIFFUSION_DEBUG"):
        return True
    return bool(ctx is not None and ctx.meta.get("diffpy_diffusion.debug"))


class OptionValueError(click.BadParameter):
    """A bad option value (composition, wavelength, size): one ``Error:`` line, exit status 2.

    Click's usage block would bury the one line that says what is wrong.
    """

    def show(self, file=None) -> None:
        """Print ``Error: Invalid value for '--option': <what is wrong>`` on stderr."""
        click.echo(f"Error: {' '.join(self.format_message().split())}", file=file, err=file is None)


def not_available(feature: str, issue: str) -> NotAvailableError:
    """The error a command raises while its engine is not in this installation yet."""
    return NotAvailableError(f"{feature} is not available yet in diffpy-diffusion {__version__} "
                             f"(it lands with {issue})")


class DiffuseGroup(click.Group):
    """Click group that turns user errors into one line + exit 2 and loads plugin commands lazily."""

    _plugins_loaded = False

    def _load_plugin_commands(self, ctx) -> None:
        if DiffuseGroup._plugins_loaded:
            return
        DiffuseGroup._plugins_loaded = True
        try:
            from . import plugins

            plugins.add_plugin_commands(self)
        except Exception as exc:  # a broken plugin must never break the CLI
            click.echo(f"warning: plugin commands not loaded: {_one_line(exc)}", err=True)

    def list_commands(self, ctx):
        self._load_plugin_commands(ctx)
        core = [c for c in BUILTIN_COMMANDS if c in self.commands]
        return core + sorted(c for c in self.commands if c not in BUILTIN_COMMANDS)

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._load_plugin_commands(ctx)
            cmd = super().get_command(ctx, name)
        return cmd

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (DiffpyDiffusionError, ValueError, OSError) as exc:
            if _debug_enabled(ctx):
                raise
            if isinstance(exc, OSError) and exc.filename:
                msg = f"{exc.filename}: {exc.strerror or _one_line(exc)}"
            else:
                msg = _one_line(exc)
            click.echo(f"Error: {msg}" + ("" if isinstance(exc, NotAvailableError) else
                                           "  (--debug shows the traceback)"), err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            if _debug_enabled(ctx):
                raise
            click.echo("Interrupted." + (f" {_one_line(exc)}" if str(exc) else ""), err=True)
            ctx.exit(130)
        except Exception as exc:
            from .pipeline import _hides_interrupt

            if _debug_enabled(ctx) or not _hides_interrupt(exc):
                raise
            click.echo("Interrupted.", err=True)  # a Ctrl-C that a library turned into another error
            ctx.exit(130)


# --------------------------------------------------------------------------- shared options


def _set_debug(ctx, param, value):
    if value:
        ctx.meta["diffpy_diffusion.debug"] = True
    return value


def _set_quiet(ctx, param, value):
    if value:
        ctx.meta["diffpy_diffusion.quiet"] = True
    return value


def _parse_composition(ctx, param, value):
    if value is None:
        return None
    from .types import parse_composition

    try:
        parse_composition(value)
    except ValueError as exc:
        raise OptionValueError(str(exc)) from None
    return value


def _parse_wavelength(ctx, param, value):
    if value is None:
        return None
    from .io.units import parse_wavelength

    try:
        return parse_wavelength(value)
    except ValueError as exc:
        raise OptionValueError(str(exc)) from None


def _parse_size(ctx, param, value):
    if value is None:
        return None
    from .io.units import parse_size_nm

    try:
        return parse_size_nm(value)
    except ValueError as exc:
        raise OptionValueError(str(exc)) from None


def debug_option(f):
    """``--debug``: show tracebacks (also ``DIFFPY_DIFFUSION_DEBUG=1``)."""
    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show the full traceback on errors.")(f)


def quiet_option(f):
    """``-q/--quiet``: no progress bars or notices (the value is passed as ``quiet``)."""
    return click.option("-q", "--quiet", is_flag=True, callback=_set_quiet,
                        help="No progress bars or notices; results and errors only.")(f)


def json_option(f):
    """``--json``: machine-readable output on stdout (value ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON on stdout instead of a table.")(f)


def composition_option(required: bool = True):
    """``--composition``: chemical formula, validated (value: the string)."""
    return click.option("--composition", "-c", required=required, callback=_parse_composition,
                        metavar="FORMULA",
                        help="Chemical formula of the sample, e.g. CdSe or Ba2TiO4 (formula unit; "
                             "the number of formula units per cell is searched).")


def wavelength_option(f):
    """``--wavelength``: Å or a tube name; the value is an ``io.units.Wavelength`` (a float with ``.wavelength2``)."""
    return click.option("--wavelength", "-w", callback=_parse_wavelength, metavar="Å|TUBE",
                        help="X-ray wavelength in Å (1.5406) or a tube: CuKa (Kα1+Kα2), CuKa1, MoKa, "
                             "CoKa, FeKa, CrKa, AgKa. Default: from the file header.")(f)


def radiation_option(f):
    """``--radiation xray|neutron`` (``None`` = from the file header, else xray)."""
    return click.option("--radiation", type=click.Choice(["xray", "neutron"]), default=None,
                        help="Radiation; default from the file header, else xray.")(f)


def size_option(f):
    """``--size``: crystallite/particle size; value in nm (float)."""
    return click.option("--size", "size_nm", callback=_parse_size, metavar="SIZE",
                        help="Crystallite (XRD) or particle (PDF) diameter: 3nm, 30A, or a number in nm.")(f)


def x_option(f):
    """``--x 2theta|q|r``: what the first data column is (value ``x_kind``)."""
    return click.option("--x", "x_kind", type=click.Choice(["2theta", "q", "r"]), default=None,
                        help="What column 1 of the data is: 2theta (degrees), q (1/Å) or r (Å, PDF). "
                             "Default: detected from the header.")(f)


def backend_option(default: str = "auto"):
    """``--backend``: name, comma list, or ``a+b`` merge."""
    return click.option("--backend", "-b", default=default, show_default=True, metavar="NAME[,NAME]",
                        help="Structure proposer(s); see 'diffpy-diffuse backends'. 'auto' = diffusion "
                             "when its weights are installed, else the best available baseline. "
                             "'a+b' merges the candidates of two backends.")


def _parse_backend_options(ctx, param, values):
    """``-O KEY=VALUE`` / ``-O BACKEND.KEY=VALUE`` (repeatable) -> backend_options dict.

    VALUE is read as JSON when it parses (``1``, ``0.5``, ``true``, ``"x"``), else kept as text.
    """
    import json

    out: dict = {}
    for item in values or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE or BACKEND.KEY=VALUE, e.g. corrector_steps=0 "
                                     "or diffusion.cfg_scale=2", param=param)
        try:
            val = json.loads(raw)
        except ValueError:
            val = raw
        name, dot, opt = key.partition(".")
        if dot:
            out.setdefault(name, {})[opt] = val
        else:
            out[key] = val
    return out or None


def backend_options_option():
    """``--backend-option/-O``: options for the backends' constructors."""
    return click.option("--backend-option", "-O", "backend_options", multiple=True, metavar="[BACKEND.]KEY=VALUE",
                        callback=_parse_backend_options,
                        help="Option for the backends (repeatable), e.g. -O corrector_steps=0, "
                             "-O diffusion.cfg_scale=2, -O diffusion.checkpoint=runs/x/last.pt. A plain KEY goes "
                             "to every backend that takes it. See the backend's docstring for its options.")


def _merge_library(backend_options: dict | None, library: str | None) -> dict | None:
    if not library:
        return backend_options
    return {**(backend_options or {}), "library": library}


def n_option(default: int = 200):
    return click.option("--n", "-n", "n", type=click.IntRange(1, 100000), default=default, show_default=True,
                        help="Number of raw candidates to generate.")


def top_option(default: int = 5):
    return click.option("--top", type=click.IntRange(1, 1000), default=default, show_default=True,
                        help="Number of candidates to refine and report.")


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True,
                        help="Random seed; the same seed and inputs give the same candidates.")(f)


def output_option(default: str | None = None, help: str = "Output folder or file."):
    return click.option("-o", "--output", type=click.Path(path_type=Path), default=default,
                        show_default=default is not None, help=help)


def force_option(f):
    return click.option("--force", "-f", is_flag=True,
                        help="Overwrite existing output files (otherwise an existing file is an error).")(f)


def _spinner(quiet: bool):
    """A rich progress bar factory, or a no-op when quiet / not a terminal."""
    from contextlib import nullcontext

    if quiet:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), transient=True, console=_stderr_console())


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def notice(msg: str, quiet: bool = False) -> None:
    """Print a notice on stderr (suppressed by --quiet)."""
    if not quiet:
        click.echo(msg, err=True)


# --------------------------------------------------------------------------- the group


@click.group(cls=DiffuseGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="diffpy-diffuse")
@debug_option
def cli():
    """Propose crystal structures that explain a nanocrystal powder pattern or PDF.

    \b
    Typical use:
      diffpy-diffuse propose cdse_3nm.xy --composition CdSe --wavelength CuKa --size 3nm -o results/
      diffpy-diffuse propose ni.gr --composition Ni --top 5
      diffpy-diffuse simulate CdSe.cif --xrd --size 2nm -o cdse_2nm.xy
      diffpy-diffuse backends

    Each command has --help with its options. Errors print one line and exit
    with status 2; add --debug for the traceback.
    """


# --------------------------------------------------------------------------- propose


def resolve_backend(name: str, quiet: bool = False) -> str:
    """Turn ``auto`` into a concrete backend name, with a notice when falling back.

    A comma list (``--backend random,templates``) is normalised to the merged
    form ``random+templates`` that the pipeline understands.
    """
    name = "+".join(p.strip() for p in str(name).replace(",", "+").split("+") if p.strip()) or "auto"
    if name != "auto":
        return name
    from . import plugins

    names = plugins.backend_names()
    if "diffusion" in names and diffusion_weights_available():
        return "diffusion"
    for fallback in ("templates+random", "templates", "random", "example"):
        parts = fallback.split("+")
        if all(p in names for p in parts):
            notice(f"note: no trained diffusion weights installed; using backend '{fallback}' "
                   "(pass --backend to choose)", quiet)
            return fallback
    if names:
        notice(f"note: using backend '{names[0]}' (pass --backend to choose)", quiet)
        return names[0]
    raise DiffpyDiffusionError("no structure backend is installed; see 'diffpy-diffuse backends'")


def diffusion_weights_available() -> bool:
    """True when the diffusion backend ships trained weights (checked without importing torch).

    The backend may define ``weights_available()`` in its package; otherwise
    any ``*.pt``/``*.safetensors`` file in ``backends/diffusion/weights/`` counts.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("diffpy_diffusion.backends.diffusion")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    import sys

    mod = sys.modules.get("diffpy_diffusion.backends.diffusion")
    fn = getattr(mod, "weights_available", None)
    if callable(fn):
        try:
            return bool(fn())
        except Exception:
            return False
    for loc in spec.submodule_search_locations:
        wdir = Path(loc) / "weights"
        if wdir.is_dir() and (any(wdir.glob("*.pt")) or any(wdir.glob("*.safetensors"))):
            return True
    return False


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@composition_option(required=True)
@wavelength_option
@radiation_option
@size_option
@x_option
@click.option("--spacegroup", "--sg", "spacegroup", default=None, metavar="SG",
              help="Space-group hint: number (186) or symbol (P6_3mc).")
@click.option("--max-atoms", type=click.IntRange(1, 200), default=20, show_default=True,
              help="Largest number of atoms per cell to propose.")
@backend_option()
@click.option("--library", default=None, metavar="NAME|PATH",
              help="Template library of the templates backend: aflow (default), training-pool, or a folder/CSV.")
@backend_options_option()
@n_option(200)
@top_option(5)
@seed_option
@click.option("--refine/--no-refine", "do_refine", default=True, show_default=True,
              help="Refine the screened candidates with srfit (--no-refine: screen only, much faster).")
@output_option(None, "Folder for CIF/.stru files, results.json and plots (default: print only).")
@force_option
@json_option
@quiet_option
@debug_option
def propose(data, composition, wavelength, radiation, size_nm, x_kind, spacegroup, max_atoms, backend, library,
            backend_options, n, top, seed, do_refine, output, force, as_json, quiet):
    """Propose and refine crystal structures for the pattern in DATA.

    DATA is a powder pattern (.xy .xye .dat .csv .chi: 2θ or Q vs intensity)
    or a PDF (.gr). The backend generates --n candidates with the given
    composition, they are screened against the data, and the best --top are
    refined and reported (ranked by Rwp/Rw).

    \b
    Example:
      diffpy-diffuse propose cdse_3nm.xy -c CdSe -w CuKa --size 3nm -o results/
    """
    from .io import read_observation

    sg = int(spacegroup) if spacegroup and str(spacegroup).isdigit() else spacegroup
    obs = read_observation(data, x_kind=x_kind, wavelength=wavelength, radiation=radiation,
                           composition=composition, size_nm=size_nm, spacegroup=sg, max_atoms=max_atoms)
    backend = resolve_backend(backend, quiet or as_json)
    t0 = time.perf_counter()
    try:
        from .pipeline import propose as pipeline_propose
    except ImportError:
        pipeline_propose = None
    if pipeline_propose is not None:
        try:
            results = pipeline_propose(obs, backend=backend, n=n, top=top, seed=seed, output_dir=output,
                                       force=force, progress=not (quiet or as_json),
                                       backend_options=_merge_library(backend_options, library),
                                       refine=do_refine)
        except KeyboardInterrupt:
            if output is not None and (Path(output) / "results.json").exists():
                raise KeyboardInterrupt(f"The candidates finished so far are in {output}/ "
                                        '(results.json: "interrupted": true).') from None
            raise
    else:
        results = _propose_without_pipeline(obs, backend, n, top, seed, output, force, quiet or as_json)
    _print_proposals(results, obs, output, as_json, time.perf_counter() - t0)


def _propose_without_pipeline(obs, backend_name, n, top, seed, output, force, quiet):
    """Minimal path used until pipeline.py lands: sample, keep the first --top, write files."""
    from . import plugins

    if "+" in backend_name or "," in backend_name:
        backend_name = backend_name.replace(",", "+").split("+")[0]
    backend = plugins.get_backend(backend_name)
    with _spinner(quiet) as prog:
        task = prog.add_task(f"sampling ({backend_name})", total=n) if prog else None
        cb = (lambda k: prog.advance(task, k)) if prog else None
        props = backend.sample(obs, n, seed=seed, progress=cb)
    props = list(props)[:top]
    for i, p in enumerate(props, 1):
        p.scores.setdefault("rank", i)
    if output is not None:
        from .io import write_cif, write_json, write_stru

        out = Path(output)
        for i, p in enumerate(props, 1):
            stem = f"candidate_{i:02d}_{p.structure.composition.reduced_formula}"
            write_cif(p.structure, out / f"{stem}.cif", force=force)
            write_stru(p.structure, out / f"{stem}.stru", force=force)
        write_json({"source": obs.source, "composition": obs.formula, "backend": backend_name,
                    "note": "unscreened, unrefined: the pipeline is not installed",
                    "candidates": [_proposal_dict(p, i) for i, p in enumerate(props, 1)]},
                   out / "results.json", force=force)
    return props


def _proposal_dict(p, rank: int) -> dict:
    s = p.structure
    # the space group the refinement used (pipeline), else a tolerant spglib guess
    sg = p.provenance.get("spacegroup_refined") if isinstance(p.provenance, dict) else None
    if sg is None:
        try:
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            sg = SpacegroupAnalyzer(s, symprec=0.1).get_space_group_symbol()
        except Exception:
            sg = None
    prov = p.provenance if isinstance(p.provenance, dict) else {}
    row = {"rank": rank, "formula": s.composition.reduced_formula, "n_atoms": len(s),
           "spacegroup": sg, "backend": p.backend, "seed": p.seed,
           "lattice": {"a": s.lattice.a, "b": s.lattice.b, "c": s.lattice.c,
                       "alpha": s.lattice.alpha, "beta": s.lattice.beta, "gamma": s.lattice.gamma},
           "scores": dict(p.scores), "refined": dict(p.refined)}
    for key in ("refine_error", "refine_converged", "refine_message"):
        if key in prov:
            row[key] = prov[key]
    return row


def _refine_note(row: dict) -> str:
    """What the table's note column says about a candidate's refinement ("" when it went fine)."""
    if row.get("refine_error"):
        return "not refined: fit failed"
    if row.get("refine_converged") is False:
        return "fit not converged"
    return ""


def _refine_warnings(rows: list[dict]) -> list[str]:
    """One warning per distinct refinement failure, naming the ranks it hit."""
    from . import errors

    by_msg: dict[str, list[int]] = {}
    for r in rows:
        if r.get("refine_error"):
            msg = _one_line(r["refine_error"])
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


def _print_proposals(results, obs, output, as_json: bool, seconds: float) -> None:
    rows = [_proposal_dict(p, i) for i, p in enumerate(results, 1)]
    for w in _refine_warnings(rows):  # on stderr, also with --json/--quiet: the results are incomplete
        click.echo(w, err=True)
    if as_json:
        from .io.writers import to_json_text

        click.echo(to_json_text({"source": obs.source, "composition": obs.formula, "seconds": seconds,
                                 "output": str(output) if output else None, "candidates": rows}), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Candidates for {obs.formula} ({Path(obs.source or '').name})")
    notes = [_refine_note(r) for r in rows]
    for col in ("#", "formula", "atoms", "space group", "a, b, c (Å)", "backend", "score") + (
            ("note",) if any(notes) else ()):
        table.add_column(col)
    for r, note in zip(rows, notes):
        sc = r["scores"]
        key = next((k for k in ("rw", "rwp", "screen_rwp", "screen_rw") if k in sc), None)
        score = f"{key}={sc[key]:.3f}" if key else "-"
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
    con.print(f"{len(rows)} candidate(s) in {seconds:.1f} s; {where}")


# --------------------------------------------------------------------------- propose-batch


@cli.command("propose-batch", context_settings=CONTEXT_SETTINGS)
@click.argument("patterns", type=click.Path(exists=True, path_type=Path))
@click.option("--composition-from", "composition_table", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="CSV with columns file,composition (optional: wavelength,size,spacegroup,x,"
                                 "radiation), one row per pattern.")
@composition_option(required=False)
@wavelength_option
@radiation_option
@size_option
@x_option
@backend_option()
@n_option(200)
@top_option(5)
@seed_option
@click.option("--screen-only", is_flag=True, help="Sample and screen only, no srfit refinement (fast first pass).")
@click.option("--screen-steps", type=click.IntRange(0, 10000), default=None,
              help="Gradient steps of the screen (with --screen-only; 0 = grid search only, fastest).")
@click.option("--workers", "-j", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Local worker processes.")
@click.option("--dask-scheduler", default=None, metavar="ADDRESS",
              help="Run the patterns on an existing Dask distributed cluster, e.g. tcp://host:8786 "
                   "(needs the 'dask' extra). Overrides --workers.")
@click.option("--limit", type=click.IntRange(1, None), default=None, help="Only the first N patterns.")
@click.option("--plot", is_flag=True, help="Also write a candidates overview (PNG + SVG) per pattern.")
@output_option(None, "Output folder: one sub-folder per pattern, batch.json, summary.csv.")
@force_option
@json_option
@quiet_option
@debug_option
def propose_batch(patterns, composition_table, composition, wavelength, radiation, size_nm, x_kind, backend, n, top,
                  seed, screen_only, screen_steps, workers, dask_scheduler, limit, plot, output, force, as_json,
                  quiet):
    """Propose structures for every pattern file in the folder PATTERNS (resumable).

    Each finished pattern is written atomically to OUTPUT/<name>/; running the
    same command again after an interruption computes only the patterns that
    are not finished. --force redoes all of them.

    \b
    Example:
      diffpy-diffuse propose-batch patterns/ --composition-from names.csv -o out/ --workers 2
    """
    from .batch import print_summary
    from .batch import propose_batch as run_batch

    if output is None:
        raise click.UsageError("propose-batch needs -o/--output (results are written per pattern)")
    summary = run_batch(patterns, output, compositions=composition_table, composition=composition,
                        wavelength=wavelength, size_nm=size_nm, x_kind=x_kind, radiation=radiation,
                        backend=resolve_backend(backend, quiet or as_json), n=n, top=top, seed=seed,
                        screen_only=screen_only,
                        screen_options=None if screen_steps is None else {"gradient_steps": screen_steps},
                        workers=workers, scheduler=dask_scheduler, force=force, progress=not (quiet or as_json),
                        limit=limit, plot=plot)
    if as_json:
        from .io.writers import to_json_text

        click.echo(to_json_text({"output": str(output), "computed": summary.computed, "skipped": summary.skipped,
                                 "failed": summary.failed, "seconds": summary.seconds, "patterns": summary.rows}),
                   nl=False)
    elif not quiet:
        print_summary(summary)


# --------------------------------------------------------------------------- simulate


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("structure", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--xrd", "kind", flag_value="xrd", default=True, help="Powder diffraction pattern (default).")
@click.option("--pdf", "kind", flag_value="pdf", help="Pair distribution function G(r).")
@click.option("--debye", "kind", flag_value="debye", help="Debye scattering equation on a cluster (needs --size).")
@click.option("--kind", "kind", metavar="NAME",
              help="Any simulator by name, including those plugins register (see hookspecs.register_simulators).")
@wavelength_option
@radiation_option
@size_option
@x_option
@click.option("--range", "x_range", nargs=3, type=float, default=None, metavar="MIN MAX STEP",
              help="Grid of the x axis, e.g. 10 80 0.02 (2θ, degrees), 0.5 8 0.01 (Q), 0 30 0.01 (r).")
@click.option("--two-theta", "two_theta", default=None, metavar="MIN:MAX:STEP",
              help="2θ grid in degrees, e.g. 10:90:0.02 (sets --x 2theta).")
@click.option("--rmax", type=float, default=None, help="PDF: largest r in Å (grid 0.5..RMAX step 0.01).")
@click.option("--qmax", type=float, default=None, help="PDF: Qmax termination in 1/Å.")
@click.option("--qdamp", type=float, default=None, help="PDF: Qdamp in 1/Å.")
@click.option("--diameter", "diameter_nm", callback=_parse_size, metavar="SIZE",
              help="Debye: cluster diameter (3nm, 30A); default --size.")
@output_option(None, "Output .xy/.gr file (default: print a summary only).")
@force_option
@click.option("--plot", is_flag=False, flag_value="", default=None, metavar="[PNG]",
              help="Also save a PNG plot (at PNG, or next to the output).")
@json_option
@quiet_option
@debug_option
def simulate(structure, kind, wavelength, radiation, size_nm, x_kind, x_range, two_theta, rmax, qmax, qdamp,
             diameter_nm, output, force, plot, as_json, quiet):
    """Simulate the pattern of the crystal structure in STRUCTURE (.cif, .stru).

    \b
    Example:
      diffpy-diffuse simulate CdSe.cif --xrd --size 2nm -w CuKa -o cdse_2nm.xy
    """
    run_simulation = None
    if kind not in ("xrd", "pdf", "debye"):
        from . import plugins

        sims = plugins.get_simulators()
        if kind.lower() not in sims:
            raise click.BadParameter(f"unknown simulator {kind!r}; available: xrd, pdf, debye"
                                     + "".join(f", {n}" for n in sorted(sims)), param_hint="--kind")
        plugin_sim = sims[kind.lower()].obj

        def run_simulation(structure, kind=None, x=None, **params):
            return plugin_sim(structure, x=x, **params)
    if run_simulation is None:
        try:
            from .simulation import simulate as run_simulation
        except ImportError:
            raise not_available("simulate", "the physics issue (#4)") from None
    from .io import read_structure, write_xy

    import numpy as np

    s = read_structure(structure)
    params = {"radiation": radiation or "xray"}
    if wavelength is not None:
        params["wavelength"] = float(wavelength)
        if getattr(wavelength, "wavelength2", None):
            params["wavelength2"] = wavelength.wavelength2
    if size_nm is not None:
        params["size_nm"] = size_nm
    if x_kind is not None:
        params["x_kind"] = x_kind
    if two_theta is not None:
        try:
            x_range = tuple(float(v) for v in two_theta.split(":"))
            assert len(x_range) == 3
        except (ValueError, AssertionError):
            raise click.BadParameter(f"{two_theta!r}: expected MIN:MAX:STEP, e.g. 10:90:0.02",
                                     param_hint="--two-theta") from None
        params["x_kind"] = "2theta"
    if rmax is not None and x_range is None:
        x_range = (0.5, rmax, 0.01)
    for key, val in (("qmax", qmax), ("qdamp", qdamp), ("diameter_nm", diameter_nm)):
        if val is not None:
            params[key] = val
    if x_range is not None and not (x_range[2] > 0 and x_range[1] > x_range[0]):
        hint = "--two-theta" if two_theta is not None else "--rmax" if rmax is not None else "--range"
        raise click.BadParameter(f"grid {x_range}: need MIN < MAX and STEP > 0", param_hint=hint)
    x = np.arange(x_range[0], x_range[1] + 0.5 * x_range[2], x_range[2]) if x_range else None
    obs = run_simulation(s, kind=kind, x=x, **params)
    if output is not None:
        col = {"2theta": "2theta_deg", "q": "Q_invA", "r": "r_A"}[obs.x_kind]
        ycol = "G_invA2" if obs.kind == "pdf" else "intensity"
        write_xy(obs.x, obs.y, output, header=f"simulated by diffpy-diffuse {__version__} from {structure}\n"
                 + "\n".join(f"{k} = {v}" for k, v in params.items()), columns=(col, ycol), force=force)
    if plot is not None:
        if plot:
            _save_plot(obs, Path(plot), force)
        elif output is not None:
            _save_plot(obs, Path(output).with_suffix(".png"), force)
        else:
            raise click.BadParameter("give a PNG path (--plot out.png) or -o", param_hint="--plot")
    summary = {"structure": str(structure), "kind": obs.kind, "x_kind": obs.x_kind, "points": int(len(obs.x)),
               "x_min": float(obs.x[0]), "x_max": float(obs.x[-1]), "output": str(output) if output else None}
    if as_json:
        from .io.writers import to_json_text

        click.echo(to_json_text(summary), nl=False)
    elif not quiet:
        click.echo(f"{obs.kind} pattern of {structure.name}: {summary['points']} points, "
                   f"{obs.x_kind} {summary['x_min']:g}..{summary['x_max']:g}"
                   + (f" -> {output}" if output else ""))


def _save_plot(obs, path: Path, force: bool) -> None:
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(obs.x, obs.y, lw=1)
    ax.set_xlabel({"2theta": "2θ (deg)", "q": "Q (Å⁻¹)", "r": "r (Å)"}[obs.x_kind])
    ax.set_ylabel("G(r) (Å⁻²)" if obs.kind == "pdf" else "intensity (arb. units)")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue(), force=force)


# --------------------------------------------------------------------------- refine


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("structure", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@composition_option(required=False)
@wavelength_option
@radiation_option
@size_option
@x_option
@click.option("--engine", type=click.Choice(["srfit", "pdffit2"]), default="srfit", show_default=True,
              help="Refinement engine (pdffit2: PDF data only).")
@output_option(None, "Folder for the refined CIF/.stru, results.json and plot.")
@force_option
@json_option
@quiet_option
@debug_option
def refine(data, structure, composition, wavelength, radiation, size_nm, x_kind, engine, output, force, as_json,
           quiet):
    """Refine the structure in STRUCTURE against the pattern in DATA (srfit).

    \b
    Example:
      diffpy-diffuse refine ni.gr ni.cif -o ni_fit/
    """
    try:
        from .pipeline import refine_file
    except ImportError:
        raise not_available("refine", "the refinement issue (#5)") from None
    refine_file(data, structure, composition=composition, wavelength=wavelength, radiation=radiation,
                size_nm=size_nm, x_kind=x_kind, engine=engine, output_dir=output, force=force,
                as_json=as_json, quiet=quiet)


# --------------------------------------------------------------------------- train


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})
@click.pass_context
def train(ctx):
    """Train the diffusion backend (options: 'diffpy-diffuse train --help').

    \b
    Example:
      diffpy-diffuse train --data ../shared/data/mp20 --out run1/
    """
    try:
        from .backends.diffusion.train import main as train_main
    except ImportError:
        if any(a in ("-h", "--help") for a in ctx.args):
            click.echo(ctx.get_help())
            return
        raise not_available("train", "the neural-backend issue (#6)") from None
    rc = train_main(list(ctx.args))
    if isinstance(rc, int) and rc:
        ctx.exit(rc)


# --------------------------------------------------------------------------- evaluate


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--dataset", default="mp20-test", show_default=True,
              help="Benchmark set, e.g. mp20-test (first 1,000 rows of mp20/test.csv.gz).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the shared data (default: ../shared/data or $DIFFPY_DIFFUSION_DATA).")
@click.option("--limit", type=click.IntRange(1, None), default=100, show_default=True,
              help="Number of structures to evaluate (first N of the set).")
@size_option
@wavelength_option
@backend_option()
@n_option(128)
@top_option(10)
@seed_option
@click.option("--library", default=None, metavar="NAME|PATH",
              help="Template library of the templates backend: aflow (default), training-pool, or a folder/CSV.")
@backend_options_option()
@click.option("--refine-top", type=click.IntRange(0, None), default=1, show_default=True,
              help="Refine only the best this many of --top (of each backend for a+b); matches are counted "
                   "among all --top. "
                   "(First 10 targets at 10 nm: refining all 10 left the diffusion top-10 rate unchanged "
                   "and doubled the time; raising --n from 32 to 128 tripled it.)")
@click.option("--workers", "-j", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Local worker processes (targets evaluated in parallel).")
@click.option("--dask-scheduler", default=None, metavar="ADDRESS",
              help="Run the targets on an existing Dask distributed cluster, e.g. tcp://host:8786 "
                   "(needs the 'dask' extra). Overrides --workers.")
@output_option(None, "Folder for per-structure results and the summary.")
@force_option
@click.option("--resume", is_flag=True,
              help="Continue the run in --output: reuse the targets it finished (an interrupted run's "
                   "evaluation.partial.jsonl, or evaluation.json when --limit grows) and evaluate the rest. "
                   "The other options must be the same.")
@json_option
@quiet_option
@debug_option
def evaluate(dataset, data_dir, limit, size_nm, wavelength, backend, n, top, seed, library, backend_options, refine_top,
             workers, dask_scheduler, output, force, resume, as_json, quiet):
    """Benchmark a backend on simulated patterns of known structures (match rate, RMSE, Rwp, time)."""
    try:
        from .evaluate import run_evaluation
    except ImportError:
        raise not_available("evaluate", "the pipeline issue (#5/#6)") from None
    run_evaluation(dataset=dataset, data_dir=data_dir, limit=limit, size_nm=size_nm, wavelength=wavelength,
                   # evaluate compares comma-separated backends one by one (a+b still merges)
                   backend=",".join(resolve_backend(b, quiet or as_json) for b in backend.split(",") if b.strip()),
                   n=n, top=top, seed=seed, output_dir=output, force=force, as_json=as_json, quiet=quiet,
                   workers=workers, resume=resume,
                   library=library, refine_top=refine_top, backend_options=backend_options,
                   **({"scheduler": dask_scheduler} if dask_scheduler else {}))


# --------------------------------------------------------------------------- backends


@cli.command(context_settings=CONTEXT_SETTINGS)
@json_option
@debug_option
def backends(as_json):
    """List installed structure backends with their plugin, version and capabilities.

    Select plugins with DIFFPY_DIFFUSION_PLUGINS=a,b (allow-list) or
    DIFFPY_DIFFUSION_DISABLE_PLUGINS=a,b.
    """
    from . import plugins

    rows = plugins.list_backends()
    errors = plugins.plugin_errors()
    if as_json:
        from .io.writers import to_json_text

        click.echo(to_json_text({"backends": rows, "plugins": plugins.plugin_info(), "errors": errors}),
                   nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 120)
    wide = con.width >= 110  # the description column only where it fits
    table = Table(title="diffpy-diffusion backends")
    table.add_column("backend", style="bold", no_wrap=True)
    table.add_column("plugin", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("capabilities")
    if wide:
        table.add_column("description", overflow="ellipsis", no_wrap=True, max_width=48)
    for r in rows:
        plugin = f"{r['plugin']} {r['plugin_version']}"
        desc = r["description"].split(". ")[0].rstrip(".")
        cells = [r["name"], plugin, r["version"], " ".join(r["capabilities"]) or "-"]
        if wide:
            cells.append(desc)
        if r["error"]:
            cells[-1] = f"[red]cannot start: {r['error']}[/red]"
        table.add_row(*cells)
    con.print(table)
    if not rows:
        con.print("no backends installed")
    for e in errors:
        click.echo(f"plugin error: {e}", err=True)


# --------------------------------------------------------------------------- bench


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--quick", is_flag=True, help="Small sizes only (seconds).")
@json_option
@quiet_option
@debug_option
def bench(quick, as_json, quiet):
    """Time the forward models (XRD, PDF, Debye) on this machine.

    Each figure is printed as a ratio against pymatgen's XRDCalculator and
    diffpy.pdffit2 measured in the same run (best of N, process CPU time,
    one torch thread); see benchmarks/bench_physics.py.
    """
    from .physics.benchmark import format_report, run

    res = run(quick=quick)
    if as_json:
        from .io.writers import to_json_text

        click.echo(to_json_text(res), nl=False)
    elif not quiet:
        click.echo(format_report(res))


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``diffpy-diffuse``)."""
    cli.main(args=argv, prog_name="diffpy-diffuse")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
