"""Observation, Proposal and composition parsing."""

from __future__ import annotations

import numpy as np
import pytest

from diffpy_diffusion.errors import CompositionError
from diffpy_diffusion.types import Observation, Proposal, composition_formula, parse_composition


@pytest.mark.parametrize("text,expected", [
    ("CdSe", {"Cd": 1, "Se": 1}), ("Ba2TiO4", {"Ba": 2, "Ti": 1, "O": 4}), ("Cd Se", {"Cd": 1, "Se": 1}),
    ("Ta0.5O1.25", {"Ta": 0.5, "O": 1.25}), ("OHO", {"O": 2, "H": 1}),
    ("Sr(FeAs)2", {"Sr": 1, "Fe": 2, "As": 2}), ("Ca(OH)2", {"Ca": 1, "O": 2, "H": 2}),
])
def test_parse_composition(text, expected):
    assert parse_composition(text) == expected


@pytest.mark.parametrize("text,where", [("Cd2Se3x", "position 7"), ("cdse", "position 1"), ("Xx2", "Xx"),
                                        ("", "empty"), ("Cd0", "positive"), ("Cd-1", "position 3"),
                                        ("(CdSe", "never closed"), ("CdSe)", "position 5"), ("()2", "empty group")])
def test_parse_composition_errors(text, where):
    with pytest.raises(CompositionError) as ei:
        parse_composition(text)
    assert where in str(ei.value)


def test_formula_roundtrip():
    assert composition_formula(parse_composition("Ba2TiO4")) == "Ba2TiO4"


def test_observation_q_conversion():
    tth = np.array([20.0, 40.0, 60.0])
    obs = Observation(kind="xrd", x=tth, y=np.ones(3), x_kind="2theta", wavelength=1.5406, composition="NaCl")
    expected = 4 * np.pi * np.sin(np.radians(tth / 2)) / 1.5406
    np.testing.assert_allclose(obs.q(), expected)
    assert obs.formula == "NaCl"


@pytest.mark.parametrize("kwargs", [
    dict(kind="pdf", x_kind="q"), dict(kind="xrd", x_kind="r"), dict(kind="saxs", x_kind="q"),
    dict(kind="xrd", x_kind="2theta", radiation="electron"),
])
def test_observation_validation(kwargs):
    with pytest.raises(ValueError):
        Observation(x=np.arange(3.0), y=np.ones(3), **kwargs)


def test_observation_shape_mismatch():
    with pytest.raises(ValueError):
        Observation(kind="xrd", x=np.arange(3.0), y=np.ones(4), x_kind="q")


def test_proposal_structure_to_diffpy():
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.io.structures import pymatgen_to_diffpy

    s = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    p = Proposal(structure=s, backend="x")
    ds = pymatgen_to_diffpy(p.structure)
    assert len(ds) == 2 and ds.lattice.a == pytest.approx(5.64)
    assert p.formula == "NaCl"


def test_proposal_copy_is_independent():
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.types import Proposal

    p = Proposal(structure=Structure(Lattice.cubic(4.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), backend="x",
                 seed=3, scores={"screen_rwp": 0.1}, provenance={"z": 1})
    q = p.copy()
    q.structure.scale_lattice(100.0)
    q.scores["rw"] = 0.2
    q.provenance["z"] = 2
    assert p.structure.lattice.a == 4.0 and p.scores == {"screen_rwp": 0.1} and p.provenance == {"z": 1}
    assert (q.backend, q.seed) == ("x", 3)
