"""Option decorators shared by the commands, so every command spells an option the same way.

Scripts and plugin commands depend on these names (:func:`composition_option`,
:func:`wavelength_option`, ...).  Values are validated by the same parsers the Python API
uses; a bad value is one ``Error:`` line and exit status 2 (:class:`OptionValueError`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .group import debug_option

__all__ = [
    "OptionValueError", "instrument_option", "debug_option", "quiet_option", "json_option", "composition_option",
    "wavelength_option",
    "radiation_option", "size_option", "x_option", "backend_option", "backend_options_option", "n_option",
    "top_option", "seed_option", "output_option", "force_option", "parse_backend_options", "parse_size",
    "merge_library", "merge_pdf_condition", "no_condition_option", "pdf_options", "no_energy_option",
    "relax_option", "ENERGY_ENV",
]

#: The energy plugin's documented switch (plugins/diffpy-diffusion-chgnet, docs/energy.rst): ``off``
#: makes it add no scores and leave the order alone.  Read by the plugin at each hook call, so
#: worker processes (``--workers``) inherit it.
ENERGY_ENV = "DIFFPY_DIFFUSION_ENERGY"


class OptionValueError(click.BadParameter):
    """A bad option value (composition, wavelength, size): one ``Error:`` line, exit status 2.

    Click's usage block would bury the one line that says what is wrong.
    """

    def show(self, file=None) -> None:
        """Print ``Error: Invalid value for '--option': <what is wrong>`` on stderr."""
        click.echo(f"Error: {' '.join(self.format_message().split())}", file=file, err=file is None)


def _set_quiet(ctx, param, value):
    if value:
        ctx.meta["diffpy_diffusion.quiet"] = True
    return value


def _parse_composition(ctx, param, value):
    if value is None:
        return None
    from ..types import parse_composition

    try:
        parse_composition(value)
    except ValueError as exc:
        raise OptionValueError(str(exc)) from None
    return value


def _parse_wavelength(ctx, param, value):
    if value is None:
        return None
    from ..io.units import parse_wavelength

    try:
        return parse_wavelength(value)
    except ValueError as exc:
        raise OptionValueError(str(exc)) from None


def parse_size(ctx, param, value):
    """Click callback: ``3nm``, ``30A`` or a number (nm) -> size in nm (float), or None."""
    if value is None:
        return None
    from ..io.units import parse_size_nm

    try:
        return parse_size_nm(value)
    except ValueError as exc:
        raise OptionValueError(str(exc)) from None


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
    return click.option("--size", "size_nm", callback=parse_size, metavar="SIZE",
                        help="Crystallite (XRD) or particle (PDF) diameter: 3nm, 30A, or a number in nm.")(f)


def x_option(f):
    """``--x 2theta|q|r``: what the first data column is (value ``x_kind``)."""
    return click.option("--x", "x_kind", type=click.Choice(["2theta", "q", "r"]), default=None,
                        help="What column 1 of the data is: 2theta (degrees), q (1/Å) or r (Å, PDF). "
                             "Default: detected from the header.")(f)


def backend_option(default: str = "auto"):
    """``--backend``: name, comma list, or ``a+b`` merge."""
    return click.option("--backend", "-b", default=default, show_default=True, metavar="NAME[,NAME]",
                        help="Structure proposer(s); see 'diffpy-diffuse backends'. 'auto' = diffusion+templates "
                             "(the diffusion model merged with the shipped template library: the best "
                             "combination measured, see the model card) when the model's weights are "
                             "installed, else the best available baseline. 'a+b' merges the candidates "
                             "of two backends.")


def parse_backend_options(ctx, param, values):
    """``-O KEY=VALUE`` / ``-O BACKEND.KEY=VALUE`` (repeatable) -> backend_options dict.

    VALUE is read as JSON when it parses (``1``, ``0.5``, ``true``, ``"x"``), else kept as text.
    """
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
                        callback=parse_backend_options,
                        help="Option for the backends (repeatable), e.g. -O corrector_steps=0, "
                             "-O diffusion.cfg_scale=2, -O diffusion.checkpoint=runs/x/last.pt. A plain KEY goes "
                             "to every backend that takes it. See the backend's docstring for its options.")


def merge_library(backend_options: dict | None, library: str | None) -> dict | None:
    """``--library NAME`` as the backends' ``library`` option (the templates backend reads it)."""
    if not library:
        return backend_options
    return {**(backend_options or {}), "library": library}


