"""Sphinx configuration of the diffpy-diffusion documentation (``make docs``).

The build runs with ``-W`` (warnings are errors).  The CLI reference is generated
from the click application (sphinx-click), so it cannot drift from ``--help``.
Two pages pull in files other people maintain, when they exist:

* ``model_card.md`` (the neural backend's model card, markdown via myst-parser);
* ``benchmarks/*.md`` (measured benchmark tables).

When such a file is missing the page says so in plain words instead of showing a
placeholder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import diffpy_diffusion  # noqa: E402
from diffpy_diffusion.cli import cli as diffuse_cli  # noqa: E402

# sphinx-click documents the commands the click group holds; the commands plugins add (the
# built-in plugin diffpy_diffusion.builtins.commands: train, bench) join it on first listing.
diffuse_cli.list_commands(None)

project = "diffpy-diffusion"
author = "the diffpy-diffusion authors"
copyright = "2026, the diffpy-diffusion authors"
release = version = diffpy_diffusion.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_click",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# model_card.md is included by model.rst (it may not exist yet); _build is output
exclude_patterns = ["_build", "model_card.md", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"diffpy-diffusion {release}"

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc sections carry the types
autodoc_mock_imports: list[str] = []
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]


def _md_include_lines(path: Path) -> list[str]:
    rel = os.path.relpath(path, DOCS)
    return [f".. include:: {rel}", "   :parser: myst_parser.sphinx_", ""]


class ModelCard(Directive):
    """Include ``docs/model_card.md`` when it exists, else say that it is not written yet."""

    has_content = False

    def run(self):
        card = DOCS / "model_card.md"
        env = self.state.document.settings.env
        if card.is_file():
            env.note_dependency(str(card))
            self.state_machine.insert_input(_md_include_lines(card), str(card))
            return []
        para = nodes.paragraph(text=(
            "The model card of the neural backend is not written yet: it is published together with "
            "the trained weights. Until then the default backend falls back to the 'templates' and "
            "'random' baselines (see 'diffpy-diffuse backends')."))
        return [para]


class BenchmarkTables(Directive):
    """Include every ``benchmarks/*.md`` table file (sorted), or state that nothing is measured yet."""

    has_content = False
    option_spec = {"pattern": directives.unchanged}

    def run(self):
        pattern = self.options.get("pattern", "*.md")
        files = sorted((ROOT / "benchmarks").glob(pattern))
        env = self.state.document.settings.env
        if not files:
            return [nodes.paragraph(text=(
                "To be measured: no benchmark table has been recorded in benchmarks/ for this release. "
                "The commands above produce them."))]
        lines: list[str] = []
        for f in files:
            env.note_dependency(str(f))
            lines += _md_include_lines(f)
        self.state_machine.insert_input(lines, str(files[0]))
        return []


def setup(app):
    app.add_directive("model-card", ModelCard)
    app.add_directive("benchmark-tables", BenchmarkTables)
    return {"parallel_read_safe": True}
