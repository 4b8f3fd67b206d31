"""Answers in their space group (issue 17, levers 5 and 6).

What ``evaluate`` records about the space group of a matched answer and about raw proposals,
the validation split it can run on, the symmetrisation of returned candidates and the
parsimony test that decides between a symmetric and a less constrained fit.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.evaluate import protocol as P
from diffpy_diffusion.types import Observation, Proposal


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DIFFPY_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _nacl(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _cscl(a=4.12):
    return Structure(Lattice.cubic(a), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# ------------------------------------------------------------------ step 1: what evaluate measures


@pytest.mark.parametrize(("number", "reference", "expected"), [
    (225, 225, "same"),
    (62, 225, "subgroup"),     # Pnma < Fm-3m (the tilted-perovskite chain Fm-3m > I4/mcm > ... > Pnma)
    (1, 62, "subgroup"),       # P1 is a subgroup of every group
    (225, 62, "supergroup"),
    (194, 225, "other"),       # P6_3/mmc: hexagonal, not a subgroup of a cubic group
    (None, 225, None),
])
def test_spacegroup_relation(number, reference, expected):
    assert P.spacegroup_relation(number, reference) == expected


def test_summary_counts_matched_answers_by_space_group():
    recs = [
        {"index": 0, "backend": "b", "match_rank": 1, "match_sg_relation": "same"},
        {"index": 1, "backend": "b", "match_rank": 3, "match_sg_relation": "subgroup"},
        {"index": 2, "backend": "b", "match_rank": 2, "match_sg_relation": "same"},
        {"index": 3, "backend": "b", "match_rank": None, "match_sg_relation": None},
        {"index": 4, "backend": "b", "match_rank": 4, "match_sg_relation": "other"},
    ]
    for r in recs:
        r.update(rms=0.1 if r["match_rank"] else None, rw_top1=0.2, seconds=1.0, error=None)
    s = P.summarize(recs, ["b"])["b"]
    assert s["matched"] == 4
    assert s["sg_counts"] == {"same": 2, "subgroup": 1, "supergroup": 0, "other": 1, "unknown": 0}
    assert s["sg_same"] == pytest.approx(0.5)
    assert s["raw_match"] is None  # no --raw-match: no column
    md = P.markdown_table({"b": s}, {"dataset": "x", "limit": 5, "size_nm": 10, "n": 5, "top": 10, "refine_top": 1})
    assert "| 50 % (2/4): 2 / 1 / 0 / 1 |" in md and "raw match" not in md


def test_first_raw_matches_finds_the_first_matching_proposal():
    truth = _nacl()
    sup = truth.copy()
    sup.make_supercell([1, 1, 2])  # the same crystal in another cell: a match
    cache = {("a", 3, 0): ([Proposal(_cscl(), "x"), Proposal(sup, "x"), Proposal(truth, "x")], {}),
             ("b", 3, 0): ([Proposal(_cscl(), "x")], {})}
    first, count = P.first_raw_matches(cache, ["a", "b"], truth)
    assert first == {"a": 2, "b": None} and count == {"a": 3, "b": 1}


def test_evaluation_records_answer_and_reference_space_groups(tmp_path):
    import pandas as pd

    csv = tmp_path / "set.csv"
    pd.DataFrame({"material_id": ["t-1", "t-2"], "cif": [_nacl().to(fmt="cif"), _cscl().to(fmt="cif")]}).to_csv(csv)
    doc = P.run_evaluation(dataset=str(csv), limit=2, size_nm="10nm", backend="templates", n=40, top=5,
                           refine_top=0, quiet=True, raw_match=True)
    recs = doc["records"]
    # Fm-3m rock salt and Pm-3m caesium chloride (International Tables numbers 225 and 221)
    assert [r["ref_spacegroup"] for r in recs] == [225, 221]
    assert [r["match_spacegroup"] for r in recs] == [225, 221]
    assert all(r["match_sg_relation"] == "same" for r in recs)
    assert all(isinstance(r["raw_match"]["templates"], int) and r["raw_n"]["templates"] >= 1 for r in recs)
    s = doc["summary"]["templates"]
    assert s["sg_same"] == 1.0 and s["raw_match"] == 1.0 and doc["meta"]["raw_match"] is True


@pytest.mark.slow
def test_pool_val_is_the_held_out_split(shared_data):
    from diffpy_diffusion.datasets import eval_material_ids, split_ids

    es = P.pool_validation_entries(5, data=shared_data)
    assert len(es) == 5 and all(split_ids([e.material_id])[0] for e in es)
    assert not {e.material_id for e in es} & eval_material_ids(data=shared_data)


# ------------------------------------------------------------------ step 2: the significance test


def test_hamilton_critical_ratio_matches_the_f_table():
    from diffpy_diffusion.pipeline import fits_significantly_better as better

    # R_crit = sqrt(b/(n-m) F(b, n-m; 0.95) + 1); F(1, 30; 0.95) = 4.17 and F(2, 60; 0.95) = 3.15
    # (standard F tables) give 1.0672 and 1.0512
    m = 10
    assert better(1.0, m, 1.069, m - 1, n_eff=m + 30) and not better(1.0, m, 1.065, m - 1, n_eff=m + 30)
    assert better(1.0, m, 1.053, m - 2, n_eff=m + 60) and not better(1.0, m, 1.049, m - 2, n_eff=m + 60)


def test_no_degrees_of_freedom_left_keeps_the_constrained_model():
    from diffpy_diffusion.pipeline import fits_significantly_better as better

    # 1 nm crystallites: ~10 independent points cannot support a 40-parameter model, however low its R
    assert not better(0.05, 40, 0.30, 6, n_eff=10)
    assert better(0.05, 40, 0.30, 6, n_eff=400)
    # equal parameter counts: the lower R is better
    assert better(0.10, 6, 0.11, 6, n_eff=100) and not better(0.11, 6, 0.10, 6, n_eff=100)


def test_effective_points_of_a_powder_pattern_and_a_pdf():
    import numpy as np

    from diffpy_diffusion.pipeline import effective_points
    from diffpy_diffusion.types import Observation

    q = np.linspace(0.05, 5.75, 800)
    xrd = Observation(kind="xrd", x=q, y=np.ones_like(q), x_kind="q", composition={"Na": 1, "Cl": 1},
                      wavelength=1.54184, size_nm=10.0)
    # Scherrer: FWHM_Q = 2π·0.9 / 100 Å = 0.05655 Å⁻¹ over 5.70 Å⁻¹
    assert effective_points(xrd) == pytest.approx(5.70 / (2 * np.pi * 0.9 / 100.0), rel=1e-9)
    r = np.arange(1.0, 30.0 + 1e-9, 0.01)
    pdf = Observation(kind="pdf", x=r, y=np.ones_like(r), x_kind="r", composition={"Ni": 1}, qmax=20.0)
    assert effective_points(pdf) == pytest.approx(29.0 * 20.0 / np.pi, rel=1e-6)  # Nyquist count
    no_size = Observation(kind="xrd", x=q, y=np.ones_like(q), x_kind="q", composition={"Na": 1, "Cl": 1},
                          wavelength=1.54184)
    assert effective_points(no_size) == len(q)
    assert effective_points(no_size, size_nm=1.0) == pytest.approx(5.70 / (2 * np.pi * 0.9 / 10.0), rel=1e-9)


def _rattled_rocksalt(sigma_A=0.03, seed=1):
    import numpy as np

    s = _nacl().get_primitive_structure()
    s.make_supercell([[1, 1, 0], [0, 1, 1], [1, 0, 1]])  # a 4-atom cell, not the conventional one
    rng = np.random.default_rng(seed)
    return Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, sigma_A, (len(s), 3)),
                     coords_are_cartesian=True)


def test_unrefined_candidate_is_reported_symmetrised_in_its_group():
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from diffpy_diffusion.pipeline import symmetrize_unrefined
    from diffpy_diffusion.report import candidate_spacegroup

    raw = Proposal(_rattled_rocksalt(), "test", scores={"screen_rwp": 0.2})
    assert SpacegroupAnalyzer(raw.structure, symprec=1e-3).get_space_group_number() < 225
    q = symmetrize_unrefined(raw)
    # the coordinates themselves are symmetric: a tolerance of 1e-4 Å finds Fm-3m
    assert SpacegroupAnalyzer(q.structure, symprec=1e-4).get_space_group_number() == 225
    assert len(q.structure) == 8 and q.structure.composition.reduced_formula == "NaCl"
    assert candidate_spacegroup(q) == ("Fm-3m", 225) and q.provenance["symmetrized_tolerance_A"] <= 0.1
    assert raw.provenance == {} and q.scores == raw.scores  # a copy; the screen's scores kept


def test_propose_returns_unrefined_candidates_in_their_space_group():
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from diffpy_diffusion.pipeline import propose

    obs = P.simulate_target(_nacl(), 10.0, seed=0)
    got = propose(obs, backend="templates", n=20, top=3, refine=False, progress=False)
    assert got
    for p in got:
        n = p.provenance["spacegroup_number_symmetrized"]
        assert SpacegroupAnalyzer(p.structure, symprec=1e-4).get_space_group_number() == n


# ------------------------------------------------------------------ step 3: ranking by parsimony


def _refined(structure, name, rw, n_params, n_eff=101.0):
    return (Proposal(structure, name, scores={"rw": rw}, refined={f"p{i}": {"value": 0.0} for i in range(n_params)},
                     provenance={"n_eff": n_eff}), None)


def test_rank_prefers_the_cubic_description_when_the_fit_is_equal():
    from diffpy_diffusion.pipeline import rank_refined

    # NaCl refined in Fm-3m: a, 2 Uiso, scale, size, zero = 6 parameters.  The same crystal as its
    # 8-atom conventional cell in P1: 6 lattice + 24 coordinates + 2 Uiso + scale, size, zero = 35,
    # and (more freedom) a slightly lower Rw: not significantly lower at 10 nm (N_eff ≈ 101)
    conv = _nacl()
    cubic = _refined(conv, "cubic", 0.1000, 6)
    p1 = _refined(conv.copy(), "p1", 0.0990, 35)
    ranked = rank_refined([p1, cubic])
    assert ranked[0][0].backend == "cubic"
    assert len(ranked) == 1  # the P1 description is the same structure: dropped as a duplicate
    # a much better fit with more parameters is significant: it ranks first
    other = _refined(_cscl(), "better", 0.0500, 35)
    assert [p.backend for p, _ in rank_refined([cubic, other])] == ["better", "cubic"]
    # a worse fit with more parameters never moves ahead
    worse = _refined(_cscl(), "worse", 0.2000, 35)
    assert [p.backend for p, _ in rank_refined([worse, cubic])] == ["cubic", "worse"]


def test_rank_without_effective_points_keeps_the_order_by_rw():
    from diffpy_diffusion.pipeline import rank_refined

    cubic = _refined(_nacl(), "cubic", 0.1000, 6, n_eff=None)
    other = _refined(_cscl(), "other", 0.0990, 35, n_eff=None)
    assert [p.backend for p, _ in rank_refined([cubic, other])] == ["other", "cubic"]


def test_free_parameters_count_lattice_and_wyckoff_freedom():
    """Analytic counts: rock salt 1 (a); rutile 3 (a, c, O x); wurtzite 3 (a, c, O z with the polar
    origin fixed by Zn); any P1 cell 3N + 6 - 3 (origin floats)."""
    from diffpy_diffusion.refine.symmetry import free_parameters, point_group_order

    assert free_parameters(_nacl()) == 1
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                       [[0, 0, 0], [0.305, 0.305, 0]])
    assert free_parameters(rutile) == 3
    wurtzite = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.2), ["Zn", "O"],
                                         [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]])
    assert free_parameters(wurtzite) == 3
    np.random.seed(0)  # pymatgen's perturb draws from numpy's global generator
    rattled = _nacl().copy()
    rattled.perturb(0.02, min_distance=0.01)
    assert free_parameters(rattled, 0.001) == 3 * len(rattled) + 3
    assert point_group_order(rattled, 0.1) == (48, 225)  # spglib sees rock salt again at 0.1 Å...
    assert free_parameters(rattled, 0.1) == 1  # ...and so does the count


def _screened(structure, name, screen_rwp, rw=None, n_eff=9.3):
    scores = {"screen_rwp": screen_rwp} if rw is None else {"screen_rwp": screen_rwp, "rw": rw}
    prov = {} if rw is None else {"n_eff": n_eff}
    return (Proposal(structure, name, scores=scores, refined={} if rw is None else {"a": 1.0, "scale": 1.0},
                     provenance=prov), None)


def test_when_the_data_cannot_decide_the_parsimony_score_ranks():
    """1 nm (N_eff 9.3): a refined P1 cell with the lower Rw and a 3 % lower screening Rwp ranks
    after a symmetric unrefined candidate (27 structural parameters against 3 cost 24 %); the
    same list at 10 nm (N_eff 93, more than any count) keeps the order by refined Rw."""
    from diffpy_diffusion.pipeline import list_effective_points, rank_refined

    np.random.seed(0)
    p1 = _nacl().copy()
    p1.perturb(0.3, min_distance=0.2)
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Na", "Cl"],
                                       [[0, 0, 0], [0.305, 0.305, 0]])
    done = [_screened(p1, "p1", 0.097, rw=0.02), _screened(rutile, "sym", 0.100)]
    ranked = rank_refined(done, n_eff=9.3)
    assert [p.backend for p, _ in ranked] == ["sym", "p1"]
    assert all(p.provenance["ranked_on"] == "parsimony" for p, _ in ranked)
    assert ranked[0][0].provenance["n_parameters"] == 3
    # refined only the P1 one is; the refined order (refined first) returns when the data decide
    done = [_screened(p1, "p1", 0.097, rw=0.02, n_eff=93.0), _screened(rutile, "sym", 0.100)]
    assert [p.backend for p, _ in rank_refined(done, n_eff=93.0)] == ["p1", "sym"]
    assert [p.backend for p, _ in rank_refined(done)] == ["p1", "sym"]  # no N_eff: the order by Rw
    # a much better screening fit still wins: 30 % lower Rwp pays for 24 parameters
    done = [_screened(p1, "p1", 0.070, rw=0.02), _screened(rutile, "sym", 0.100)]
    assert [p.backend for p, _ in rank_refined(done, n_eff=9.3)] == ["p1", "sym"]
    x = np.linspace(10, 80, 200)
    obs = Observation(kind="xrd", x=x, y=np.ones_like(x), x_kind="2theta", wavelength=1.5406, composition="NaCl")
    assert list_effective_points(obs, done) == 9.3  # the refinement's record
    assert list_effective_points(obs, [_screened(rutile, "sym", 0.1)]) is None  # no size anywhere


@pytest.mark.slow
def test_refinement_keeps_fm3m_for_a_rattled_rocksalt_proposal():
    """A rattled rock salt refined against its pattern: Fm-3m is kept by the test, not by a fixed slack.

    Needs the right shape of the size broadening (the protocol's sinc², chosen by the fit): with
    Lorentzians the Fm-3m fit stays at Rw 0.17 and the P1 fit absorbs the misfit.
    """
    from diffpy_diffusion.pipeline import refine_candidates

    obs = P.simulate_target(_nacl(), 10.0, seed=0)
    (q, res), = refine_candidates(obs, [Proposal(_rattled_rocksalt(sigma_A=0.05), "test")])
    assert res.spacegroup == "Fm-3m", q.provenance.get("symmetry")
    assert q.provenance["n_eff"] == pytest.approx(101, abs=2)
    sym = q.provenance["symmetry"]
    assert sym["test"].startswith("Hamilton") and sym["n_params"] < sym["unconstrained_n_params"]


def test_table_says_when_the_parsimony_score_ranked():
    from diffpy_diffusion.report import ranked_table

    lat = {"a": 5.6, "b": 5.6, "c": 5.6}
    row = {"rank": 1, "formula": "NaCl", "spacegroup": "Fm-3m", "n_atoms": 8, "lattice": lat, "rw": 0.01,
           "screen_rwp": 0.03, "backend": "templates"}
    plain = ranked_table([row])
    assert "params" not in [c.header for c in plain.columns] and plain.caption is None
    marked = ranked_table([{**row, "provenance": {"ranked_on": "parsimony", "n_parameters": 1}}])
    assert "params" in [c.header for c in marked.columns] and "per structural parameter" in marked.caption
