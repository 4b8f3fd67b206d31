"""Plugin discovery: built-ins, entry points, allow/deny lists, broken and duplicate plugins."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import sys
import textwrap

import numpy as np
import pytest

from diffpy_diffusion import hookspecs, plugins
from diffpy_diffusion.errors import BackendError
from diffpy_diffusion.testing import ReaderContract, SimulatorContract, check_pdf_calculator


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
    """Every built-in module is a plugin named after it, loaded like an entry point, with no errors."""
    info = plugins.plugin_info()
    for mod in plugins.BUILTIN_PLUGINS:
        short = mod.rsplit(".", 1)[-1]
        assert info[short] == {"module": mod, "version": info[short]["version"], "dist": "diffpy-diffusion",
                               "builtin": True}
    assert plugins.plugin_errors() == []
    names = plugins.backend_names()
    # every registered backend has a plugin name and capabilities from the allowed set
    for row in plugins.list_backends(instantiate=False):
        assert row["name"] in names
        assert set(row["capabilities"]) <= {"composition", "xrd", "pdf", "spacegroup"}
    owners = {r.name: (r.plugin, info[r.plugin]["module"]) for r in plugins.get_readers().values()}
    assert owners["xy"] == ("readers", "diffpy_diffusion.builtins.readers")
    assert {n: r.plugin for n, r in plugins.get_simulators().items()}.items() >= {
        "xrd": "simulators", "pdf": "simulators", "debye": "simulators"}.items()
    assert plugins.get_backend_registration("random").plugin == "random"


def test_every_hookspec_has_a_builtin_or_says_why(fresh_plugins):
    pm = plugins.get_plugin_manager()
    builtin = {n for n, i in plugins.plugin_info().items() if i["builtin"]}
    for name in ("register_backends", "register_readers", "register_simulators", "pdf_calculator",
                 "rerank", "rank_candidates", "relax_proposals", "register_commands", "recipe_seeded"):
        impls = {impl.plugin_name for impl in getattr(pm.hook, name).get_hookimpls()}
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert impls & builtin or "No built-in implementation" in doc, name


def test_missing_builtin_module_is_reported_and_others_work(fresh_plugins, monkeypatch):
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", ["diffpy_diffusion.backends.does_not_exist",
                                                     "diffpy_diffusion.backends.random"])
    plugins.reset()
    errs = plugins.plugin_errors()
    assert any("'does_not_exist'" in e and "failed to load" in e for e in errs), errs
    assert "random" in plugins.backend_names()


def test_allow_list_keeps_core_builtins_deny_list_removes_them(fresh_plugins, monkeypatch):
    monkeypatch.setenv(plugins.ENV_ALLOW, "random")
    plugins.reset()
    assert plugins.backend_names() == ["random"]
    assert {"xy", "gr"} <= set(plugins.get_readers()) and "xrd" in plugins.get_simulators()
    monkeypatch.delenv(plugins.ENV_ALLOW)
    monkeypatch.setenv(plugins.ENV_DENY, "simulators")
    plugins.reset()
    assert "xrd" not in plugins.get_simulators() and "random" in plugins.backend_names()


def test_list_plugins_names_modules_and_contributions(fresh_plugins):
    rows = {r["name"]: r for r in plugins.list_plugins()}
    assert rows["readers"]["module"] == "diffpy_diffusion.builtins.readers"
    assert rows["readers"]["hooks"] == ["register_readers"]
    assert any(x.startswith("xy (.xy ") for x in rows["readers"]["readers"])
    assert rows["simulators"]["simulators"] == ["debye", "pdf", "xrd"]
    assert rows["pdf"]["hooks"] == ["pdf_calculator"]
    assert rows["templates"]["backends"] == ["templates"]
    assert rows["example"]["builtin"] is False


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


def test_plugin_reader_overrides_builtin_extension(fresh_plugins, monkeypatch, tmp_path):
    src = """
    import numpy as np
    from diffpy_diffusion import hookimpl
    from diffpy_diffusion.types import Observation

    def read_xy(path, **kw):
        return Observation(kind="xrd", x=np.arange(3.0) + 1, y=np.full(3, 7.0), x_kind="q", source=str(path))

    @hookimpl
    def register_readers(register):
        register("my-xy", read_xy, extensions=(".xy",))
    """
    _fake_entry_points(monkeypatch, tmp_path, {"tp_xy": src}, [("myxy", "tp_xy")])
    plugins.reset()
    from diffpy_diffusion.io import read_observation

    f = tmp_path / "data.xy"
    f.write_text("10 1\n11 2\n12 3\n")
    assert plugins.reader_for(".xy").plugin == "myxy"
    assert np.all(read_observation(f).y == 7.0)


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
    assert plugins.get_pdf_calculator("pdf").__name__ == "calc"  # a plugin's answer beats the built-in torch one
    assert plugins.get_pdf_calculator("debye") is None
    monkeypatch.setenv(plugins.ENV_DENY, "calc")
    plugins.reset()
    assert type(plugins.get_pdf_calculator("pdf")).__name__ == "TorchPDFCalculator"


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
                     "rerank", "rank_candidates", "relax_proposals", "register_commands", "recipe_seeded"}
    for f in specs:
        doc = inspect.getdoc(f) or ""
        assert len(doc) > 200 and "Parameters" in doc, f.__name__


# ----------------------------------------------------------------------------- contract kits


class TestXYReader(ReaderContract):
    reader_name = "xy"
    kind = "xrd"

    def write_sample(self, observation, directory):
        from diffpy_diffusion.io import write_xy

        return write_xy(observation.x, observation.y, directory / "sample.xy", columns=("2theta", "intensity"))


class TestGRReader(ReaderContract):
    reader_name = "gr"
    kind = "pdf"

    def write_sample(self, observation, directory):
        from diffpy_diffusion.io import write_xy

        return write_xy(observation.x, observation.y, directory / "sample.gr", columns=("r", "G"))


class TestObservationJSONReader(ReaderContract):
    reader_name = "observation-json"
    kind = "xrd"

    def write_sample(self, observation, directory):
        import dataclasses

        from diffpy_diffusion.io import write_json

        return write_json(dataclasses.asdict(observation), directory / "sample.json")


@pytest.mark.parametrize(("name", "params"), [("xrd", {"size_nm": 5.0}), ("pdf", {"qmax": 20.0}),
                                              ("debye", {"size_nm": 1.2})])
def test_builtin_simulators_pass_the_contract(name, params):
    class Contract(SimulatorContract):
        simulator_name = name

    Contract.params = params
    Contract().test_contract()


def test_builtin_pdf_calculator_passes_the_contract(fresh_plugins, monkeypatch):
    """The torch calculator answers through the hook (plugin ``pdf``) and agrees with pdffit2."""
    monkeypatch.setenv(plugins.ENV_DENY, "srreal")  # else srreal, where installed, answers first
    plugins.reset()
    calc = plugins.get_pdf_calculator("pdf")
    assert type(calc).__name__ == "TorchPDFCalculator"
    check_pdf_calculator(calc)


def test_srreal_plugin_passes_the_pdf_calculator_contract():
    plugin = pytest.importorskip("diffpy_diffusion_srreal.plugin")
    if not plugin.srreal_available():
        pytest.skip("diffpy.srreal is not installed (no pip wheel; conda install -c conda-forge diffpy.srreal)")
    check_pdf_calculator(plugin.pdf_calculator(kind="pdf"))
