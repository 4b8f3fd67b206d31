"""Stage C of the screen: coordinates fitted through differentiable structure factors."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def rutile_case():
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.evaluate.protocol import simulate_target

    truth = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                      [[0, 0, 0], [0.305, 0.305, 0]])
    return truth, simulate_target(truth, 10.0)


def test_stage_c_moves_displaced_atoms_back_and_lowers_rwp(rutile_case):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from diffpy_diffusion.screen import _XRDScreen

    truth, obs = rutile_case
    rng = np.random.default_rng(1)
    moved = truth.copy()
    for k in range(len(moved)):  # 0.25 Å in a random direction
        v = rng.normal(size=3)
        moved.translate_sites([k], 0.25 * v / np.linalg.norm(v), frac_coords=False)
    scr = _XRDScreen(obs)
    r0 = scr.stage_c([moved], np.array([10.0]), np.zeros(1), steps=1, kernels=["sinc2"])[0][0]
    r, _G, fracs, sizes, _ = scr.stage_c([moved], np.array([10.0]), np.zeros(1), steps=40, kernels=["sinc2"])
    assert r[0] < 0.5 * r0  # the intensities come back
    sm = StructureMatcher(stol=0.5)
    rms_before = sm.get_rms_dist(moved, truth)[0]
    fitted = Structure(moved.lattice, moved.species, fracs[0])
    rms_after = sm.get_rms_dist(fitted, truth)[0]
    assert rms_after < 0.5 * rms_before
    assert 5.0 < sizes[0] < 20.0


def test_screen_with_stage_c_ranks_displaced_truths_first(rutile_case):
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.evaluate.protocol import match
    from diffpy_diffusion.screen import screen
    from diffpy_diffusion.types import Proposal

    truth, obs = rutile_case
    rng = np.random.default_rng(0)
    props = []
    for _ in range(3):
        s = truth.copy()
        s.perturb(0.25)
        props.append(Proposal(structure=s, backend="diffusion"))
    props += [Proposal(structure=Structure(Lattice.tetragonal(4.6, 2.95), ["Ti"] * 2 + ["O"] * 4, rng.random((6, 3))),
                       backend="diffusion") for _ in range(9)]
    off = screen(obs, [p.copy() for p in props], 5)
    on = screen(obs, [p.copy() for p in props], 5, coordinate_steps=30)
    assert "stage_c" in on.timings and "stage_c" not in off.timings
    best_off = min(p.scores["screen_rwp"] for p in off.ranked)
    assert on.ranked[0].scores["screen_rwp"] < best_off
    assert all(match(p.structure, truth) is not None for p in on.ranked[:3])
    assert on.ranked[0].provenance["screen"]["stage"] == "coordinates"
