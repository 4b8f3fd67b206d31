"""Evaluation modes: PDF targets (issue 18), PXRD targets by pymatgen (issue 17), and bad PDF input.

References are independent of our forward models: pdffit2 (PDFgui's engine) for the G(r) of a
Ni particle, the fcc first shell (a/√2, 12 neighbours times the sphere's envelope), pymatgen's
``XRDCalculator`` peak list and the Scherrer equation.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.cli import cli
from diffpy_diffusion.errors import DiffpyDiffusionError, InputFileError
from diffpy_diffusion.evaluate import simulate_pdf_target, simulate_pymatgen_target
from diffpy_diffusion.io import check_pdf_grid, read_observation

A_NI = 3.524  # Å, fcc Ni


def _ni() -> Structure:
    return Structure(Lattice.cubic(A_NI), ["Ni"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _sphere_envelope(r, d):
    """Characteristic function of a sphere of diameter d (PDFgui's spdiameter envelope)."""
    x = np.asarray(r) / d
    return np.where(x < 1, 1 - 1.5 * x + 0.5 * x**3, 0.0)


@pytest.fixture(scope="module")
def ni_pdf():
    """A 3 nm Ni particle's G(r), without noise (the noise is tested on its own)."""
    return simulate_pdf_target(_ni(), 3.0, noise=0.0)


# --------------------------------------------------------------------------- PDF targets


def test_pdf_target_matches_pdffit2_bulk_ni_with_sphere_envelope(ni_pdf):
    from diffpy.pdffit2 import PdfFit, redirect_stdout
    from diffpy.structure import Atom, Lattice as DLattice, Structure as DStructure

    obs = ni_pdf
    ds = DStructure([Atom("Ni", xyz) for xyz in ([0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5])],
                    lattice=DLattice(A_NI, A_NI, A_NI, 90, 90, 90))
    for atom in ds:
        atom.Uisoequiv = 0.005
    redirect_stdout(io.StringIO())
    try:
        pf = PdfFit()
        pf.add_structure(ds)
        pf.alloc("X", 20.0, 0.04, float(obs.x[0]), float(obs.x[-1]), len(obs.x))
        pf.setvar("spdiameter", 30.0)
        pf.calc()
        ref = np.asarray(pf.getpdf_fit())
    finally:
        import sys

        redirect_stdout(sys.stdout)
    rw = math.sqrt(np.sum((obs.y - ref) ** 2) / np.sum(ref**2))
    # a cut sphere is one particle, the envelope the average over all cuts: a few % apart
    assert rw < 0.05, rw
    # what a measured .gr carries, and the grid of the protocol
    assert (obs.kind, obs.x_kind, obs.radiation) == ("pdf", "r", "xray")
    assert obs.qmax == 20.0 and obs.qdamp == 0.04 and obs.size_nm == 3.0
    assert obs.x[0] == pytest.approx(1.0) and obs.x[-1] == pytest.approx(30.0)
    np.testing.assert_allclose(np.diff(obs.x), 0.01, atol=1e-9)


def test_pdf_target_first_shell_of_fcc_ni(ni_pdf):
    r, g = ni_pdf.x, ni_pdf.y
    near = r < 3.0
    r1 = r[near][np.argmax(g[near])]
    assert abs(r1 - A_NI / math.sqrt(2)) < 0.015
    # R(r) = r (G + 4π r ρ0 γ0): its first peak holds the 12 neighbours of fcc, fewer at the surface
    rho0 = 4 / A_NI**3
    rdf = r * (g + 4 * math.pi * r * rho0 * _sphere_envelope(r, 30.0))
    shell = (r >= 2.1) & (r <= 2.9)
    cn = np.trapezoid(rdf[shell], r[shell])
    assert cn == pytest.approx(12 * _sphere_envelope(A_NI / math.sqrt(2), 30.0), rel=0.03)


def test_pdf_target_noise_is_seeded_and_as_stated(ni_pdf):
    a = simulate_pdf_target(_ni(), 3.0, seed=7)
    b = simulate_pdf_target(_ni(), 3.0, seed=7)
    c = simulate_pdf_target(_ni(), 3.0, seed=8)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.y, c.y)
    res = a.y - ni_pdf.y
    assert np.std(res) == pytest.approx(a.meta["noise"] * np.max(np.abs(ni_pdf.y)), rel=0.02)
    # band-limited to Qmax like the noise of a G(r) transformed from F(Q): no power above Qmax
    spec = np.abs(np.fft.rfft(res - res.mean()))
    q = 2 * np.pi * np.fft.rfftfreq(len(res), d=0.01)
    assert spec[q > 25].max() < 0.05 * spec[q < 20].max()


# --------------------------------------------------------------------------- pymatgen PXRD targets


def test_pymatgen_target_peaks_are_pymatgens_and_scherrer_wide():
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    lam, size_nm = 1.54184, 10.0
    obs = simulate_pymatgen_target(_ni(), size_nm, noise=0.0)
    tt = np.degrees(2 * np.arcsin(obs.x * lam / (4 * np.pi)))
    y = obs.y
    ref = XRDCalculator(wavelength=lam, debye_waller_factors={"Ni": 8 * np.pi**2 * 0.005}).get_pattern(
        _ni(), two_theta_range=(0, 90))
    strong = ref.x[ref.y > 10]
    assert len(strong) == 3  # 111, 200, 220 of fcc below 90°
    for t0 in strong:
        win = np.flatnonzero(np.abs(tt - t0) < 1.0)
        k = win[np.argmax(y[win])]
        # vertex of the parabola through the top three points
        x3, y3 = tt[k - 1:k + 2], y[k - 1:k + 2]
        c = np.polyfit(x3, y3, 2)
        assert -c[1] / (2 * c[0]) == pytest.approx(t0, abs=0.03)
        # full width at half maximum, by linear interpolation on both flanks
        half = y[k] / 2
        lo = k
        while y[lo] > half:
            lo -= 1
        hi = k
        while y[hi] > half:
            hi += 1
        left = np.interp(half, [y[lo], y[lo + 1]], [tt[lo], tt[lo + 1]])
        right = np.interp(half, [y[hi], y[hi - 1]], [tt[hi], tt[hi - 1]])
        scherrer = np.degrees(0.9 * lam / (10 * size_nm * np.cos(np.radians(t0 / 2))))
        assert right - left == pytest.approx(scherrer, rel=0.05)
    assert obs.x[-1] == pytest.approx(4 * np.pi * np.sin(np.radians(45)) / lam, abs=0.01)  # 2θ ≤ 90°


