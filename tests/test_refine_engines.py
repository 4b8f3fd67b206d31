"""pdffit2 engine, PDFgui output, calculator plug-in path and srfit 3.2/3.4 compatibility."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from diffpy_diffusion.types import Observation


@pytest.fixture
def ni(shared_data):
    from diffpy_diffusion.io import read_observation, read_structure

    d = shared_data / "measured" / "ni_xray_2008"
    if not (d / "ni-q27r60-xray.gr").exists():
        pytest.skip(f"{d} not found")
    obs = read_observation(d / "ni-q27r60-xray.gr", composition="Ni")
    m = (obs.x >= 1.5) & (obs.x <= 10.0)
    obs = Observation("pdf", obs.x[m], obs.y[m], "r", composition="Ni", sigma=obs.sigma[m], qmax=27.0,
                      source=str(d / "ni-q27r60-xray.gr"))
    return obs, read_structure(d / "ni.cif")


def test_pdffit2_engine_and_srfit_with_pdffit2_calculator_agree(ni):
    from diffpy_diffusion.refine import refine_structure

    obs, start = ni
    a = refine_structure(obs, start, engine="pdffit2")
    b = refine_structure(obs, start, engine="srfit", calculator="pdffit2")
    assert a.engine == "pdffit2" and b.engine == "srfit"
    assert b.rw == pytest.approx(a.rw, rel=0.02)
    assert b.params["a"]["value"] == pytest.approx(a.params["a"]["value"], abs=1e-3)
    assert a.params["a"]["esd"] > 0
    assert a.spacegroup == "Fm-3m" and len(a.structure) == 4


def test_pdffit2_script_runs_and_reproduces_rw(ni, tmp_path):
    from diffpy_diffusion.refine import refine_structure, write_refinement_files

    obs, start = ni
    res = refine_structure(obs, start, engine="pdffit2")
    files = write_refinement_files(res, obs, tmp_path, "rank01")
    assert files["stru"].exists() and files["script"].exists()
    # the script re-refines the refined .stru against the source file over the same range
    out = subprocess.run([sys.executable, files["script"].name], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    rw = float(next(ln for ln in out.stdout.splitlines() if ln.startswith("Rw =")).split("=")[1])
    assert rw == pytest.approx(res.rw, rel=0.05)
    assert (tmp_path / "rank01_refined.stru").exists()


def test_pdfgui_project_opens_in_pdfgui(ni, tmp_path):
    pytest.importorskip("diffpy.pdfgui.control.pdfguicontrol", reason="diffpy.pdfgui (optional extra) not installed")
    from diffpy.pdfgui.control.pdfguicontrol import PDFGuiControl

    from diffpy_diffusion.refine import refine_structure, write_pdfgui_project

    obs, start = ni
    res = refine_structure(obs, start, engine="pdffit2")
    path = write_pdfgui_project(tmp_path / "ni.ddp", res.structure, obs, name="ni", refined=res.params)
    ctl = PDFGuiControl()
    ctl.load(str(path))
    fit = ctl.fits[0]
    assert fit.name == "ni"
    assert len(fit.strucs[0].initial) == 4
    assert fit.strucs[0].constraints["lat(2)"].formula == "@1"
    assert fit.datasets[0].qmax == 27.0
    assert fit.parameters[1].initialValue() == pytest.approx(res.params["a"]["value"])


def test_plugin_calculator_is_used(monkeypatch):
    """A ``pdf_calculator`` hook answer replaces the torch model inside the recipe."""
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion import plugins
    from diffpy_diffusion.refine import build_recipe, refine_structure
    from diffpy_diffusion.refine.generators import HookPDFGenerator, pdffit2_pdf
    from diffpy_diffusion.refine.symmetry import to_diffpy

    calls = []

    def calc(structure, r, **params):
        calls.append(params)
        return pdffit2_pdf(structure, r, **params)

    monkeypatch.setattr(plugins, "get_pdf_calculator", lambda kind="pdf": calc)
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.52), ["Ni"], [[0, 0, 0]])
    r = np.arange(1.5, 8.0, 0.01)
    g = pdffit2_pdf(to_diffpy(s), r, qmax=26.0, qdamp=0.04, delta2=2.0)
    obs = Observation("pdf", r, g, "r", composition="Ni", qmax=26.0, qdamp=0.04)
    b = build_recipe(obs, s)
    assert isinstance(b.generator, HookPDFGenerator)
    s2 = s.copy()
    s2.scale_lattice(s.volume * 1.03**3)
    res = refine_structure(obs, s2, start={"delta2": 2.0})
    assert calls and calls[0]["qmax"] == 26.0
    assert res.params["a"]["value"] == pytest.approx(3.52, abs=1e-3)


def test_compat_prefers_srfit34_names():
    from diffpy_diffusion.refine import compat

    class New:
        def __init__(self):
            self.called = []

        def set_profile(self, p, *a, **k):
            self.called.append("set_profile")

        def setProfile(self, p, *a, **k):  # noqa: N802
            self.called.append("setProfile")

        def _set_calculator(self, c):
            self.called.append("_set_calculator")

        def _process_metadata(self):
            self.called.append("_process_metadata")

    class Old:
        def __init__(self):
            self.called = []

        def setProfile(self, p, *a, **k):  # noqa: N802
            self.called.append("setProfile")

        def _setCalculator(self, c):  # noqa: N802
            self.called.append("_setCalculator")

        def processMetaData(self):  # noqa: N802
            self.called.append("processMetaData")

    n, o = New(), Old()
    for obj in (n, o):
        compat.set_profile(obj, None)
        compat.set_calculator(obj, None)
        compat.process_metadata(obj)
    assert n.called == ["set_profile", "_set_calculator", "_process_metadata"]
    assert o.called == ["setProfile", "_setCalculator", "processMetaData"]
    assert compat.srfit_version() >= (3, 0, 0)


def test_generators_answer_both_metadata_hooks():
    from diffpy.srfit.fitbase import Profile

    from diffpy_diffusion.refine.compat import process_metadata
    from diffpy_diffusion.refine.generators import TorchPDFGenerator

    g = TorchPDFGenerator("pdf")
    g.meta.update({"qmax": 22.0, "stype": "N", "qdamp": 0.03})
    g._process_metadata()  # srfit 3.4 spelling
    assert g.getQmax() == 22.0 and g.getScatteringType() == "N" and g.qdamp.value == 0.03
    g2 = TorchPDFGenerator("pdf2")
    p = Profile()
    p.meta["qmax"] = 19.0
    from diffpy_diffusion.refine.compat import set_profile

    set_profile(g2, p)  # srfit 3.2 calls processMetaData()
    assert g2.getQmax() == 19.0
    process_metadata(g2)
