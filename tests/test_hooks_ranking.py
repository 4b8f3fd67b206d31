"""The ranking and relaxation hooks (issue 14): ``rerank``, ``rank_candidates``, ``relax_proposals``.

A tiny fake plugin is registered in each test through the plugin manager (the CHGNet plugin is
disabled so that only the fake answers).  What is checked is the core's side of the contract
written in :mod:`diffpy_diffusion.hookspecs`: when each hook is called and with what, that a valid
answer is applied, that an invalid one is one warning line with the fit order (or the raw
proposals) kept, and that ``--relax`` without a plugin is one line and exit status 2.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from pymatgen.core import Lattice, Structure

from diffpy_diffusion import hookimpl, pipeline, plugins
from diffpy_diffusion.cli import cli
from diffpy_diffusion.cli.options import ENERGY_ENV

DEMO = Path(__file__).resolve().parents[1] / "diffpy_diffusion" / "examples_data" / "nacl_3nm_cuka.xy"


def _nacl(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def nacl_obs():
    from diffpy_diffusion.testing import noisy_pxrd

    return noisy_pxrd(_nacl(), two_theta_deg=(15.0, 80.0, 0.04), ka2=False, size_hint=True)


@pytest.fixture
def pm(monkeypatch, tmp_path_factory):
    """A fresh plugin manager without the CHGNet plugin; the test registers its fake on it."""
    monkeypatch.setenv("DIFFPY_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv(plugins.ENV_DENY, "chgnet")
    plugins.reset()
    yield plugins.get_plugin_manager()
    plugins.reset()


def _fake_refine(observation, structure, **kw):
    """A stand-in for refine_structure (the hooks, not srfit, are under test): Rw from the atom count."""
    return SimpleNamespace(structure=structure, rw=0.05 + 0.01 * len(structure), chi2=1.0,
                           params={"scale": {"value": 1.0, "esd": 0.01}}, spacegroup="Fm-3m", spacegroup_number=225,
                           converged=True, message="", engine="fake", x=observation.x, y_obs=observation.y,
                           y_calc=observation.y * 0.9)


class Ranker:
    """Fake plugin: records what ``rerank`` and ``rank_candidates`` get; answers ``order(n)``."""

    def __init__(self, order):
        self.order, self.calls = order, []

    @hookimpl
    def rerank(self, observation, proposals):
        self.calls.append(("rerank", list(proposals), [dict(p.scores) for p in proposals]))
        return {"fake_score": [float(i) for i in range(len(proposals))]}

    @hookimpl
    def rank_candidates(self, observation, proposals):
        self.calls.append(("rank_candidates", list(proposals), [dict(p.scores) for p in proposals]))
        return self.order(len(proposals))


# --- rank_candidates / rerank ---

def test_rerank_then_rank_candidates_after_refinement_order_applied(pm, nacl_obs, tmp_path, monkeypatch):
    import diffpy_diffusion.refine as R

    monkeypatch.setattr(R, "refine_structure", _fake_refine)
    fake = Ranker(lambda n: list(reversed(range(n))))
    pm.register(fake, name="fake")
    out = tmp_path / "run"
    props = pipeline.propose(nacl_obs, backend="templates", n=12, top=3, refine_top=1, seed=0, progress=False,
                             output_dir=out)
    assert [c[0] for c in fake.calls] == ["rerank", "rank_candidates"]
    (_, got_rerank, scores_rerank), (_, given, scores_given) = fake.calls
    assert len(given) == len(props) == 3
    # rerank saw every candidate of the final list: the refined one (with its Rw) and the unrefined ones
    assert [id(p) for p in got_rerank] == [id(p) for p in given]
    assert ["rw" in s for s in scores_rerank] == [True, False, False]
    assert all("fake_score" in s for s in scores_given)  # rank_candidates runs after rerank
    # the permutation is applied to the returned list, the ranks and results.json
    assert [id(p) for p in props] == [id(given[i]) for i in (2, 1, 0)]
    assert [p.scores["rank"] for p in props] == [1, 2, 3]
    doc = json.loads((out / "results.json").read_text())
    assert doc["ranked_by"] == "fake"
    assert [c["scores"]["screen_rwp"] for c in doc["candidates"]] == [p.scores["screen_rwp"] for p in props]
    assert [c["scores"]["fake_score"] for c in doc["candidates"]] == [2.0, 1.0, 0.0]


def test_rank_candidates_none_keeps_the_fit_order(pm, nacl_obs):
    fake = Ranker(lambda n: None)
    pm.register(fake, name="fake")
    props = pipeline.propose(nacl_obs, backend="templates", n=12, top=3, seed=0, progress=False, refine=False)
    given = fake.calls[-1][1]
    assert [id(p) for p in props] == [id(p) for p in given]
    rwp = [p.scores["screen_rwp"] for p in props]
    assert rwp == sorted(rwp)  # unrefined: screening order


def _raise(n):
    raise RuntimeError("boom\nsecond line")


@pytest.mark.parametrize("order, why", [
    (lambda n: [0] * n, "not a permutation"),
    (lambda n: list(range(n + 1)), "not a permutation"),
    (lambda n: [float(i) for i in range(n)], "non-integer"),
    (lambda n: 3, "not a list of indices"),
    (_raise, "RuntimeError: boom second line"),
])
def test_invalid_rank_candidates_answer_warns_once_and_keeps_the_fit_order(pm, nacl_obs, order, why):
    fake = Ranker(order)
    pm.register(fake, name="fake")
    with pytest.warns(UserWarning) as caught:
        props = pipeline.propose(nacl_obs, backend="templates", n=12, top=3, seed=0, progress=False, refine=False)
    msgs = [str(w.message) for w in caught if "rank_candidates" in str(w.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert msgs[0].startswith("plugin 'fake' failed in rank_candidates") and why in msgs[0]
    assert msgs[0].endswith("the fit order is kept")
    assert msgs[0] in plugins.plugin_errors()
    given = fake.calls[-1][1]
    assert [id(p) for p in props] == [id(p) for p in given]


def test_an_invalid_answer_lets_the_next_plugin_answer(pm, nacl_obs):
    good, bad = Ranker(lambda n: list(reversed(range(n)))), Ranker(lambda n: [0] * n)
    pm.register(good, name="good")
    pm.register(bad, name="bad")  # registered last: pluggy asks it first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        props = pipeline.propose(nacl_obs, backend="templates", n=12, top=3, seed=0, progress=False, refine=False)
    given = good.calls[-1][1]
    assert [id(p) for p in props] == [id(given[i]) for i in (2, 1, 0)]
    assert plugins.implementations("rank_candidates")[:2] == ["bad", "good"]


# --- relax_proposals ---

class Relaxer:
    """Fake plugin: ``relax_proposals`` returns copies whose lattice is scaled by ``scale`` (or a wrong answer)."""

    def __init__(self, events, scale=1.01, change_composition=False):
        self.events, self.scale, self.change = events, scale, change_composition

    @hookimpl
    def relax_proposals(self, observation, proposals):
        new = []
        for p in proposals:
            q = p.copy()
            s = p.structure.copy()
            s.scale_lattice(s.volume * self.scale ** 3)
            if self.change:
                s.remove_sites([0])
            q.structure = s
            q.provenance["fake_relaxed"] = True
            new.append(q)
        self.events.append(("relax", list(proposals), new))
        return new


def _spy_screen(monkeypatch, events):
    import diffpy_diffusion.screen as S

    real = S.screen

    def spy(observation, raw, k, **kw):
        events.append(("screen", list(raw)))
        return real(observation, raw, k, **kw)

    monkeypatch.setattr(S, "screen", spy)


def test_relax_is_called_on_the_raw_proposals_before_screening(pm, nacl_obs, tmp_path, monkeypatch):
    events: list = []
    pm.register(Relaxer(events), name="fake")
    _spy_screen(monkeypatch, events)
    out = tmp_path / "run"
    props = pipeline.propose(nacl_obs, backend="templates", n=8, top=2, seed=0, progress=False, refine=False,
                             relax=True, output_dir=out)
    assert [e[0] for e in events] == ["relax", "screen"]
    (_, raw, relaxed), (_, screened) = events
    assert len(raw) == 8 and all("fake_relaxed" not in p.provenance for p in raw)
    assert [id(p) for p in screened] == [id(p) for p in relaxed]  # the screen works on what the hook returned
    assert props and all(p.provenance.get("fake_relaxed") for p in props)
    doc = json.loads((out / "results.json").read_text())
    assert doc["relaxed_by"] == "fake" and "relax_s" in doc["timings"]


def test_relax_hook_not_called_without_relax(pm, nacl_obs, monkeypatch):
    events: list = []
    pm.register(Relaxer(events), name="fake")
    _spy_screen(monkeypatch, events)
    pipeline.propose(nacl_obs, backend="templates", n=8, top=2, seed=0, progress=False, refine=False)
    assert [e[0] for e in events] == ["screen"]


def test_relax_answer_that_changes_the_composition_is_rejected(pm, nacl_obs, monkeypatch):
    events: list = []
    pm.register(Relaxer(events, change_composition=True), name="fake")
    _spy_screen(monkeypatch, events)
    with pytest.warns(UserWarning, match=r"plugin 'fake' failed in relax_proposals: proposal 1 changed composition"):
        pipeline.propose(nacl_obs, backend="templates", n=8, top=2, seed=0, progress=False, refine=False, relax=True)
    (_, raw, _), (_, screened) = events
    assert [id(p) for p in screened] == [id(p) for p in raw]


def test_relax_without_a_plugin_raises_before_any_work(pm, nacl_obs, monkeypatch):
    from diffpy_diffusion.errors import NotAvailableError

    events: list = []
    _spy_screen(monkeypatch, events)
    assert plugins.implementations("relax_proposals") == []
    with pytest.raises(NotAvailableError, match="relax_proposals"):
        pipeline.propose(nacl_obs, backend="templates", n=8, top=2, seed=0, progress=False, relax=True)
    assert events == []


# --- the command line ---

@pytest.mark.parametrize("args", [
    ["propose", str(DEMO), "-c", "NaCl", "--relax"],
    ["evaluate", "--limit", "1", "-b", "random", "--relax"],
])
def test_cli_relax_without_a_plugin_is_one_line_and_exit_2(pm, args):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --relax: no installed plugin implements")


def test_cli_no_energy_sets_the_plugins_switch(pm, monkeypatch):
    monkeypatch.delenv(ENERGY_ENV, raising=False)  # restored after the test
    r = CliRunner().invoke(cli, ["propose", str(DEMO), "-c", "NaCl", "--no-energy", "--relax"])
    assert r.exit_code == 2  # stopped by --relax (no plugin) after the option was processed
    assert os.environ.get(ENERGY_ENV) == "off"


@pytest.mark.parametrize("command, options", [
    ("propose", ("--no-energy", "--relax")),
    ("evaluate", ("--no-energy", "--relax")),
    ("propose-batch", ("--no-energy",)),
])
def test_help_documents_the_options(command, options):
    r = CliRunner().invoke(cli, [command, "--help"])
    assert r.exit_code == 0
    for opt in options:
        assert opt in r.output
    assert "DIFFPY_DIFFUSION_ENERGY=off" in " ".join(r.output.split())

