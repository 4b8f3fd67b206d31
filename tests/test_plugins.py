"""Plugin discovery: built-ins, entry points, allow/deny lists, broken and duplicate plugins."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import sys
import textwrap

import pytest

from diffpy_diffusion import hookspecs, plugins
from diffpy_diffusion.errors import BackendError


def _fake_entry_points(monkeypatch, tmp_path, modules: dict[str, str], eps: list[tuple[str, str]],
                       keep_real: bool = True):
    """Install modules from source into tmp_path and add entry points for them."""
    for name, src in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(tmp_path))
    real = md.entry_points

    def entry_points(**kw):
        found = list(real(**kw)) if keep_real else []
        if kw.get("group") == plugins.ENTRY_POINT_GROUP:
            found += [md.EntryPoint(n, v, plugins.ENTRY_POINT_GROUP) for n, v in eps]
        return found

    monkeypatch.setattr(md, "entry_points", entry_points)
    for name in modules:
        sys.modules.pop(name, None)


GOOD = """
from diffpy_diffusion import hookimpl

class Thing:
    '''A test backend.'''
    name = "thing"
    version = "9.9"
    capabilities = {"composition", "xrd"}
    def __init__(self, **kw):
        self.kw = kw
    def sample(self, observation, n, *, seed=None, progress=None):
        return []

@hookimpl
def register_backends(register):
    register("thing", Thing)
"""

DUPLICATE = """
from diffpy_diffusion import hookimpl
from tp_good import Thing

@hookimpl
def register_backends(register):
    register("thing", Thing)      # taken by tp_good
    register("thing2", Thing)     # fine
"""

RAISES = """
from diffpy_diffusion import hookimpl

@hookimpl
def register_backends(register):
    raise RuntimeError("no GPU\\nsecond line")
