"""The CHGNet plugin: the rerank contract, the ranking rule, failures, caching, relaxation, disabling.

References are independent of this plugin's own output: the rock-salt ground state of NaCl
(lower than the CsCl type, and far lower than a cell with two atoms 1 Å apart, shorter than any
Na-Cl bond, 2.82 Å in rock salt), pymatgen's structures, and hand-computed orders of the rule.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
from diffpy_diffusion_chgnet import plugin
from diffpy_diffusion_chgnet.energy import EnergyModel, shared_model, structure_key
from diffpy_diffusion_chgnet.ranking import ENERGY_WINDOW_EV, RW_MARGIN, energy_above_best, energy_order
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.types import Proposal


def rocksalt(a: float = 5.64) -> Structure:
    """NaCl rock salt, conventional cell (8 atoms), a = 5.64 Å (experimental, room temperature)."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def squeezed(a: float = 5.64) -> Structure:
    """The same cell with one Cl moved to 1 Å from the Na at the origin: no real crystal has that."""
    s = rocksalt(a)
    i = next(k for k, site in enumerate(s) if site.specie.symbol == "Cl")
    s.replace(i, "Cl", [1.0 / a, 0.0, 0.0])
    return s


def proposal(s, rw=None, rwp=0.1):
    scores = {"screen_rwp": rwp} if rw is None else {"screen_rwp": rwp, "rw": rw}
    return Proposal(structure=s, backend="test", scores=scores)


# --- the rerank hook contract (diffpy_diffusion.testing has no rerank kit: checked directly) ---

def test_rerank_contract_one_float_per_proposal_list_untouched():
    props = [proposal(rocksalt()), proposal(squeezed()), proposal(rocksalt(5.5))]
    before = [(id(p), structure_key(p.structure), dict(p.scores)) for p in props]
    res = plugin.rerank(observation=None, proposals=props)
    assert set(res) == {"energy_ev_per_atom", "energy_above_best"}
    for values in res.values():
        assert len(values) == len(props) and all(isinstance(v, float) for v in values)
    assert [(id(p), structure_key(p.structure), dict(p.scores)) for p in props] == before
    assert min(res["energy_above_best"]) == 0.0


def test_rerank_through_the_plugin_manager_stores_scores():
    from diffpy_diffusion import plugins

    plugins.reset()
    assert "chgnet" in plugins.plugin_info()
    props = [proposal(rocksalt()), proposal(squeezed())]
    plugins.call_rerank(None, props)
    assert not [e for e in plugins.plugin_errors() if "chgnet" in e]
    assert all(math.isfinite(p.scores["energy_ev_per_atom"]) for p in props)


