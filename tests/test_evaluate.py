"""evaluate/: PXRDnet-style simulation, matching, summary statistics, the run on a small CSV set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.errors import DiffpyDiffusionError, OutputExistsError
from diffpy_diffusion.evaluate import protocol as P


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DIFFPY_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _nacl(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_simulate_target_follows_protocol():
    obs = P.simulate_target(_nacl(), 10.0, seed=3)
    q_cut = 4 * np.pi * np.sin(np.radians(45)) / 1.54184
    assert obs.x_kind == "q" and obs.wavelength == 1.54184 and obs.size_nm == 10.0
    assert obs.x.max() <= q_cut + 1e-9 and obs.x.min() > 0
    assert np.diff(obs.x) == pytest.approx(np.full(len(obs.x) - 1, 8.15 / (P.N_Q - 1)))
    assert obs.y.max() == pytest.approx(1.0, abs=0.01)
    # below the first reflection (NaCl 111 at Q = 1.93 Å⁻¹) only noise of σ = 1e-3 remains
    low = obs.y[obs.x < 1.5]
    assert np.std(low) == pytest.approx(1e-3, rel=0.3)
    assert obs.composition == {"Na": 1.0, "Cl": 1.0}
    again = P.simulate_target(_nacl(), 10.0, seed=3)
    assert np.array_equal(obs.y, again.y)


def test_match():
    s = _nacl()
    t = s.copy()
    t.make_supercell([1, 1, 2])
    t.perturb(0.05, min_distance=0.01)
    assert P.match(t, s) is not None and P.match(t, s) < 0.1
    cscl = Structure(Lattice.cubic(3.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert P.match(cscl, s) is None


def test_summarize_counts():
    recs = []
    # target 0: both solve at rank 1; target 1: diffusion rank 4 only; target 2: nobody
    for idx, d_rank, t_rank in ((0, 1, 1), (1, 4, None), (2, None, None)):
        for b, rank in (("diffusion", d_rank), ("templates", t_rank), ("diffusion+templates", d_rank)):
            recs.append({"index": idx, "backend": b, "match_rank": rank, "rms": 0.1 if rank else None,
                         "rw_top1": 0.2, "seconds": 2.0, "error": None})
    s = P.summarize(recs, ["diffusion", "templates", "diffusion+templates"])
    assert s["diffusion"]["top1"] == pytest.approx(1 / 3) and s["diffusion"]["top5"] == pytest.approx(2 / 3)
    assert s["templates"]["top10"] == pytest.approx(1 / 3)
    assert s["_only_diffusion_solved"] == 1
    assert s["diffusion"]["solved_only_by_this"] == 1  # "diffusion+templates" contains it, not counted as other
    assert s["templates"]["solved_only_by_this"] == 0
    md = P.markdown_table(s, {"dataset": "x", "limit": 3, "size_nm": 10, "n": 5, "top": 10, "refine_top": 1})
    assert "| diffusion | 3 | 33.3 % | 66.7 % |" in md and "only the diffusion model" in md


def test_summarize_gives_the_fit_only_figures_when_a_plugin_reordered():
    """``ranks_matched_fit`` (the fit-only ranks) gives ``fit_top{k}`` and a line under the table."""
    recs = [
        # the rule moved target 0's answer from fit rank 2 to rank 1, target 1's from 1 to 3
        {"index": 0, "backend": "b", "match_rank": 1, "ranks_matched": [1], "ranks_matched_fit": [2]},
        {"index": 1, "backend": "b", "match_rank": 3, "ranks_matched": [3, 6], "ranks_matched_fit": [1, 6]},
        {"index": 2, "backend": "b", "match_rank": None, "ranks_matched": [], "ranks_matched_fit": []},
        {"index": 3, "backend": "b", "match_rank": 1, "ranks_matched": [1]},  # a record from before the field
    ]
    for r in recs:
        r.update(rms=None, rw_top1=0.2, seconds=1.0, error=None)
    s = P.summarize(recs, ["b"])["b"]
    assert (s["top1"], s["fit_top1"]) == (0.5, 0.5)
    assert (s["top5"], s["fit_top5"]) == (0.75, 0.75)
    md = P.markdown_table({"b": s}, {"dataset": "x", "limit": 4, "size_nm": 1, "n": 5, "top": 10, "refine_top": 1})
    assert "plugin reordered" not in md  # same figures: nothing to say
    recs[1]["ranks_matched_fit"] = [2, 6]
    s = P.summarize(recs, ["b"])["b"]
    assert (s["top1"], s["fit_top1"]) == (0.5, 0.25)
    md = P.markdown_table({"b": s}, {"dataset": "x", "limit": 4, "size_nm": 1, "n": 5, "top": 10, "refine_top": 1})
    assert "ranked by the fit alone they give (top-1 / top-5 / top-10): b 25.0 % / 75.0 % / 75.0 %" in md


def test_run_evaluation_on_a_small_csv(tmp_path):
    import pandas as pd

    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    csv = tmp_path / "set.csv"
    pd.DataFrame({"material_id": ["t-1", "t-2"], "cif": [_nacl().to(fmt="cif"), cscl.to(fmt="cif")]}).to_csv(csv)
    out = tmp_path / "ev"
    doc = P.run_evaluation(dataset=str(csv), limit=2, size_nm="10nm", backend="templates", n=40, top=5,
                           refine_top=0, output_dir=out, quiet=True)
    assert doc["summary"]["templates"]["targets"] == 2
    assert doc["summary"]["templates"]["top1"] == 1.0
    assert (out / "evaluation.md").read_text().startswith("Evaluation on")
    saved = json.loads((out / "evaluation.json").read_text())
    assert [r["material_id"] for r in saved["records"]] == ["t-1", "t-2"]
    for rec in saved["records"]:  # the final list is on record, one row per candidate, matches flagged
        rows = rec["candidates"]
        assert len(rows) == rec["n_candidates"] > 0
        assert [i for i, c in enumerate(rows, 1) if c["matched"]] == rec["ranks_matched"]
        assert all(c["backend"] == "templates" and "screen_rwp" in c for c in rows)

    with pytest.raises(OutputExistsError):
        P.run_evaluation(dataset=str(csv), limit=1, backend="templates", output_dir=out, quiet=True)


@pytest.mark.slow
def test_eval_set_is_first_rows(shared_data):
    from diffpy_diffusion.datasets import eval_set

    es = eval_set(3, data=shared_data)
    assert [e.material_id for e in es] == ["mp-10009", *[e.material_id for e in es[1:]]]
    assert all(e.source == "mp20/test" for e in es)


def test_interrupted_run_keeps_finished_targets(tmp_path, monkeypatch):
    """Ctrl-C after the first target: its records are on disk, one JSON line; a finished run leaves no partial file."""
    import pandas as pd

    from diffpy_diffusion import batch

    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    csv = tmp_path / "set.csv"
    pd.DataFrame({"material_id": ["t-1", "t-2"], "cif": [_nacl().to(fmt="cif"), cscl.to(fmt="cif")]}).to_csv(csv)
    real = batch.map_tasks

    def first_then_ctrl_c(fn, tasks, **kw):
        yield from real(fn, tasks[:1], **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "map_tasks", first_then_ctrl_c)
    out = tmp_path / "ev"
    with pytest.raises(KeyboardInterrupt, match="1 finished target"):
        P.run_evaluation(dataset=str(csv), limit=2, size_nm="10nm", backend="templates", n=20, top=3,
                         refine_top=0, output_dir=out, quiet=True)
    lines = (out / P.PARTIAL).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["meta"]["limit"] == 2
    assert json.loads(lines[1])[0]["material_id"] == "t-1"
    assert not (out / "evaluation.json").exists()
    monkeypatch.setattr(batch, "map_tasks", real)
    opts = dict(dataset=str(csv), size_nm="10nm", backend="templates", n=20, top=3, refine_top=0, output_dir=out,
                quiet=True)
    with pytest.raises(OutputExistsError, match="--resume"):  # a rerun never wipes the finished targets
        P.run_evaluation(limit=2, **opts)
    with pytest.raises(DiffpyDiffusionError, match="top: 3 there, 4 now"):
        P.run_evaluation(limit=2, resume=True, **{**opts, "top": 4})
    ran = []

    def spy(fn, tasks, **kw):
        ran.extend(t["index"] for t in tasks)
        yield from real(fn, tasks, **kw)

    monkeypatch.setattr(batch, "map_tasks", spy)
    doc = P.run_evaluation(limit=2, resume=True, **opts)
    assert ran == [1] and [r["material_id"] for r in doc["records"]] == ["t-1", "t-2"]
    assert doc["meta"]["resumed_targets"] == 1
    assert (out / "evaluation.json").exists() and not (out / P.PARTIAL).exists()


def test_resume_extends_a_finished_run(tmp_path, monkeypatch):
    """--resume with a larger --limit evaluates only the new targets; a cut last partial line is re-run."""
    import pandas as pd

    from diffpy_diffusion import batch

    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    csv = tmp_path / "set.csv"
    pd.DataFrame({"material_id": ["t-1", "t-2"], "cif": [_nacl().to(fmt="cif"), cscl.to(fmt="cif")]}).to_csv(csv)
    opts = dict(dataset=str(csv), size_nm="10nm", backend="templates", n=20, top=3, refine_top=0,
                output_dir=tmp_path / "ev", quiet=True)
    first = P.run_evaluation(limit=1, **opts)
    real, ran = batch.map_tasks, []

    def spy(fn, tasks, **kw):
        ran.extend(t["index"] for t in tasks)
        yield from real(fn, tasks, **kw)

    monkeypatch.setattr(batch, "map_tasks", spy)
    doc = P.run_evaluation(limit=2, resume=True, **opts)
    assert ran == [1] and doc["records"][0] == first["records"][0] and len(doc["records"]) == 2
    with pytest.raises(DiffpyDiffusionError, match="--force starts over"):
        P.run_evaluation(limit=2, resume=True, force=True, **opts)
    with pytest.raises(DiffpyDiffusionError, match="give -o/--output"):
        P.run_evaluation(limit=2, resume=True, **{**opts, "output_dir": None})
