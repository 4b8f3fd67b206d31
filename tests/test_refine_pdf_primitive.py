"""The PDF generator evaluates centred and super cells on their primitive cell: same G(r), checked against pdffit2."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.refine.generators import (
    TorchGenerator,
    TorchPDFGenerator,
    _primitive_reduction,
    _reduction_holds,
    pdffit2_pdf,
)
from diffpy_diffusion.refine.symmetry import to_diffpy

CASES = {
    "F rock salt": (Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]), 4),
    "I anatase": (Structure.from_spacegroup("I4_1/amd", Lattice.tetragonal(3.785, 9.514), ["Ti", "O"],
                                            [[0, 0, 0], [0, 0, 0.2083]]), 2),
    "R Bi2Se3 (hexagonal setting)": (Structure.from_spacegroup("R-3m", Lattice.hexagonal(4.14, 28.6),
                                                               ["Bi", "Se", "Se"],
                                                               [[0, 0, 0.4], [0, 0, 0], [0, 0, 0.206]]), 3),
    "2x1x1 rutile supercell": (Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                                         [[0, 0, 0], [0.3049, 0.3049, 0]]) * (2, 1, 1), 2),
}


def _generator(structure):
    g = TorchPDFGenerator("pdf")
    g.setStructure(to_diffpy(structure))
    g.setQmax(25.0)
    g.qdamp.setValue(0.03)
    g.delta2.setValue(2.0)
    return g


@pytest.mark.parametrize("name", list(CASES))
def test_primitive_reduction_gives_the_same_pdf(name):
    structure, k = CASES[name]
    g = _generator(structure)
    st = g.state()
    red = _primitive_reduction(st)
    assert red is not None and len(red[1]) * k == len(structure)
    assert abs(abs(np.linalg.det(red[0])) - 1 / k) < 1e-9
    r = np.linspace(1.0, 25.0, 1201)
    full = TorchGenerator.compute_batch(g, r, [st])[0]
    reduced = g.compute_batch(r, [st])[0]
    assert np.abs(reduced - full).max() < 1e-6 * np.abs(full).max()


def test_reduced_pdf_matches_pdffit2():
    structure, _ = CASES["F rock salt"]
    g = _generator(structure)
    r = np.linspace(1.0, 20.0, 951)
    ours = g.compute_batch(r, [g.state()])[0]
    ref = pdffit2_pdf(to_diffpy(structure), r, qmax=25.0, qdamp=0.03, delta2=2.0)
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()


def test_primitive_cell_is_left_alone_and_broken_centring_falls_back():
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                       [[0, 0, 0], [0.3049, 0.3049, 0]])
    assert _primitive_reduction(_generator(rutile).state()) is None
    st = _generator(rutile * (2, 1, 1)).state()
    red = _primitive_reduction(st)
    moved = dict(st)
    moved["frac"] = st["frac"].copy()
    moved["frac"][0] += 0.01  # one atom leaves its translation partner: not centred any more
    assert _reduction_holds(st, red) and not _reduction_holds(moved, red)