"""


def test_builtins_registered_via_hooks(fresh_plugins):
    names = plugins.backend_names()
    for mod in plugins.BUILTIN_PLUGINS:
        short = mod.rsplit(".", 1)[-1]
        info = plugins.plugin_info().get(short)
        if info is not None:
            assert info["builtin"] is True
    # every registered backend has a plugin name and capabilities from the allowed set
    for row in plugins.list_backends(instantiate=False):
        assert row["name"] in names
        assert set(row["capabilities"]) <= {"composition", "xrd", "pdf", "spacegroup"}


def test_missing_builtin_module_is_tolerated(fresh_plugins, monkeypatch):
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", ["diffpy_diffusion.backends.does_not_exist"])
    plugins.reset()
    assert plugins.plugin_errors() == [] or all("does_not_exist" not in e for e in plugins.plugin_errors())


def test_entry_point_plugin(fresh_plugins, monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {"tp_good": GOOD}, [("good", "tp_good")])
    plugins.reset()
    rows = {r["name"]: r for r in plugins.list_backends()}
    assert rows["thing"]["plugin"] == "good"
    assert rows["thing"]["version"] == "9.9"
    assert rows["thing"]["capabilities"] == ["composition", "xrd"]
    assert rows["thing"]["description"] == "A test backend."
    b = plugins.get_backend("thing", temperature=2)
    assert b.kw == {"temperature": 2}


def test_deny_list(fresh_plugins, monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {"tp_good": GOOD}, [("good", "tp_good")])
    monkeypatch.setenv(plugins.ENV_DENY, "good, random")
    plugins.reset()
    names = plugins.backend_names()
    assert "thing" not in names and "random" not in names


def test_allow_list(fresh_plugins, monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {"tp_good": GOOD}, [("good", "tp_good")])
    monkeypatch.setenv(plugins.ENV_ALLOW, "good")
    plugins.reset()
    assert plugins.backend_names() == ["thing"]
    monkeypatch.setenv(plugins.ENV_ALLOW, "")
    plugins.reset()
    assert plugins.backend_names() == []


def test_broken_plugin_one_line_others_work(fresh_plugins, monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {"tp_good": GOOD, "tp_syntax": "def broken(:\n"},
                       [("good", "tp_good"), ("syntax", "tp_syntax"), ("missing", "tp_no_such_module")])
    plugins.reset()
    assert "thing" in plugins.backend_names()
    errs = plugins.plugin_errors()
    assert any("'syntax'" in e and "SyntaxError" in e for e in errs), errs
    assert any("'missing'" in e and "tp_no_such_module" in e for e in errs), errs
    assert all("\n" not in e for e in errs)


def test_hook_that_raises(fresh_plugins, monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {"tp_good": GOOD, "tp_raises": RAISES},
                       [("good", "tp_good"), ("raises", "tp_raises")])
    plugins.reset()
    assert "thing" in plugins.backend_names()
    errs = [e for e in plugins.plugin_errors() if "'raises'" in e]
    assert len(errs) == 1 and "RuntimeError: no GPU second line" in errs[0]


def test_duplicate_backend_name(fresh_plugins, monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {"tp_good": GOOD, "tp_dup": DUPLICATE},
                       [("good", "tp_good"), ("zdup", "tp_dup")])
    plugins.reset()
    assert plugins.get_backend_registration("thing").plugin == "good"
    assert plugins.get_backend_registration("thing2").plugin == "zdup"
    errs = plugins.plugin_errors()
    assert any("'zdup'" in e and "'thing'" in e and "already registered" in e for e in errs), errs


def test_unknown_backend_lists_installed(fresh_plugins):
    with pytest.raises(BackendError, match="installed backends"):
        plugins.get_backend("no-such-backend")


def test_readers_hook_overrides_extension(fresh_plugins, monkeypatch, tmp_path):
    src = """
    import numpy as np
    from diffpy_diffusion import hookimpl
    from diffpy_diffusion.types import Observation

    def read_foo(path, **kw):
        return Observation(kind="xrd", x=np.arange(3.0) + 1, y=np.ones(3), x_kind="q", source=str(path))

    @hookimpl
    def register_readers(register):
        register("foo", read_foo, extensions=(".foo",))
    """
    _fake_entry_points(monkeypatch, tmp_path, {"tp_reader": src}, [("reader", "tp_reader")])
    plugins.reset()
    from diffpy_diffusion.io import read_observation

    f = tmp_path / "data.foo"
    f.write_text("anything")
    assert read_observation(f).x_kind == "q"


def test_pdf_calculator_firstresult(fresh_plugins, monkeypatch, tmp_path):
    src = """
    from diffpy_diffusion import hookimpl

    def calc(structure, r, **params):
        return r * 0

    @hookimpl
    def pdf_calculator(kind):
        return calc if kind == "pdf" else None
    """
    _fake_entry_points(monkeypatch, tmp_path, {"tp_calc": src}, [("calc", "tp_calc")])
    plugins.reset()
    assert plugins.get_pdf_calculator("pdf").__name__ == "calc"
    assert plugins.get_pdf_calculator("debye") is None


def test_rerank_scores(fresh_plugins, monkeypatch, tmp_path):
    src = """
    from diffpy_diffusion import hookimpl

    @hookimpl
    def rerank(observation, proposals):
        return {"extra": [float(i) for i in range(len(proposals))]}
    """
    _fake_entry_points(monkeypatch, tmp_path, {"tp_rerank": src}, [("rr", "tp_rerank")])
    plugins.reset()
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.types import Proposal

    props = [Proposal(Structure(Lattice.cubic(3), ["Ni"], [[0, 0, 0]]), "x") for _ in range(3)]
    plugins.call_rerank(None, props)
    assert [p.scores["extra"] for p in props] == [0.0, 1.0, 2.0]


def test_hookspecs_are_documented():
    specs = [f for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(f, "diffpy_diffusion_spec")]
    names = {f.__name__ for f in specs}
    assert names == {"register_backends", "register_readers", "register_simulators", "pdf_calculator",
                     "rerank", "register_commands", "recipe_seeded"}
    for f in specs:
        doc = inspect.getdoc(f) or ""
        assert len(doc) > 200 and "Parameters" in doc, f.__name__