# --------------------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    import pandas as pd

    path = tmp_path_factory.mktemp("eval") / "tiny.csv"
    pd.DataFrame({"material_id": ["ni"], "cif": [_ni().to(fmt="cif")]}).to_csv(path, index=False)
    return path


def _evaluate(csv, out, *extra):
    args = ["evaluate", "--dataset", str(csv), "--limit", "1", "--n", "4", "--top", "2", "--backend", "templates",
            "--no-energy", "-o", str(out), "--json", *extra]
    return CliRunner().invoke(cli, args)


def test_cli_evaluate_pdf_end_to_end_and_resume_keeps_modes_apart(tiny_csv, tmp_path):
    out = tmp_path / "pdf"
    res = _evaluate(tiny_csv, out, "--pdf", "--size", "3nm")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["meta"]["data_kind"] == "pdf" and doc["meta"]["pdf"]["qmax"] == 20.0
    row = doc["summary"]["templates"]
    assert row["targets"] == 1 and row["errors"] == 0 and row["top1"] == 1.0  # fcc Ni from a clean G(r)
    md = (out / "evaluation.md").read_text()
    assert "PDF data" in md and "Qmax 20" in md and "mean Rw (rank 1)" in md
    # the same folder resumed as a PXRD run: refused before any work, naming the setting
    res = _evaluate(tiny_csv, out, "--size", "3nm", "--resume")
    assert res.exit_code == 2 and "data_kind: 'pdf' there, 'xrd' now" in res.output
    assert "Traceback" not in res.output


def test_cli_evaluate_pymatgen_patterns_end_to_end(tiny_csv, tmp_path):
    res = _evaluate(tiny_csv, tmp_path / "pmg", "--simulator", "pymatgen")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["meta"]["simulator"] == "pymatgen" and doc["meta"]["data_kind"] == "xrd"
    assert doc["summary"]["templates"]["top1"] == 1.0
    assert "pymatgen" in (tmp_path / "pmg" / "evaluation.md").read_text()


def test_cli_evaluate_pdf_with_pymatgen_simulator_is_refused(tiny_csv, tmp_path):
    res = _evaluate(tiny_csv, tmp_path / "x", "--pdf", "--simulator", "pymatgen")
    assert res.exit_code == 2 and "PXRD" in res.output and "Traceback" not in res.output


def test_run_evaluation_rejects_unknown_mode():
    from diffpy_diffusion.evaluate import run_evaluation

    with pytest.raises(DiffpyDiffusionError, match="data kind 'sas'"):
        run_evaluation(data_kind="sas")


# --------------------------------------------------------------------------- PDF input the model cannot use


def _gr(path, header: str = "", r=None):
    r = np.arange(0.01, 30.0, 0.01) if r is None else np.asarray(r)
    path.write_text(header + "".join(f"{a:.4f} {np.sin(3 * a) * np.exp(-a / 10):.6f}\n" for a in r))
    return path


def test_header_qmax_contradicting_the_option(tmp_path):
    p = _gr(tmp_path / "ni.gr", "# qmax = 25.0\n# mode = xray\n")
    with pytest.raises(InputFileError, match=r"ni\.gr: the header says qmax = 25 1/Å but qmax = 20 1/Å"):
        read_observation(p, qmax=20.0)
    assert read_observation(p, qmax=25.0).qmax == 25.0  # the same value is no contradiction
    assert read_observation(p).qmax == 25.0


@pytest.mark.parametrize("header,rgrid,message", [
    ("# mode = neutron\n", None, "the header says neutron data but --radiation xray"),
    ("", np.arange(0.01, 4.0, 0.01), "r max = 3.99 Å"),
    ("", np.arange(0.5, 30.0, 0.5), "r step 0.5 Å"),
    ("", np.r_[np.arange(1, 10, 0.01), [9.5], np.arange(10, 20, 0.01)], "must increase"),
])
def test_cli_propose_one_line_errors_for_unusable_pdf(tmp_path, header, rgrid, message):
    p = _gr(tmp_path / "bad.gr", header, rgrid)
    res = CliRunner().invoke(cli, ["propose", str(p), "-c", "Ni", "--radiation", "xray", "--backend", "random",
                                   "--n", "2", "--no-refine", "-q"])
    assert res.exit_code == 2, res.output
    lines = [s for s in res.output.splitlines() if s.strip()]
    assert len(lines) == 1 and "bad.gr" in lines[0] and message in lines[0], res.output


def test_check_pdf_grid_accepts_measured_like_grids(tmp_path):
    obs = read_observation(_gr(tmp_path / "ok.gr", "# qmax = 25\n"))
    check_pdf_grid(obs)  # r 0.01-30 Å, step 0.01 Å: fine
    xrd = simulate_pymatgen_target(_ni(), 10.0)
    check_pdf_grid(xrd)  # not a PDF: nothing to check
