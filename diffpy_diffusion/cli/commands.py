"""The core commands: ``propose``, ``propose-batch``, ``simulate``, ``refine``, ``evaluate``.

Thin by design: every command parses its options, calls one public API function and
prints.  Heavy modules (torch, pymatgen, srfit) are imported inside the commands, so
``diffpy-diffuse --help`` is fast.  The optional commands ``train`` and ``bench`` are the
built-in plugin :mod:`diffpy_diffusion.builtins.commands`.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import __version__
from .choice import resolve_backend
from .group import CONTEXT_SETTINGS, cli
from .options import (
    backend_option,
    backend_options_option,
    composition_option,
    debug_option,
    force_option,
    instrument_option,
    json_option,
    merge_library,
    merge_pdf_condition,
    n_option,
    no_condition_option,
    no_energy_option,
    output_option,
    parse_size,
    pdf_options,
    quiet_option,
    radiation_option,
    relax_option,
    seed_option,
    size_option,
    top_option,
    wavelength_option,
    x_option,
)
from .show import print_proposals

# --------------------------------------------------------------------------- propose


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@composition_option(required=True)
@wavelength_option
@radiation_option
@size_option
@x_option
@pdf_options
@click.option("--spacegroup", "--sg", "spacegroup", default=None, metavar="SG",
              help="Space-group hint: number (186) or symbol (P6_3mc). The diffusion backend then samples "
                   "half of its candidates in that group (Wyckoff positions, its primitive cell); templates keep "
                   "the prototypes of that group.")
@click.option("--max-atoms", type=click.IntRange(1, 200), default=20, show_default=True,
              help="Largest number of atoms per cell to propose.")
@backend_option()
@click.option("--library", default=None, metavar="NAME|PATH",
              help="Template library of the templates backend: pool (default: the training pool's "
                   "structures, shipped with the package), aflow (pymatgen's AFLOW prototypes), "
                   "training-pool (indexed from $DIFFPY_DIFFUSION_DATA), or a folder of CIFs / a CSV.")
@backend_options_option()
@n_option(200)
@top_option(5)
@seed_option
@click.option("--refine/--no-refine", "do_refine", default=True, show_default=True,
              help="Refine the screened candidates with srfit (--no-refine: screen only, much faster).")
@click.option("--phase", "phases", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE.cif", help="Known extra (impurity) phase refined alongside every candidate (PXRD): "
                                       "scale, cell, size. Repeatable.")
@click.option("--peak-model", type=click.Choice(["auto", "rietveld", "basic"]), default="auto", show_default=True,
              help="PXRD profile of the refinement: rietveld (Thompson-Cox-Hastings, Kα2, axial asymmetry, "
                   "displacement, preferred orientation), basic (pseudo-Voigt and Scherrer size), or auto: "
                   "rietveld when --instrument or --phase is given, else basic.")
@instrument_option
@relax_option
@no_energy_option
@no_condition_option
@output_option(None, "Folder for CIF/.stru files, results.json and plots (default: print only).")
@force_option
@json_option
@quiet_option
@debug_option
def propose(data, composition, wavelength, radiation, size_nm, x_kind, qmax, qdamp, spacegroup, max_atoms, backend,
            library, backend_options, n, top, seed, do_refine, phases, peak_model, instrument, relax, no_condition,
            output, force, as_json, quiet):
    """Propose and refine crystal structures for the pattern in DATA.

    DATA is a powder pattern (.xy .xye .dat .csv .chi: 2θ or Q vs intensity)
    or a PDF (.gr). The backend generates --n candidates with the given
    composition, they are screened against the data, and the best --top are
    refined and reported (ranked by Rwp/Rw). With an energy plugin installed
    (diffpy-diffusion-chgnet) every candidate also gets its CHGNet energy and
    implausible ones are ranked lower (--no-energy: by the fit alone).

    \b
    Example:
      diffpy-diffuse propose cdse_3nm.xy -c CdSe -w CuKa --size 3nm -o results/
    """
    from ..io import check_pdf_grid
    from ..pipeline import propose as pipeline_propose, pxrd_refine_options, read_observation_for_instrument

    if relax:
        from ..pipeline import relax_available

        relax_available()  # before reading anything: exit 2 when no plugin can relax
    if instrument is not None and peak_model == "basic":
        raise click.UsageError("--instrument holds the Rietveld instrument profile; it cannot be used with "
                               "--peak-model basic")
    ip = None
    if instrument is not None:
        from ..io.instrument_params import read_instrument

        ip = read_instrument(instrument)
    sg = int(spacegroup) if spacegroup and str(spacegroup).isdigit() else spacegroup
    pdf_fields = {k: v for k, v in (("qmax", qmax), ("qdamp", qdamp)) if v is not None}
    obs = read_observation_for_instrument(data, ip, x_kind=x_kind, wavelength=wavelength, radiation=radiation,
                                          composition=composition, size_nm=size_nm, spacegroup=sg,
                                          max_atoms=max_atoms, **pdf_fields)
    check_pdf_grid(obs)  # a G(r) the proposers cannot use: one line naming the file, before any work
    refine_options = pxrd_refine_options(obs, phases, peak_model, ip)
    backend = resolve_backend(backend, quiet or as_json)
    t0 = time.perf_counter()
    try:
        results = pipeline_propose(obs, backend=backend, n=n, top=top, seed=seed, output_dir=output, force=force,
                                   progress=not (quiet or as_json),
                                   backend_options=merge_pdf_condition(merge_library(backend_options, library),
                                                                       no_condition), refine=do_refine,
                                   relax=relax, refine_options=refine_options)
    except KeyboardInterrupt:
        if output is not None and (Path(output) / "results.json").exists():
            raise KeyboardInterrupt(f"The candidates finished so far are in {output}/ "
                                    '(results.json: "interrupted": true).') from None
        raise
    print_proposals(results, obs, output, as_json, time.perf_counter() - t0)


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
@no_energy_option
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
    from ..batch import print_summary, propose_batch as run_batch

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
        from ..io.writers import to_json_text

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
@click.option("--diameter", "diameter_nm", callback=parse_size, metavar="SIZE",
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
    import numpy as np

    from .. import plugins
    from ..io import read_structure, write_xy

    sims = plugins.get_simulators()  # xrd, pdf, debye: the built-in plugin diffpy_diffusion.builtins.simulators
    reg = sims.get(kind.lower())
    if reg is None:
        errs = [e for e in plugins.plugin_errors() if "simulator" in e or "'simulators'" in e]
        raise click.BadParameter(f"unknown simulator {kind!r}; available: {', '.join(sorted(sims)) or 'none'}"
                                 + (f" ({errs[0]})" if errs else ""), param_hint="--kind")
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
    obs = reg.obj(s, x=x, **params)
    if output is not None:
        col = {"2theta": "2theta_deg", "q": "Q_invA", "r": "r_A"}[obs.x_kind]
        ycol = "G_invA2" if obs.kind == "pdf" else "intensity"
        write_xy(obs.x, obs.y, output, header=f"simulated by diffpy-diffuse {__version__} from {structure}\n"
                 + "\n".join(f"{k} = {v}" for k, v in params.items()), columns=(col, ycol), force=force)
    if plot is not None:
        if plot:
            save_plot(obs, Path(plot), force)
        elif output is not None:
            save_plot(obs, Path(output).with_suffix(".png"), force)
        else:
            raise click.BadParameter("give a PNG path (--plot out.png) or -o", param_hint="--plot")
    summary = {"structure": str(structure), "kind": obs.kind, "x_kind": obs.x_kind, "points": len(obs.x),
               "x_min": float(obs.x[0]), "x_max": float(obs.x[-1]), "output": str(output) if output else None}
    if as_json:
        from ..io.writers import to_json_text

        click.echo(to_json_text(summary), nl=False)
    elif not quiet:
        click.echo(f"{obs.kind} pattern of {structure.name}: {summary['points']} points, "
                   f"{obs.x_kind} {summary['x_min']:g}..{summary['x_max']:g}"
                   + (f" -> {output}" if output else ""))


def save_plot(obs, path: Path, force: bool) -> None:
    """A PNG of a simulated pattern (matplotlib, Agg), written atomically."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

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
@click.option("--phase", "phases", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE.cif", help="Known extra (impurity) phase refined alongside: scale, cell, size. Repeatable.")
@click.option("--peak-model", type=click.Choice(["rietveld", "basic"]), default="rietveld", show_default=True,
              help="PXRD profile: rietveld (Thompson-Cox-Hastings, axial asymmetry, specimen displacement, "
                   "March-Dollase preferred orientation) or basic (pseudo-Voigt and Scherrer size).")
@click.option("--size-shape", type=click.Choice(["auto", "scherrer", "gauss", "sinc2"]), default=None,
              help="PXRD: shape of the size broadening (FWHM 2πK/L): scherrer (Lorentzian), gauss (Gaussian), "
                   "sinc2 (Laue function of a finite crystal), or auto: whichever fits best once cell and size "
                   "are refined. Default: auto with --peak-model basic, scherrer with rietveld (its TCH widths "
                   "describe measured shapes).")
@instrument_option
@click.option("--save-instrument", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE",
              help="DATA is a line-profile standard (Si, LaB6...) and STRUCTURE its certified cell, held "
                   "fixed: refine the instrument profile (zero, U V W X Y, asymmetry) and write it with the "
                   "wavelengths to FILE, for --instrument.")
@output_option(None, "Folder for the refined CIF/.stru, results.json and plot.")
@force_option
@json_option
@quiet_option
@debug_option
def refine(data, structure, composition, wavelength, radiation, size_nm, x_kind, engine, phases, peak_model,
           size_shape, instrument, save_instrument, output, force, as_json, quiet):
    """Refine the structure in STRUCTURE against the pattern in DATA (srfit).

    \b
    Example:
      diffpy-diffuse refine ni.gr ni.cif -o ni_fit/
      diffpy-diffuse refine sample.xy main.cif --phase MgO.cif -o fit/
      diffpy-diffuse refine LaB6.xy LaB6.cif --save-instrument lab.instr
      diffpy-diffuse refine sample.xy main.cif --instrument lab.instr -o fit/
    """
    from ..pipeline import refine_file

    if instrument is not None and peak_model == "basic":
        raise click.UsageError("--instrument holds the Rietveld instrument profile; it cannot be used with "
                               "--peak-model basic")
    refine_file(data, structure, composition=composition, wavelength=wavelength, radiation=radiation,
                size_nm=size_nm, x_kind=x_kind, engine=engine, output_dir=output, force=force,
                as_json=as_json, quiet=quiet, phases=list(phases), instrument=peak_model,
                instrument_file=instrument, save_instrument=save_instrument, size_kernel=size_shape)


# --------------------------------------------------------------------------- evaluate


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--dataset", default="mp20-test", show_default=True,
              help="Benchmark set: mp20-test (first 1,000 rows of mp20/test.csv.gz), pool-val (the training "
                   "pool's validation split, for choosing settings), or a CSV with a cif column.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the shared data sets (default: $DIFFPY_DIFFUSION_DATA).")