def pdf_options(f):
    """``--qmax`` and ``--qdamp`` of a G(r) whose file header does not give them."""
    f = click.option("--qdamp", type=click.FloatRange(0, 1), default=None, metavar="1/Å",
                     help="PDF data: instrumental Q damping (PDFgui's qdamp), refined from this start; default "
                          "from the file header, else refined from 0.")(f)
    return click.option("--qmax", type=click.FloatRange(0.5, 100, min_open=False), default=None, metavar="1/Å",
                        help="PDF data: the Qmax the G(r) was transformed with (termination ripples); default "
                             "from the file header. A value that contradicts the header is an error.")(f)


def no_condition_option(f):
    """``--no-condition``: PDFs sampled without the pattern condition (the diffusion backend's ``pdf_condition``)."""
    return click.option("--no-condition", "no_condition", is_flag=True,
                        help="PDF data: sample the diffusion model without the pattern condition (the behaviour "
                             "before it was conditioned on the powder pattern a G(r) implies), for comparison. "
                             "Same as -O diffusion.pdf_condition=false.")(f)


def merge_pdf_condition(backend_options: dict | None, no_condition: bool) -> dict | None:
    """``--no-condition`` as the diffusion backend's ``pdf_condition=False`` (flat and per-backend forms)."""
    if not no_condition:
        return backend_options
    opts = {**(backend_options or {}), "pdf_condition": False}
    if isinstance(opts.get("diffusion"), dict):
        opts["diffusion"] = {**opts["diffusion"], "pdf_condition": False}
    return opts


def n_option(default: int = 200):
    """``--n``: raw candidates to generate."""
    return click.option("--n", "-n", "n", type=click.IntRange(1, 100000), default=default, show_default=True,
                        help="Number of raw candidates to generate.")


def top_option(default: int = 5):
    """``--top``: candidates to refine and report."""
    return click.option("--top", type=click.IntRange(1, 1000), default=default, show_default=True,
                        help="Number of candidates to refine and report.")


def seed_option(f):
    """``--seed``: random seed (int)."""
    return click.option("--seed", type=int, default=0, show_default=True,
                        help="Random seed; the same seed and inputs give the same candidates.")(f)


def output_option(default: str | None = None, help: str = "Output folder or file."):
    """``-o/--output``: a Path."""
    return click.option("-o", "--output", type=click.Path(path_type=Path), default=default,
                        show_default=default is not None, help=help)


def force_option(f):
    """``-f/--force``: overwrite existing outputs."""
    return click.option("--force", "-f", is_flag=True,
                        help="Overwrite existing output files (otherwise an existing file is an error).")(f)



def _set_no_energy(ctx, param, value):
    if value:
        os.environ[ENERGY_ENV] = "off"  # before any hook runs; inherited by worker processes
    return value


def no_energy_option(f):
    """``--no-energy``: sets ``DIFFPY_DIFFUSION_ENERGY=off`` (the energy plugin's switch); not passed on."""
    return click.option("--no-energy", is_flag=True, expose_value=False, is_eager=True, callback=_set_no_energy,
                        help="Rank by the fit to the data alone: the energy plugin (diffpy-diffusion-chgnet, "
                             "if installed) adds no CHGNet energies and does not reorder the candidates. "
                             "Same as DIFFPY_DIFFUSION_ENERGY=off; DIFFPY_DIFFUSION_ENERGY=scores keeps the "
                             "energies in the table but ranks by the fit.")(f)


def relax_option(f):
    """``--relax``: relax the raw proposals through the ``relax_proposals`` plugin hook (value ``relax``)."""
    return click.option("--relax", is_flag=True,
                        help="Relax the raw proposals with an installed plugin's interatomic potential before "
                             "screening (diffpy-diffusion-chgnet: CHGNet FIRE, at most 300 steps, cell volume "
                             "within 20 %; slow on a CPU, seconds per proposal: use a small --n). Without such "
                             "a plugin: an error.")(f)


def instrument_option(f):
    """``--instrument FILE``: an instrument parameter file (value: its path, read by the command)."""
    from pathlib import Path

    return click.option("--instrument", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        default=None, metavar="FILE",
                        help="Instrument parameter file (key = value: wavelengths, U V W X Y, asymmetry, zero, "
                             "polarisation), e.g. written by refine --save-instrument on Si or LaB6: the "
                             "instrument profile is taken from it and held fixed (PXRD).")(f)
