"""Long measured-style scans: the last refinement stage is skipped for candidates far behind, and
``propose`` dedupes each pair of candidates once (issue 15's CPU budget)."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.testing import noisy_pxrd
from diffpy_diffusion.types import Proposal


def _nacl(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def long_scan():
    # 50 nm crystallites on a 0.01° step: the last stage needs every point (6,500 of them)
    return noisy_pxrd(_nacl(), size_nm=50.0, two_theta_deg=(20.0, 85.0, 0.01), ka2=False, size_hint=True)


@pytest.mark.slow
def test_skip_final_above_reports_the_fit_before_the_last_stage(long_scan):
    from diffpy_diffusion.refine import refine_structure

    start = _nacl(5.66)
    res = refine_structure(long_scan, start, skip_final_above=0.0)
    assert res.stages[-1].get("skipped") and "not run" in res.message and not res.converged
    # the last basic stage frees the ADPs: they were not refined, so they are not reported as refined
    assert not any(n.startswith("U") or "uiso" in n.lower() for n in res.params), list(res.params)
    assert all(np.isnan(v["esd"]) for v in res.params.values())
    # Rw and y_calc on every point, Rw by its definition (unit weights here)
    assert len(res.y_calc) == len(long_scan.x)
    rw = np.sqrt(np.sum((res.y_obs - res.y_calc) ** 2) / np.sum(res.y_obs**2))
    assert res.rw == pytest.approx(rw, rel=1e-9)
    assert abs(res.structure.lattice.a - 5.64) < 0.01  # the earlier stages did fit the cell


@pytest.mark.slow
def test_far_behind_candidate_skips_the_size_kernel_trials(long_scan):
    from diffpy_diffusion.refine import refine_structure

    behind = refine_structure(long_scan, _nacl(5.66), skip_final_above=0.0, size_kernel="auto")
    trial = next(s for s in behind.stages if s.get("tags") == ["size_kernel"])
    assert "skipped" in trial and "rw_by_kernel" not in trial
    assert behind.instrument["size_kernel"] == "scherrer"  # the starting shape is kept
    ahead = refine_structure(long_scan, _nacl(5.66), skip_final_above=10.0, size_kernel="auto")
    trial = next(s for s in ahead.stages if s.get("tags") == ["size_kernel"])
    assert "skipped" not in trial and set(trial["rw_by_kernel"]) == {"scherrer", "gauss", "sinc2"}


@pytest.mark.slow
def test_skip_final_above_is_inactive_below_the_threshold(long_scan):
    from diffpy_diffusion.refine import refine_structure

    res = refine_structure(long_scan, _nacl(5.66), skip_final_above=10.0)
    assert not any(s.get("skipped") for s in res.stages)
    run = [s for s in res.stages if s.get("points")]
    assert run[-1]["points"] > run[0]["points"]  # the last stage ran, on its finer grid


@pytest.mark.parametrize("n_points,options,expect", [(6500, None, True), (1024, None, False),
                                                     (1024, {"instrument": "rietveld"}, True),
                                                     (1024, {"instrument": "basic"}, False)])
def test_refine_candidates_sets_the_threshold_only_where_the_last_stage_is_costly(monkeypatch, n_points, options,
                                                                                 expect):
    from diffpy_diffusion import pipeline

    x = np.linspace(20.0, 85.0, n_points)
    obs = noisy_pxrd(_nacl(), two_theta_deg=(20.0, 85.0, (85.0 - 20.0) / n_points), ka2=False)
    assert abs(len(obs.x) - len(x)) <= 1
    seen = []

    class Fake:
        def __init__(self, rw):
            self.rw, self.chi2, self.params, self.structure = rw, 1.0, {}, _nacl()
            self.spacegroup, self.spacegroup_number, self.converged, self.message = "Fm-3m", 225, True, ""
            self.engine, self.kind, self.x = "srfit", "xrd", obs.x

    def fake(observation, structure, engine, start, opts):
        seen.append(opts.get("skip_final_above"))
        return Fake(0.1 * (len(seen))), {}

    monkeypatch.setattr(pipeline, "_refine_with_symmetry", fake)
    pipeline.refine_candidates(obs, [Proposal(_nacl(), "t") for _ in range(3)], refine_options=options)
    assert seen[0] is None
    if expect:
        assert seen[1:] == pytest.approx([pipeline.BEHIND_FACTOR * 0.1] * 2)
    else:
        assert seen[1:] == [None, None]


def test_dedupe_match_cache_gives_the_same_answer_with_fewer_matcher_calls(monkeypatch):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from diffpy_diffusion import screen as S

    calls = []
    orig = StructureMatcher.fit

    def counting(self, a, b, *args, **kwargs):
        calls.append(1)
        return orig(self, a, b, *args, **kwargs)

    monkeypatch.setattr(StructureMatcher, "fit", counting)
    sup = _nacl()
    sup.make_supercell([2, 1, 1])
    cscl = Structure(Lattice.cubic(3.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    props = [Proposal(_nacl(), "t"), Proposal(sup, "t"), Proposal(cscl, "t")]
    plain = S.dedupe(props)
    n_plain = len(calls)
    cache: dict = {}
    first = S.dedupe(props, match_cache=cache)
    again = S.dedupe([Proposal(p.structure.copy(), "t") for p in props], match_cache=cache)
    assert [id(p) for p in first[0]] == [id(p) for p in plain[0]] and first[1] == plain[1] == 1
    assert [p.structure for p in again[0]] == [p.structure for p in plain[0]] and again[1] == 1
    assert len(calls) == 2 * n_plain  # the second, cached dedupe asked the matcher nothing


def test_screen_with_known_phase_ranks_the_main_phase_of_a_mixture_first():
    """A mixture (NaCl + a strong CsCl-type impurity): given the impurity, the screen judges the
    candidates on what it leaves, and the true main phase ranks first with a low screening Rwp."""
    from diffpy_diffusion import screen as S
    from diffpy_diffusion.types import Observation

    imp = Structure(Lattice.cubic(4.11), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    a = noisy_pxrd(_nacl(), size_nm=20.0, noise=0.002, ka2=False)
    b = noisy_pxrd(imp, size_nm=20.0, noise=0.002, ka2=False, seed=1)
    obs = Observation("xrd", a.x, a.y + 1.5 * b.y, "2theta", composition="NaCl", wavelength=a.wavelength)
    decoys = [Structure(Lattice.cubic(3.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
              Structure.from_spacegroup("F-43m", Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.25] * 3])]
    props = [Proposal(s, "t") for s in [*decoys, _nacl(5.60)]]
    plain = S.screen(obs, [p.copy() for p in props], 3, do_dedupe=False)
    known = S.screen(obs, [p.copy() for p in props], 3, do_dedupe=False, known_phases=[imp])
    truth_rwp = {r: next(p.scores["screen_rwp"] for p in res.ranked if abs(p.structure.lattice.a - 5.64) < 0.1
                         and len(p.structure) == 8)
                 for r, res in (("plain", plain), ("known", known))}
    assert known.ranked[0].structure.composition.reduced_formula == "NaCl"
    assert abs(known.ranked[0].structure.lattice.a - 5.64) < 0.05
    assert truth_rwp["known"] < 0.5 * truth_rwp["plain"], truth_rwp


@pytest.mark.parametrize("options,skipped", [({"instrument": "rietveld"}, True), (None, False)])
def test_unconstrained_alternative_skips_a_costly_last_stage_when_behind(monkeypatch, options, skipped):
    """Hamilton's test refines a candidate both in the group spglib finds at a loose tolerance and
    unconstrained; the unconstrained fit's costly last stage is skipped when it is already behind."""
    import diffpy_diffusion.refine as R
    from diffpy_diffusion import pipeline

    obs = noisy_pxrd(_nacl(), size_nm=20.0, two_theta_deg=(20.0, 85.0, 0.05), ka2=False)
    start = _nacl()
    start.translate_sites([0], [0.02, 0.0, 0.0])  # off its special position: Fm-3m only at a loose tolerance
    calls = []

    class Fake:
        def __init__(self, rw, tol):
            self.rw, self.chi2, self.structure, self.converged, self.message = rw, 1.0, _nacl(), True, ""
            self.params = dict.fromkeys("ab" if tol > 0.01 else "abcdef", {"value": 0.0, "esd": 0.0})
            self.spacegroup, self.spacegroup_number = ("Fm-3m", 225) if tol > 0.01 else ("P1", 1)

    def fake(observation, s, **kw):
        tol = kw.get("spacegroup_tol", 0.01)
        calls.append((tol, kw.get("skip_final_above")))
        return Fake(0.10 if tol > 0.01 else 0.12, tol)

    monkeypatch.setattr(R, "refine_structure", fake)
    res, note = pipeline._refine_with_symmetry(obs, start, "srfit", {}, dict(options or {}))
    assert res.spacegroup == "Fm-3m"
    low = [c for c in calls if c[0] == 0.01]
    assert low, calls
    assert (low[0][1] == pytest.approx(0.10)) if skipped else low[0][1] is None
