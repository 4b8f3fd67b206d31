"""Raw proposals a little off their special positions are refined in their true space group, not P1."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.refine.symmetry import symmetry_tolerance


def _rocksalt(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _rattled_primitive(seed=0, sigma_A=0.08):
    s = _rocksalt().get_primitive_structure()
    rng = np.random.default_rng(seed)
    s = Structure(Lattice(s.lattice.matrix * (1 + rng.normal(0, 0.01, (3, 3)))), s.species,
                  s.cart_coords + rng.normal(0, sigma_A, (len(s), 3)), coords_are_cartesian=True)
    return s


def test_symmetry_tolerance_finds_rocksalt_in_rattled_cell():
    s = _rattled_primitive()
    import spglib

    types = [sp.Z for sp in s.species]
    assert spglib.get_symmetry_dataset((s.lattice.matrix, s.frac_coords, types), symprec=0.01).number < 10
    tol, number = symmetry_tolerance(s)
    assert number == 225 and 0.01 < tol <= 0.3


def test_exact_structure_keeps_strict_tolerance():
    assert symmetry_tolerance(_rocksalt()) == (0.01, 225)


@pytest.mark.slow
def test_pipeline_refines_rattled_proposal_in_fm3m():
    from diffpy_diffusion.pipeline import refine_candidates
    from diffpy_diffusion.testing import noisy_pxrd
    from diffpy_diffusion.types import Proposal

    obs = noisy_pxrd(_rocksalt(), two_theta_deg=(15.0, 80.0, 0.04), ka2=False, size_hint=True)
    (q, res), = refine_candidates(obs, [Proposal(structure=_rattled_primitive(), backend="test")])
    assert res.spacegroup == "Fm-3m", q.provenance.get("symmetry")
    assert q.provenance["symmetry"]["unconstrained_spacegroup"] != "Fm-3m"
    assert abs(res.structure.lattice.a - 5.64) < 0.02 * 5.64 or abs(
        res.structure.get_primitive_structure().lattice.a - 5.64 / np.sqrt(2)) < 0.02 * 5.64
