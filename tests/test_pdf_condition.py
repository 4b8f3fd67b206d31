"""A PDF conditions the diffusion model through the powder pattern its G(r) implies."""

from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def nacl_particle_pdf():
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.evaluate.targets import simulate_pdf_target

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return nacl, simulate_pdf_target(nacl, 3.0)


def test_pdf_as_powder_puts_the_peaks_where_pymatgen_puts_the_bragg_reflections(nacl_particle_pdf):
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    from diffpy_diffusion.backends.diffusion.conditioning import (
        PDF_AS_POWDER_Q_MIN,
        Q_GRID_MAX,
        Q_GRID_POINTS,
        pdf_as_powder,
    )

    nacl, obs = nacl_particle_pdf
    y = pdf_as_powder(obs)
    grid = np.linspace(0, Q_GRID_MAX, Q_GRID_POINTS)
    assert y.shape == (Q_GRID_POINTS,) and y.max() == pytest.approx(1.0) and y.min() >= 0
    assert not y[grid < PDF_AS_POWDER_Q_MIN].any()
    # pymatgen's two strongest reflections below 2θ = 60° at Mo Kα1 (200 and 220), as Q
    lam = 0.7093
    pat = XRDCalculator(wavelength=lam).get_pattern(nacl, two_theta_range=(5, 60))
    q_ref = 4 * math.pi * np.sin(np.radians(pat.x[np.argsort(-pat.y)[:2]] / 2)) / lam
    # the pattern's two highest local maxima
    peaks = [i for i in range(1, len(y) - 1) if y[i] >= y[i - 1] and y[i] > y[i + 1]]
    top2 = sorted(grid[sorted(peaks, key=lambda i: -y[i])[:2]])
    np.testing.assert_allclose(top2, sorted(q_ref), atol=0.04)  # grid step 0.016 Å⁻¹


def test_canonical_pattern_of_a_pdf_fills_the_pxrd_channels_only(nacl_particle_pdf):
    from diffpy_diffusion.backends.diffusion.conditioning import canonical_pattern
    from diffpy_diffusion.evaluate.protocol import simulate_target

    nacl, obs = nacl_particle_pdf
    c = canonical_pattern(obs)
    assert not c[2].any()  # the shipped weights were trained with the G(r) channel zero
    np.testing.assert_allclose(c[1], np.sqrt(c[0]), rtol=1e-6)
    # close to the canonical pattern of a simulated 3 nm PXRD pattern of the same crystal
    x = canonical_pattern(simulate_target(nacl, 3.0))
    sel = (c[0] > 0) & (x[0] > 0)
    assert np.corrcoef(c[0][sel], x[0][sel])[0, 1] > 0.8
    old = canonical_pattern(obs, pdf_mode="gr")
    assert not old[0].any() and np.abs(old[2]).max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pdf_mode"):
        canonical_pattern(obs, pdf_mode="fq")


def test_pdf_as_powder_needs_a_composition(nacl_particle_pdf):
    from dataclasses import replace

    from diffpy_diffusion.backends.diffusion.conditioning import pdf_as_powder

    _, obs = nacl_particle_pdf
    with pytest.raises(ValueError, match="composition"):
        pdf_as_powder(replace(obs, composition={}))


def test_pdf_condition_option_parses_and_changes_the_samples(nacl_particle_pdf):
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    assert DiffusionBackend(pdf_condition="false").pdf_condition is False
    assert DiffusionBackend(pdf_condition="on").pdf_condition is True
    with pytest.raises(ValueError, match="pdf_condition"):
        DiffusionBackend(pdf_condition="maybe")
    _, obs = nacl_particle_pdf
    a = DiffusionBackend(steps=5, corrector_steps=0).sample(obs, 2, seed=0)
    b = DiffusionBackend(steps=5, corrector_steps=0, pdf_condition=False).sample(obs, 2, seed=0)
    assert not np.allclose(a[0].structure.lattice.matrix, b[0].structure.lattice.matrix)


def test_no_condition_flag_reaches_the_diffusion_backend():
    from click.testing import CliRunner

    from diffpy_diffusion.cli import cli
    from diffpy_diffusion.cli.options import merge_pdf_condition

    assert merge_pdf_condition(None, False) is None
    assert merge_pdf_condition({"library": "aflow"}, True) == {"library": "aflow", "pdf_condition": False}
    assert merge_pdf_condition({"diffusion": {"steps": 5}}, True)["diffusion"] == {"steps": 5, "pdf_condition": False}
    for cmd in ("propose", "evaluate"):
        out = CliRunner().invoke(cli, [cmd, "--help"]).output
        assert "--no-condition" in out


def test_propose_qmax_option_is_checked_against_the_file_header():
    """--qmax reaches the reader: a value the .gr header contradicts is a one-line error (exit 2)."""
    from pathlib import Path

    from click.testing import CliRunner

    from diffpy_diffusion.cli import cli

    gr = Path(__file__).resolve().parents[1] / "examples" / "data" / "Pt-nanoparticles.gr"  # header: qmax = 25.0
    res = CliRunner().invoke(cli, ["propose", str(gr), "-c", "Pt", "--qmax", "20", "--n", "2", "--no-refine"])
    assert res.exit_code == 2
    assert "qmax = 25" in res.output and "Pt-nanoparticles.gr" in res.output and "Traceback" not in res.output
    help_text = CliRunner().invoke(cli, ["propose", "--help"]).output
    assert "--qmax" in help_text and "--qdamp" in help_text
