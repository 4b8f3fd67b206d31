"""Tests of the srreal plugin; the srreal-dependent ones skip where srreal is absent."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from diffpy_diffusion_srreal import plugin  # noqa: E402

needs_srreal = pytest.mark.skipif(
    not plugin.srreal_available(),
    reason="diffpy.srreal is not installed (no pip wheel; conda install -c conda-forge diffpy.srreal)",
)


def _ni():
    from diffpy.structure import Atom, Lattice, Structure

    a = 3.52
    return Structure(
        [Atom("Ni", xyz) for xyz in ([0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0])],
        lattice=Lattice(a, a, a, 90, 90, 90),
    )


def test_hook_answers_none_without_srreal_or_for_unknown_kind():
    assert plugin.pdf_calculator(kind="nonsense") is None
    if not plugin.srreal_available():
        assert plugin.pdf_calculator(kind="pdf") is None


def test_spherical_cf_matches_srfit():
    from diffpy.srfit.pdf.characteristicfunctions import sphericalCF

    r = np.linspace(0, 40, 401)
    assert np.allclose(plugin._spherical_cf(r, 30.0), sphericalCF(r, 30.0))


@needs_srreal
def test_srreal_calculator_nearest_neighbour_peak():
    calc = plugin.pdf_calculator(kind="pdf")
    r = np.linspace(1.5, 10, 851)
    g = calc(_ni(), r, qmax=25.0, qdamp=0.04)
    # fcc Ni: first G(r) maximum at a/sqrt(2)
    assert abs(r[np.argmax(g[r < 3.0])] - 3.52 / np.sqrt(2)) < 0.03


@needs_srreal
def test_srreal_generator_is_srfit_pdfgenerator():
    calc = plugin.pdf_calculator(kind="pdf")
    gen = calc.srfit_generator("pdf")
    gen.setStructure(_ni())
    assert hasattr(gen, "qdamp") and hasattr(gen, "scale")
