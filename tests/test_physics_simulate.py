"""simulation.simulate() and the ``simulate`` command."""

import numpy as np
import pytest
from click.testing import CliRunner

from diffpy_diffusion.physics import reference
from diffpy_diffusion.simulation import simulate


def test_simulate_xrd_pdf_debye():
    s = reference.cdse_zincblende()
    xrd = simulate(s, "xrd", size_nm=3.0)
    assert xrd.kind == "xrd" and xrd.x_kind == "2theta" and xrd.y.max() == pytest.approx(100)
    assert xrd.composition == {"Cd": 1.0, "Se": 1.0}
    pdf = simulate(s, "pdf", qmax=25.0, qdamp=0.04, size_nm=3.0)
    assert pdf.kind == "pdf" and pdf.x_kind == "r" and pdf.qmax == 25.0
    assert np.abs(pdf.y).max() > 1.0  # default Uiso 0.005 Å² gives peaks
    deb = simulate(s, "debye", size_nm=2.0, x_range=(1.0, 10.0, 0.05))
    assert deb.kind == "xrd" and deb.x_kind == "q" and deb.meta["atoms"] > 50


def test_simulate_q_grid_and_tube_name():
    s = reference.ni_fcc()
    obs = simulate(s, "xrd", x_kind="q", x_range=(2.0, 6.0, 0.002), wavelength="CuKa", W=0.01)
    assert obs.wavelength2 is not None
    q111 = 2 * np.pi * np.sqrt(3) / 3.52
    assert obs.x[np.argmax(obs.y)] == pytest.approx(q111, abs=2e-3)


@pytest.mark.parametrize("kw, param", [
    (dict(kind="xrd", size_nm=0.0), "size_nm"),
    (dict(kind="xrd", size_nm=-3.0), "size_nm"),
    (dict(kind="xrd", x=[]), "two_theta"),
    (dict(kind="xrd", x=[30.0, 20.0, 10.0]), "two_theta"),
    (dict(kind="pdf", x=[5.0, 4.0]), "r"),
    (dict(kind="pdf", x_range=(0.5, 30.0, -0.01)), "x_range"),
    (dict(kind="debye"), "diameter_nm"),
    (dict(kind="foo"), "kind"),
])
def test_simulate_bad_input(kw, param):
    with pytest.raises(ValueError, match=param):
        simulate(reference.ni_fcc(), **kw)


def test_simulate_empty_structure_and_unknown_element():
    from pymatgen.core import Lattice, Structure

    with pytest.raises(ValueError, match="structure"):
        simulate(Structure(Lattice.cubic(4.0), [], []), "xrd")
    with pytest.raises(ValueError, match="numbers"):
        simulate(Structure(Lattice.cubic(4.0), ["Es"], [[0, 0, 0]]), "xrd")


@pytest.fixture
def cif(tmp_path):
    p = tmp_path / "CdSe.cif"
    reference.cdse_zincblende().to(filename=str(p))
    return p


def test_cli_simulate_xrd_pdf_debye(cif, tmp_path):
    from diffpy_diffusion.cli import cli

    run = CliRunner().invoke
    out = tmp_path / "out.xy"
    png = tmp_path / "out.png"
    r = run(cli, ["simulate", str(cif), "--xrd", "--wavelength", "1.5406", "--size", "2nm",
                  "--two-theta", "10:90:0.02", "-o", str(out), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    data = np.loadtxt(out)
    assert data.shape == (4001, 2) and data[0, 0] == pytest.approx(10.0) and data[-1, 0] == pytest.approx(90.0)
    assert png.stat().st_size > 1000
    gr = tmp_path / "out.gr"
    r = run(cli, ["simulate", str(cif), "--pdf", "--rmax", "30", "--qmax", "25", "--qdamp", "0.04", "-o", str(gr)])
    assert r.exit_code == 0, r.output
    assert np.loadtxt(gr)[-1, 0] == pytest.approx(30.0)
    r = run(cli, ["simulate", str(cif), "--debye", "--diameter", "20A", "--range", "1", "8", "0.05",
                  "-o", str(tmp_path / "deb.xy")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args", [
    ["--xrd", "--size", "0nm"],
    ["--xrd", "--two-theta", "90:10:0.02"],
    ["--xrd", "--two-theta", "10:90"],
    ["--pdf", "--rmax", "0"],
    ["--debye"],
])
def test_cli_simulate_bad_input_exit_2(cif, args):
    from diffpy_diffusion.cli import cli

    r = CliRunner().invoke(cli, ["simulate", str(cif), *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
