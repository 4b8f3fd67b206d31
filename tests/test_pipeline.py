"""pipeline.propose / refine_file: outputs, ranking, merged backends, overwrite protection, Ctrl-C."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion import pipeline
from diffpy_diffusion.errors import BackendError, OutputExistsError
from diffpy_diffusion.types import Observation


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DIFFPY_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _nacl(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def nacl_obs():
    from diffpy_diffusion.testing import noisy_pxrd

    return noisy_pxrd(_nacl(), two_theta_deg=(15.0, 80.0, 0.04), ka2=False, size_hint=True)


def _fake_refine(calls=None, interrupt_at=None):
    """A stand-in for refine_structure: returns the structure unchanged with Rw = its screening Rwp."""

    def fake(observation, structure, **kw):
        if calls is not None:
            calls.append(structure)
            if interrupt_at is not None and len(calls) == interrupt_at:
                raise KeyboardInterrupt
        rw = 0.05 + 0.01 * len(structure)
        return SimpleNamespace(structure=structure, rw=rw, chi2=1.0, params={"scale": {"value": 1.0, "esd": 0.01}},
                               spacegroup="Fm-3m", spacegroup_number=225, converged=True, message="", engine="fake",
                               x=observation.x, y_obs=observation.y, y_calc=observation.y * 0.9)

    return fake


def test_propose_writes_ranked_outputs(nacl_obs, tmp_path, monkeypatch):
    import diffpy_diffusion.refine as R

    monkeypatch.setattr(R, "refine_structure", _fake_refine())
    out = tmp_path / "res"
    props = pipeline.propose(nacl_obs, backend="templates", n=30, top=3, seed=1, output_dir=out, progress=False)
    assert 1 <= len(props) <= 3
    assert [p.scores["rank"] for p in props] == list(range(1, len(props) + 1))
    rws = [p.scores["rw"] for p in props]
    assert rws == sorted(rws)
    doc = json.loads((out / "results.json").read_text())
    assert doc["interrupted"] is False and doc["seed"] == 1 and doc["backend"] == "templates"
    assert doc["input"]["checksum"].startswith("sha256")
    assert doc["packages"]["numpy"] and "screen_s" in doc["timings"] and "refine_s" in doc["timings"]
    c1 = doc["candidates"][0]
    for key in ("rank", "rw", "spacegroup", "formula", "cif", "backend", "refined", "provenance"):
        assert key in c1
    assert c1["refined"]["scale"]["esd"] == 0.01
    assert c1["backend_version"]
    for k in range(1, len(props) + 1):
        for ext in ("cif", "stru", "png"):
            assert (out / f"rank{k:02d}.{ext}").stat().st_size > 0
    # no overwrite without force, checked before any work
    with pytest.raises(OutputExistsError):
        pipeline.propose(nacl_obs, backend="templates", n=5, top=1, output_dir=out, progress=False)
    pipeline.propose(nacl_obs, backend="templates", n=5, top=1, output_dir=out, force=True, progress=False,
                     refine=False)


def test_rocksalt_ranks_first_after_screening(nacl_obs):
    props = pipeline.propose(nacl_obs, backend="templates", n=60, top=3, refine=False, progress=False)
    from pymatgen.analysis.structure_matcher import StructureMatcher

    assert StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5).fit(props[0].structure, _nacl())


def test_merged_backends(nacl_obs, tmp_path):
    props = pipeline.propose(nacl_obs, backend="templates+random", n=6, top=4, refine=False, progress=False,
                             output_dir=tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "results.json").read_text())
    assert set(doc["backends"]) == {"templates", "random"}
    assert doc["screen"]["raw"] == doc["backends"]["templates"]["proposals"] + doc["backends"]["random"]["proposals"]
    assert props


def test_merged_backend_skips_one_that_cannot_serve(nacl_obs, tmp_path):
    obs = Observation("xrd", nacl_obs.x, nacl_obs.y, "2theta", composition="Na3Cl7", wavelength=1.540598)
    # no AFLOW prototype has A3B7, random can build it
    aflow = {"templates": {"library": "aflow"}}
    props = pipeline.propose(obs, backend="templates+random", n=3, top=2, refine=False, progress=False,
                             backend_options=aflow)
    assert props and all(p.backend == "random" for p in props)
    with pytest.raises(BackendError):
        pipeline.propose(obs, backend="templates", n=3, top=2, refine=False, progress=False, backend_options=aflow)


def test_ctrl_c_keeps_finished_candidates(nacl_obs, tmp_path, monkeypatch):
    import diffpy_diffusion.refine as R

    calls: list = []
    monkeypatch.setattr(R, "refine_structure", _fake_refine(calls, interrupt_at=2))
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        # AFLOW's rock salt comes first and is refined in one call (a lower-symmetry cell of the
        # shipped pool would take two: its symmetrised and its own-group fit)
        pipeline.propose(nacl_obs, backend="templates", n=30, top=3, output_dir=out, progress=False,
                         backend_options={"library": "aflow"})
    doc = json.loads((out / "results.json").read_text())
    assert doc["interrupted"] is True
    assert len([c for c in doc["candidates"] if c["rw"] is not None]) == 1
    assert (out / "rank01.cif").exists()


def test_failed_refinement_keeps_screened_candidate(nacl_obs, monkeypatch):
    import diffpy_diffusion.refine as R

    def boom(*a, **k):
        raise RuntimeError("did not converge")

    monkeypatch.setattr(R, "refine_structure", boom)
    props = pipeline.propose(nacl_obs, backend="templates", n=10, top=2, progress=False)
    assert props and all("did not converge" in p.provenance["refine_error"] for p in props)
    assert all(p.scores.get("rw") is None for p in props)


def test_backend_options_routing():
    from diffpy_diffusion.backends.templates import TemplatesBackend

    assert pipeline._backend_options("templates", TemplatesBackend, {"library": "x"}) == {"library": "x"}
    assert pipeline._backend_options("t", TemplatesBackend, {"t": {"library": "y"}}) == {"library": "y"}

    def strict(seed_only=0):
        return None

    assert pipeline._backend_options("s", strict, {"library": "x"}) == {}


def test_refine_file(tmp_path, nacl_obs, monkeypatch):
    import diffpy_diffusion.refine as R
    from diffpy_diffusion.io import write_xy

    monkeypatch.setattr(R, "refine_structure", _fake_refine())
    data = write_xy(nacl_obs.x, nacl_obs.y, tmp_path / "nacl.xy")
    cif = tmp_path / "start.cif"
    _nacl(5.7).to(filename=str(cif))
    res = pipeline.refine_file(data, cif, wavelength=1.540598, output_dir=tmp_path / "fit", quiet=True)
    assert res.rw > 0
    doc = json.loads((tmp_path / "fit" / "results.json").read_text())
    assert doc["command"] == "refine" and doc["candidates"][0]["backend"] == "user"
    assert (tmp_path / "fit" / "rank01.png").exists()


def test_pdf_candidates_get_pdffit2_script(tmp_path):
    """PDF data: each ranked candidate comes with its refined .stru and a ready-to-run pdffit2 script,
    which pdffit2 itself (the independent reference) runs to the same Rw."""
    import subprocess
    import sys

    import torch

    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.pdf import pdf_gr

    ni = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.524), ["Ni"], [[0, 0, 0]])
    r = np.arange(1.5, 12.0, 0.02)
    b = CrystalBatch.from_structures([ni], uiso=0.006, dtype=torch.float64)
    g = pdf_gr(b, r, qmax=25.0, qdamp=0.04)[0].numpy()
    obs = Observation("pdf", r, g, "r", composition="Ni", qmax=25.0, qdamp=0.04)
    out = tmp_path / "pdf"
    props = pipeline.propose(obs, backend="templates", n=10, top=1, seed=0, output_dir=out, progress=False)
    assert props and props[0].scores["rw"] < 0.05
    doc = json.loads((out / "results.json").read_text())
    files = doc["candidates"][0]["files"] if "files" in doc["candidates"][0] else doc["candidates"][0]
    script = out / "rank01_pdffit2.py"
    assert script.exists() and (out / "rank01.stru").exists()
    assert "pdffit2_script" in json.dumps(files)
    run = subprocess.run([sys.executable, script.name], cwd=out, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    import re

    rw = float(re.findall(r"^Rw = (\S+)", run.stdout, re.M)[-1])
    assert rw < 0.05  # pdffit2's own refinement of our candidate fits the data it was simulated from


def test_pipeline_runs_rerank_hooks(nacl_obs, monkeypatch):
    """Plugins' rerank scores reach the proposals that propose() returns."""
    from diffpy_diffusion import plugins

    def fake_rerank(observation, proposals):
        for i, p in enumerate(proposals):
            p.scores["plugin_score"] = float(i)

    monkeypatch.setattr(plugins, "call_rerank", fake_rerank)
    props = pipeline.propose(nacl_obs, backend="templates", n=10, top=2, seed=0, progress=False, refine=False)
    assert props and all("plugin_score" in p.scores for p in props)