def test_rock_salt_is_the_lowest_of_three_nacl_cells():
    v_atom = rocksalt().volume / 8
    cscl = Structure(Lattice.cubic((2 * v_atom) ** (1 / 3)), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    e, why = shared_model().energies([rocksalt(), cscl, squeezed()])
    assert why == [None, None, None]
    assert e[0] < e[1] < e[2]
    assert e[2] - e[0] > ENERGY_WINDOW_EV  # the 1 Å pair is far outside the window


# --- the ranking rule ---

def test_impossible_candidate_with_a_slightly_better_rw_is_demoted():
    bad, good = proposal(squeezed(), rw=0.050), proposal(rocksalt(), rw=0.050 + RW_MARGIN / 2)
    assert plugin.rank_candidates(None, [bad, good]) == [1, 0]
    assert good.scores["energy_above_best"] == 0.0
    assert bad.scores["energy_above_best"] > ENERGY_WINDOW_EV


def test_impossible_candidate_that_fits_much_better_stays_first():
    bad, good = proposal(squeezed(), rw=0.02), proposal(rocksalt(), rw=0.02 + 2 * RW_MARGIN)
    assert plugin.rank_candidates(None, [bad, good]) == [0, 1]


def test_scores_mode_keeps_the_fit_order(monkeypatch):
    monkeypatch.setenv(plugin.ENV_MODE, "scores")
    bad, good = proposal(squeezed(), rw=0.050), proposal(rocksalt(), rw=0.051)
    assert plugin.rank_candidates(None, [bad, good]) is None
    assert bad.scores["energy_above_best"] > ENERGY_WINDOW_EV


def test_off_mode_does_nothing(monkeypatch):
    monkeypatch.setenv(plugin.ENV_MODE, "off")
    props = [proposal(squeezed(), rw=0.05), proposal(rocksalt(), rw=0.051)]
    assert plugin.rerank(None, props) is None and plugin.rank_candidates(None, props) is None
    assert all("energy_ev_per_atom" not in p.scores for p in props)


@pytest.mark.parametrize("fit, refined, above, expected", [
    # within the window everything keeps the core's order
    ([0.1, 0.2, 0.3], [True] * 3, [0.0, 0.05, 0.2], [0, 1, 2]),
    # the implausible leader drops behind both plausible ones (beats them by less than the margin)
    ([0.10, 0.10 + RW_MARGIN / 2, 0.10 + RW_MARGIN * 0.9], [True] * 3, [9.0, 0.0, 0.1], [1, 2, 0]),
    # ... but only behind those it does not beat by more than the margin
    ([0.10, 0.10 + RW_MARGIN / 2, 0.10 + 2 * RW_MARGIN], [True] * 3, [9.0, 0.0, 0.1], [1, 0, 2]),
    # refined candidates stay ahead of unrefined ones; the rule works within each group
    ([0.10, 0.11, 0.30, 0.31], [True, True, False, False], [9.0, 0.0, 9.0, 0.0], [1, 0, 3, 2]),
    # unknown energy (NaN): fit-only rank
    ([0.10, 0.101], [True] * 2, [math.nan, 0.0], [0, 1]),
])
def test_energy_order(fit, refined, above, expected):
    assert energy_order(fit, refined, above) == expected


def test_energy_above_best_per_composition():
    got = energy_above_best([-3.0, -3.5, -1.0, math.nan, -2.0], ["NaCl", "NaCl", "KCl", "NaCl", "KCl"])
    assert got[:3] == [0.5, 0.0, 1.0] and math.isnan(got[3]) and got[4] == 0.0


# --- failures: one warning line, fit-only rank, no crash ---

def test_uncovered_element_and_failing_structure_warn_and_keep_rank():
    am = Structure(Lattice.cubic(5.0), ["Am", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # Am: Z = 95 > 94
    lone = Structure(Lattice.cubic(20.0), ["H"], [[0, 0, 0]])  # no neighbour within CHGNet's 6 Å cutoff
    props = [proposal(am, rw=0.05), proposal(lone, rw=0.06), proposal(rocksalt(), rw=0.07)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        order = plugin.rank_candidates(None, props)
    msgs = [str(w.message) for w in caught if str(w.message).startswith("chgnet:")]
    assert len(msgs) == 2 and all("\n" not in m for m in msgs)
    assert any("Am" in m and "candidate(s) 1 " in m for m in msgs)
    assert any("candidate(s) 2 " in m and "isolated" in m for m in msgs)
    assert order == [0, 1, 2]
    assert math.isnan(props[0].scores["energy_ev_per_atom"]) and math.isnan(props[1].scores["energy_above_best"])


# --- cache, threads ---

def test_energies_are_cached_per_structure_and_threads_restored():
    import torch

    model = EnergyModel(threads=1)
    s = rocksalt()
    shifted = s.copy()
    shifted.translate_sites(list(range(len(s))), [1.0, 0.0, 0.0], to_unit_cell=False)  # same crystal, x+1
    threads = torch.get_num_threads()
    e1, _ = model.energies([s, s.copy()])
    assert model.calls == 1  # one structure computed, its copy from the cache
    e2, _ = model.energies([shifted])
    assert model.calls == 1 and e2 == [e1[0]]
    assert torch.get_num_threads() == threads


# --- relaxation ---

def test_relaxation_lowers_the_energy_and_bounds_the_volume():
    from diffpy_diffusion_chgnet.relax import relax_structure

    start = rocksalt(5.64 * 0.85 ** (1 / 3))  # 15 % too small: wants to expand beyond a 5 % bound
    relaxed, info = relax_structure(start, steps=60, max_volume_change=0.05)
    assert info["volume_bounded"] and info["volume_ratio"] == pytest.approx(1.05, abs=1e-3)
    assert relaxed.volume == pytest.approx(start.volume * 1.05, rel=1e-3)
    assert info["energy_ev_per_atom"] < info["energy_before_ev_per_atom"]
    assert relaxed.composition == start.composition


def test_relax_proposals_keeps_what_it_cannot_relax():
    am = Structure(Lattice.cubic(5.0), ["Am", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    props = [proposal(am)]
    with pytest.warns(UserWarning, match="chgnet: 1 proposal"):
        out = plugin.relax_proposals(None, props)
    assert out[0] is not props[0] and out[0].structure == am and "relax" not in out[0].provenance


# --- the core's output with the plugin disabled ---

def _results(tmp_path, name, monkeypatch, env):
    from diffpy_diffusion import plugins
    from diffpy_diffusion.pipeline import propose
    from diffpy_diffusion.testing import noisy_pxrd

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plugins.reset()
    try:
        obs = noisy_pxrd(rocksalt(), size_nm=5.0, noise=0.005, seed=1)
        propose(obs, backend="random", n=6, top=3, seed=0, progress=False, refine=False, output_dir=tmp_path / name)
    finally:
        for k in env:
            monkeypatch.delenv(k)
        plugins.reset()
    doc = json.loads((tmp_path / name / "results.json").read_text())

    def drop_timings(x):
        if isinstance(x, dict):
            return {k: drop_timings(v) for k, v in x.items() if "timings" not in k and not k.endswith("_s")}
        if isinstance(x, list):
            return [drop_timings(v) for v in x]
        return x

    return drop_timings(doc)


def test_disabled_plugin_leaves_the_core_output_alone(tmp_path, monkeypatch):
    off = _results(tmp_path, "disabled", monkeypatch, {"DIFFPY_DIFFUSION_DISABLE_PLUGINS": "chgnet"})
    mode_off = _results(tmp_path, "energy-off", monkeypatch, {plugin.ENV_MODE: "off"})
    on = _results(tmp_path, "enabled", monkeypatch, {})
    assert mode_off == off
    assert all("energy_ev_per_atom" not in c["scores"] for c in off["candidates"])
    assert all("energy_ev_per_atom" in c["scores"] for c in on["candidates"])
    # enabled: the same candidates, only the two energy scores added
    strip = [{k: v for k, v in c["scores"].items() if not k.startswith("energy_")} for c in on["candidates"]]
    assert strip == [c["scores"] for c in off["candidates"]]