@click.option("--limit", type=click.IntRange(1, None), default=100, show_default=True,
              help="Number of structures to evaluate (first N of the set).")
@size_option
@wavelength_option
@backend_option()
@n_option(128)
@top_option(10)
@seed_option
@click.option("--library", default=None, metavar="NAME|PATH",
              help="Template library of the templates backend: pool (default: the training pool's "
                   "structures, shipped with the package), aflow (pymatgen's AFLOW prototypes), "
                   "training-pool (indexed from $DIFFPY_DIFFUSION_DATA), or a folder of CIFs / a CSV.")
@backend_options_option()
@click.option("--refine-top", type=click.IntRange(0, None), default=1, show_default=True,
              help="Refine only the best this many of --top (of each backend for a+b); matches are counted "
                   "among all --top. "
                   "(First 10 targets at 10 nm: refining all 10 left the diffusion top-10 rate unchanged "
                   "and doubled the time; raising --n from 32 to 128 tripled it.)")
@click.option("--xrd", "data_kind", flag_value="xrd", default=True,
              help="Evaluate on simulated PXRD patterns (default).")
@click.option("--pdf", "data_kind", flag_value="pdf",
              help="Evaluate on x-ray G(r) of spherical particles (--size, default 5nm) cut from each target: "
                   "Debye pair sum, Qmax 20 1/Å, Qdamp 0.04 1/Å, r 1-30 Å, noise (see docs/benchmarks.rst).")
