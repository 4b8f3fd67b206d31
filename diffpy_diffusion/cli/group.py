"""The top-level ``diffpy-diffuse`` group: error policy (one line, exit 2) and plugin commands."""

from __future__ import annotations

import os

import click

from .. import __version__
from ..errors import DiffpyDiffusionError, NotAvailableError
from ..threads import THREAD_VARS, set_threads

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Commands listed first in ``--help``, in this order; ``train`` and ``bench`` come from the
#: built-in plugin :mod:`diffpy_diffusion.builtins.commands`, the rest from this package.
BUILTIN_COMMANDS = ("propose", "propose-batch", "simulate", "refine", "train", "evaluate", "backends", "plugins",
                    "bench")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its class name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def debug_enabled(ctx: click.Context | None) -> bool:
    """``--debug`` was given (or ``DIFFPY_DIFFUSION_DEBUG`` is set): show tracebacks."""
    if os.environ.get("DIFFPY_DIFFUSION_DEBUG"):
        return True
    return bool(ctx is not None and ctx.meta.get("diffpy_diffusion.debug"))


def not_available(feature: str, issue: str) -> NotAvailableError:
    """The error a command raises while its engine is not in this installation yet."""
    return NotAvailableError(f"{feature} is not available yet in diffpy-diffusion {__version__} "
                             f"(it lands with {issue})")


def notice(msg: str, quiet: bool = False) -> None:
    """Print a notice on stderr (suppressed by --quiet)."""
    if not quiet:
        click.echo(msg, err=True)


class DiffuseGroup(click.Group):
    """Click group that turns user errors into one line + exit 2 and loads plugin commands lazily."""

    _plugins_loaded = False

    def _load_plugin_commands(self, ctx) -> None:
        if DiffuseGroup._plugins_loaded:
            return
        DiffuseGroup._plugins_loaded = True
        from .. import plugins

        # a plugin that fails in register_commands is recorded in plugins.plugin_errors()
        # (``diffpy-diffuse plugins`` shows it); the other commands keep working
        plugins.add_plugin_commands(self)

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
            if debug_enabled(ctx):
                raise
            if isinstance(exc, OSError) and exc.filename:
                msg = f"{exc.filename}: {exc.strerror or one_line(exc)}"
            else:
                msg = one_line(exc)
            click.echo(f"Error: {msg}" + ("" if isinstance(exc, NotAvailableError) else
                                           "  (--debug shows the traceback)"), err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            if debug_enabled(ctx):
                raise
            click.echo("Interrupted." + (f" {one_line(exc)}" if str(exc) else ""), err=True)
            ctx.exit(130)
        except Exception as exc:
            from ..pipeline import hides_interrupt

            if debug_enabled(ctx) or not hides_interrupt(exc):
                raise
            click.echo("Interrupted.", err=True)  # a Ctrl-C that a library turned into another error
            ctx.exit(130)


def _set_debug(ctx, param, value):
    if value:
        ctx.meta["diffpy_diffusion.debug"] = True
    return value


def debug_option(f):
    """``--debug``: show tracebacks (also ``DIFFPY_DIFFUSION_DEBUG=1``)."""
    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show the full traceback on errors.")(f)


#: Environment variable for the threads option (``--threads``).
THREADS_ENV = "DIFFPY_DIFFUSION_THREADS"


def _apply_threads(ctx, param, value):
    if value is None:
        if any(os.environ.get(v) for v in THREAD_VARS):
            return value  # the user's OMP_NUM_THREADS/... stand
        value = 1
    set_threads(int(value))
    return value


@click.group(cls=DiffuseGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="diffpy-diffuse")
@click.option("--threads", type=click.IntRange(1, 256), default=None, envvar=THREADS_ENV, expose_value=False,
              is_eager=True, callback=_apply_threads, metavar="N",
              help="torch/BLAS threads per process [default: 1, or OMP_NUM_THREADS when set; also "
                   "$DIFFPY_DIFFUSION_THREADS]. The tensors here are small: more threads rarely help, and "
                   "on a machine doing anything else they spin against each other (propose on the demo "
                   "pattern, loaded 2-core machine: 52 s with 1 thread, 122 s with 2). Parallel work "
                   "uses processes (--workers) and, within propose, threads for the screen's independent "
                   "candidates ($DIFFPY_DIFFUSION_WORK_THREADS, default: the usable CPUs, at most 4). "
                   "'train' has its own --threads.")
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