def test_sample_cache_reuses_a_backends_proposals_as_copies():
    """``a`` then ``a+b``: ``a`` samples once; the reused proposals are copies, not the same objects."""
    from diffpy_diffusion.types import Proposal

    calls = []

    class Counting:
        def __init__(self, name, a):
            self.name, self.a = name, a

        def sample(self, obs, n, seed=None, progress=None):
            calls.append(self.name)
            return [Proposal(structure=Structure(Lattice.cubic(self.a + i), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
                             backend=self.name, seed=seed) for i in range(n)]

    a, b = Counting("a", 5.0), Counting("b", 6.0)
    cache: dict = {}
    first, info1 = pipeline.sample_all(None, [a], 3, 0, cache=cache)
    merged, info2 = pipeline.sample_all(None, [a, b], 3, 0, cache=cache)
    assert calls == ["a", "b"]
    assert info2["a"]["reused"] is True and "reused" not in info2["b"]
    assert [p.structure.lattice.a for p in merged[:3]] == [p.structure.lattice.a for p in first]
    merged[0].structure.scale_lattice(1000.0)  # downstream edits must not leak into the cache
    again, _ = pipeline.sample_all(None, [a], 3, 0, cache=cache)
    assert again[0].structure.lattice.a == pytest.approx(5.0)
    pipeline.sample_all(None, [a], 4, 0, cache=cache)  # another n: sampled anew
    pipeline.sample_all(None, [a], 3, None, cache=cache)  # unseeded: never reused
    assert calls == ["a", "b", "a", "a"]


def test_merged_backends_refine_the_best_of_each(nacl_obs):
    """refine_top=1 with a+b: one refinement per backend, each backend's best; the rest unrefined."""
    props = pipeline.propose(nacl_obs, backend="templates+random", n=6, top=4, refine_top=1, progress=False)
    refined = [p for p in props if p.scores.get("rw") is not None]
    assert sorted(p.backend for p in refined) == ["random", "templates"]
    assert all(p.scores.get("rw") is None for p in props[len(refined):])