@click.option("--simulator", type=click.Choice(["builtin", "pymatgen"]), default="builtin", show_default=True,
              help="PXRD only: who simulates the patterns: our forward model, or pymatgen's XRDCalculator peaks "
                   "with Scherrer Gaussians (an independent code; benchmarks/independent_patterns.py compares).")
@relax_option
@no_energy_option
@no_condition_option
@click.option("--raw-match", is_flag=True,
              help="Also match every raw proposal of each backend against the truth: the table adds the "
                   "raw-match rate (what screening and ranking could at best keep).")
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
             data_kind, simulator, relax, no_condition, raw_match, workers, dask_scheduler, output, force, resume,
             as_json, quiet):
    """Benchmark a backend on simulated patterns of known structures (match rate, RMSE, Rwp, time).

    Candidates are ranked as propose ranks them: with an energy plugin installed
    (diffpy-diffusion-chgnet) by its energy-aware rule, with --no-energy by the fit alone.
    """
    from ..evaluate import run_evaluation

    run_evaluation(dataset=dataset, data_dir=data_dir, limit=limit, size_nm=size_nm, wavelength=wavelength,
                   # evaluate compares comma-separated backends one by one (a+b still merges)
                   backend=",".join(resolve_backend(b, quiet or as_json) for b in backend.split(",") if b.strip()),
                   n=n, top=top, seed=seed, output_dir=output, force=force, as_json=as_json, quiet=quiet,
                   workers=workers, resume=resume,
                   library=library, refine_top=refine_top,
                   backend_options=merge_pdf_condition(backend_options, no_condition),
                   relax=relax, data_kind=data_kind, simulator=simulator, raw_match=raw_match,
                   **({"scheduler": dask_scheduler} if dask_scheduler else {}))
