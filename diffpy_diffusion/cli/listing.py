"""The listing commands: ``backends`` (structure proposers) and ``plugins`` (everything registered)."""

from __future__ import annotations

import sys

import click

from .group import CONTEXT_SETTINGS, cli
from .options import debug_option, json_option


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


@cli.command(context_settings=CONTEXT_SETTINGS)
@json_option
@debug_option
def backends(as_json):
    """List installed structure backends with their plugin, version and capabilities.

    Select plugins with DIFFPY_DIFFUSION_PLUGINS=a,b (allow-list) or
    DIFFPY_DIFFUSION_DISABLE_PLUGINS=a,b.
    """
    from .. import plugins

    rows = plugins.list_backends()
    errors = plugins.plugin_errors()
    if as_json:
        from ..io.writers import to_json_text

        click.echo(to_json_text({"backends": rows, "plugins": plugins.plugin_info(), "errors": errors}),
                   nl=False)
        return
    from rich.table import Table

    con = _console()
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


@cli.command("plugins", context_settings=CONTEXT_SETTINGS)
@json_option
@debug_option
def plugins_command(as_json):
    """List the loaded plugins, their modules and what each registers.

    The built-in readers, simulators, PDF calculator, optional commands and backends are
    plugins too (modules diffpy_diffusion.builtins.* and diffpy_diffusion.backends.*).
    Select plugins with DIFFPY_DIFFUSION_PLUGINS=a,b (allow-list) or
    DIFFPY_DIFFUSION_DISABLE_PLUGINS=a,b.
    """
    from .. import plugins

    root = click.get_current_context().find_root()
    root.command.list_commands(root)  # loads the plugin commands (once per process)
    rows = plugins.list_plugins(root.command)
    errors = plugins.plugin_errors()
    if as_json:
        from ..io.writers import to_json_text

        click.echo(to_json_text({"plugins": rows, "errors": errors}), nl=False)
        return
    from rich.table import Table

    table = Table(title="diffpy-diffusion plugins")
    table.add_column("plugin", style="bold", no_wrap=True)
    table.add_column("module", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("registers")
    for r in rows:
        what = [f"{kind}: {', '.join(r[kind])}" for kind in ("backends", "readers", "simulators", "commands")
                if r[kind]]
        what += [h for h in r["hooks"] if h in ("pdf_calculator", "rerank", "rank_candidates", "relax_proposals",
                                                "recipe_seeded")]
        version = r["version"] + ("" if not r["builtin"] else " (built-in)")
        table.add_row(r["name"], r["module"], version, "; ".join(what) or "-")
    con = _console()
    con.print(table)
    for e in errors:
        click.echo(f"plugin error: {e}", err=True)
