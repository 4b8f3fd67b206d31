"""One-line use from SrFit: propose_structure / seed_recipe and the SrFit example.

The proposal step (``pipeline.propose``) is replaced by a stub returning the COD
Ni structure with a 2 % wrong lattice where the pipeline is not the subject; the
example also runs end to end with the real pipeline and the templates backend.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ni_files(shared_data):
    d = shared_data / "measured" / "ni_xray_2008"
    if not (d / "ni-q27r60-xray.gr").exists():
        pytest.skip(f"{d} not found")
    return d / "ni-q27r60-xray.gr", d / "ni.cif"


@pytest.fixture
def stub_pipeline(monkeypatch, ni_files):
    """Make ``pipeline.propose`` return Ni (lattice 2 % too large) without running a backend."""
    from diffpy_diffusion import pipeline
    from diffpy_diffusion.io import read_structure
    from diffpy_diffusion.types import Proposal

    calls = []

    def fake_propose(observation, **kwargs):
        calls.append(observation)
        s = read_structure(ni_files[1])
        s.scale_lattice(s.volume * 1.02**3)
        return [Proposal(structure=s, backend="stub")]

    monkeypatch.setattr(pipeline, "propose", fake_propose)
    return calls


def _example():
    spec = importlib.util.spec_from_file_location("srfit_pdf_oneline", REPO / "examples" / "srfit_pdf_oneline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_observation_from_srfit_profile(ni_files):
    from diffpy.srfit.fitbase import Profile
    from diffpy.srfit.pdf import PDFParser

    from diffpy_diffusion.refine.oneline import observation_from_profile

    prof = Profile()
    parser = PDFParser()
    parser.parseFile(str(ni_files[0]))
    prof.loadParsedData(parser)
    obs = observation_from_profile(prof, composition="Ni")
    assert obs.kind == "pdf" and obs.x_kind == "r"
    assert obs.qmax == 27.0 and obs.radiation == "xray"
    assert obs.sigma is not None and len(obs.x) == len(prof.xobs)
    assert obs.composition == {"Ni": 1.0}


def test_propose_structure_returns_diffpy_structure(stub_pipeline, ni_files):
    from diffpy.srfit.fitbase import Profile
    from diffpy.srfit.pdf import PDFParser
    from diffpy.structure import Structure

    from diffpy_diffusion import propose_structure

    prof = Profile()
    parser = PDFParser()
    parser.parseFile(str(ni_files[0]))
    prof.loadParsedData(parser)
    stru = propose_structure(prof, composition="Ni", backend="templates")
    assert isinstance(stru, Structure)
    assert len(stru) == 4 and stru.pdffit["spcgr"] == "Fm-3m"
    assert stub_pipeline[0].qmax == 27.0


@pytest.mark.slow
def test_example_with_one_added_line_fits_measured_ni(stub_pipeline, ni_files):
    """The SrFit example runs; from the stub's 2 % wrong start it recovers a and a low Rw."""
    mod = _example()
    res = mod.main([str(ni_files[0]), "--xmax", "8"])
    assert res.rw < 0.12
    a = res.recipe.a.value
    assert a == pytest.approx(3.5239, abs=0.005)


def test_seed_recipe_adds_constrained_phase(stub_pipeline, ni_files):
    from diffpy.srfit.fitbase import FitContribution, FitRecipe, Profile
    from diffpy.srfit.pdf import PDFParser
    from scipy.optimize import least_squares

    from diffpy_diffusion import seed_recipe

    prof = Profile()
    parser = PDFParser()
    parser.parseFile(str(ni_files[0]))
    prof.loadParsedData(parser)
    prof.setCalculationRange(xmin=1.5, xmax=8)
    con = FitContribution("ni")
    con.setProfile(prof, xname="r")
    recipe = FitRecipe()
    recipe.clearFitHooks()
    recipe.addContribution(con)
    proposal = seed_recipe(recipe, composition="Ni", backend="templates")
    assert proposal.backend == "stub"
    names = set(recipe.getNames())
    assert {"phase_a", "phase_Uiso_Ni", "phase_scale", "phase_delta2"} <= names
    assert not any(n.startswith("phase_x_") for n in names)  # Fm-3m: no free coordinates
    recipe.phase_qdamp.setValue(0.05) if hasattr(recipe, "phase_qdamp") else None
    least_squares(recipe.residual, recipe.values, x_scale="jac")
    assert recipe.phase_a.value == pytest.approx(3.5239, abs=0.005)


@pytest.mark.slow
def test_example_with_real_pipeline(ni_files):
    """End to end with diffpy_diffusion.pipeline and the built-in templates backend."""
    from diffpy_diffusion.plugins import backend_names

    assert "templates" in backend_names()
    mod = _example()
    res = mod.main([str(ni_files[0]), "--xmax", "8", "--n", "8", "--top", "1"])
    assert res.rw < 0.2
