"""The ``diffpy-diffuse`` command line.

Modules, one job each:

- :mod:`.group` -- the top-level click group: errors a user can cause
  (:class:`~diffpy_diffusion.errors.DiffpyDiffusionError`, ``ValueError`` from input checks,
  missing files) print one line and exit with status 2, ``--debug`` shows the traceback;
  plugin commands are loaded lazily;
- :mod:`.options` -- the option decorators every command shares (:func:`composition_option`,
  :func:`wavelength_option`, ...); scripts and plugin commands depend on these names;
- :mod:`.choice` -- the backend-choice policy (what ``--backend auto`` means);
- :mod:`.commands` -- ``propose``, ``propose-batch``, ``simulate``, ``refine``, ``evaluate``;
- :mod:`.listing` -- ``backends`` and ``plugins``;
- :mod:`.show` -- what ``propose`` prints.

``train`` and ``bench`` are optional commands added by the built-in plugin
:mod:`diffpy_diffusion.builtins.commands` through the ``register_commands`` hook.
Importing this package never imports torch.
"""

from __future__ import annotations

import sys

from . import commands, listing  # noqa: F401 - registers the core commands on the group
from .choice import backend_available, diffusion_weights_available, resolve_backend
from .group import BUILTIN_COMMANDS, CONTEXT_SETTINGS, DiffuseGroup, cli, not_available, notice
from .options import (
    OptionValueError,
    backend_option,
    backend_options_option,
    composition_option,
    debug_option,
    force_option,
    json_option,
    n_option,
    output_option,
    parse_backend_options,
    quiet_option,
    radiation_option,
    seed_option,
    size_option,
    top_option,
    wavelength_option,
    x_option,
)

__all__ = [
    "cli", "main", "DiffuseGroup", "BUILTIN_COMMANDS", "CONTEXT_SETTINGS", "OptionValueError", "not_available",
    "notice", "resolve_backend", "backend_available", "diffusion_weights_available", "parse_backend_options",
    "debug_option", "quiet_option", "json_option", "composition_option", "wavelength_option", "radiation_option",
    "size_option", "x_option", "backend_option", "backend_options_option", "n_option", "top_option",
    "seed_option", "output_option", "force_option",
]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``diffpy-diffuse``)."""
    cli.main(args=argv, prog_name="diffpy-diffuse")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
