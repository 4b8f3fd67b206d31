"""Built-in plugin ``commands``: the optional commands ``train`` and ``bench``.

They are added through ``register_commands`` like a third-party plugin's commands (so
``DIFFPY_DIFFUSION_DISABLE_PLUGINS=commands`` removes them).  ``train`` hands its
arguments to :func:`diffpy_diffusion.backends.diffusion.train.main` (argparse: ``diffpy-diffuse
train --help`` shows its options); ``bench`` times the forward models.
"""

from __future__ import annotations

import click

from ..hookspecs import hookimpl


def _train_command() -> click.Command:
    @click.command("train", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                              "help_option_names": []})
    @click.pass_context
    def train(ctx):
        """Train the diffusion backend (options: 'diffpy-diffuse train --help').

        \b
        Example:
          diffpy-diffuse train --data "$DIFFPY_DIFFUSION_DATA" --out run1/
        """
        from ..backends.diffusion.train import main as train_main

        rc = train_main(list(ctx.args))
        if isinstance(rc, int) and rc:
            ctx.exit(rc)

    return train


def _bench_command() -> click.Command:
    from ..cli.options import debug_option, json_option, quiet_option

    @click.command("bench", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
        from ..physics.benchmark import format_report, run

        res = run(quick=quick)
        if as_json:
            from ..io.writers import to_json_text

            click.echo(to_json_text(res), nl=False)
        elif not quiet:
            click.echo(format_report(res))

    return bench


@hookimpl
def register_commands(cli):
    """Add ``train`` and ``bench`` to the ``diffpy-diffuse`` group."""
    cli.add_command(_train_command())
    cli.add_command(_bench_command())
