"""Pattern readers on real-looking files: headers, comments, CRLF, tabs, BOM; and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from diffpy_diffusion.errors import InputFileError
from diffpy_diffusion.io import parse_header, read_observation, write_xy

X = np.round(np.arange(10.0, 20.0, 0.5), 4)
Y = np.round(100 + 50 * np.sin(X), 4)


def _write(path, text, *, crlf=False, bom=False, encoding="utf-8"):
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(data)
    return path


def _rows(sep=" ", cols=2, sigma=None):
    out = []
    for i, (x, y) in enumerate(zip(X, Y)):
        row = [f"{x}", f"{y}"]
        if cols == 3:
            row.append(f"{sigma[i]}")
        out.append(sep.join(row))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ diffraction formats


def test_xy_hash_header_crlf_tabs(tmp_path):
    text = "# sample: NaCl nanocrystals\n# wavelength = 1.5406\n# 2theta\tintensity\n" + _rows("\t")
    obs = read_observation(_write(tmp_path / "a.xy", text, crlf=True))
    assert obs.kind == "xrd" and obs.x_kind == "2theta"
    np.testing.assert_allclose(obs.x, X)
    np.testing.assert_allclose(obs.y, Y)
    assert obs.wavelength == pytest.approx(1.5406)
    assert obs.sigma is None


def test_xye_sigma_and_bom(tmp_path):
    sig = np.sqrt(Y)
    text = "' GSAS-style comment\n! 2Theta Intensity ESD\n" + _rows("  ", cols=3, sigma=sig)
    obs = read_observation(_write(tmp_path / "a.xye", text, bom=True), wavelength=1.54)
    np.testing.assert_allclose(obs.sigma, sig)
    assert obs.x_kind == "2theta"


def test_xy_three_columns_third_ignored_without_label(tmp_path):
    text = "# 2theta I\n" + "".join(f"{x} {y} 7\n" for x, y in zip(X, Y))
    obs = read_observation(_write(tmp_path / "a.xy", text))
    assert obs.sigma is None and obs.meta["ignored_columns"] == [3]


def test_csv_header_row(tmp_path):
    text = "Q (1/A),intensity\n" + _rows(",")
    obs = read_observation(_write(tmp_path / "a.csv", text, bom=True))
    assert obs.x_kind == "q"
    np.testing.assert_allclose(obs.x, X)


def test_dat_step_scan(tmp_path):
    text = "10 0.5 19.5\n" + "\n".join(f"{y}" for y in Y) + "\n"
    obs = read_observation(_write(tmp_path / "scan.dat", text, crlf=True))
    assert obs.x_kind == "2theta"
    np.testing.assert_allclose(obs.x, X)
    np.testing.assert_allclose(obs.y, Y)


def test_dat_step_scan_wrong_count(tmp_path):
    text = "10 0.5 30\n" + "\n".join(f"{y}" for y in Y) + "\n"
    with pytest.raises(InputFileError, match="implies"):
        read_observation(_write(tmp_path / "scan.dat", text))


def test_fit2d_chi(tmp_path):
    text = f"ni_300K.tif: Integrated\n2-Theta Angle (Degrees)\nIntensity\n{len(X):>10d}\n" + _rows("  ")
    obs = read_observation(_write(tmp_path / "a.chi", text))
    assert obs.x_kind == "2theta" and len(obs.x) == len(X)


def test_fit2d_chi_q(tmp_path):
    text = f"title\nQ (Angstroms-1)\nIntensity\n{len(X)}\n" + _rows()
    obs = read_observation(_write(tmp_path / "a.chi", text))
    assert obs.x_kind == "q"


def test_x_axis_ambiguous_names_option(tmp_path):
    path = _write(tmp_path / "a.xy", _rows())
    with pytest.raises(InputFileError, match=r"--x 2theta or --x q"):
        read_observation(path)
    assert read_observation(path, x_kind="q").x_kind == "q"
    # with a wavelength, values beyond 4π/λ can only be 2θ
    assert read_observation(path, wavelength=1.5406).x_kind == "2theta"


def test_both_axes_in_header_is_ambiguous(tmp_path):
    text = "# converted from 2theta to Q (1/A)?\n" + _rows()
    with pytest.raises(InputFileError, match="both"):
        read_observation(_write(tmp_path / "a.xy", text))


def test_decreasing_x_is_reversed(tmp_path):
    text = "# 2theta I\n" + "".join(f"{x} {y}\n" for x, y in zip(X[::-1], Y[::-1]))
    obs = read_observation(_write(tmp_path / "a.xy", text))
    np.testing.assert_allclose(obs.x, X)
    np.testing.assert_allclose(obs.y, Y)


def test_roundtrip_write_xy(tmp_path):
    p = write_xy(X, Y, tmp_path / "w.xy", header="simulated", columns=("2theta_deg", "intensity"))
    obs = read_observation(p, composition="NaCl")
    np.testing.assert_allclose(obs.x, X)
    assert obs.x_kind == "2theta" and obs.composition == {"Na": 1.0, "Cl": 1.0}


def test_wavelength_object_carries_ka2(tmp_path):
    from diffpy_diffusion.io import parse_wavelength

    obs = read_observation(_write(tmp_path / "a.xy", "# 2theta I\n" + _rows()), wavelength=parse_wavelength("CuKa"))
    assert obs.wavelength == pytest.approx(1.540598)
    assert obs.wavelength2 == pytest.approx(1.544426)


# ------------------------------------------------------------------ PDF formats

PDFGETX3 = """[DEFAULT]
version = pdfgetx-2.1.1

# PDF calculation setup
dataformat = QA
inputfile = cdse.chi
mode = xray
wavelength = 0.1839
composition = CdSe
qmaxinst = 28.0
qmin = 0.6
qmax = 24.5
rmin = 0.0
rmax = 30.0
rstep = 0.01

# End of config --------------------------------------------------------------
#### start data
#S 1
#L r($\\AA$)  G($\\AA^{-2}$)
"""


def test_gr_pdfgetx3_header(tmp_path):
    r = np.arange(0.01, 1.0, 0.01)
    text = PDFGETX3 + "".join(f"{a:.2f} {np.sin(a):.6f}\n" for a in r)
    obs = read_observation(_write(tmp_path / "cdse.gr", text))
    assert obs.kind == "pdf" and obs.x_kind == "r"
    assert obs.qmax == pytest.approx(24.5)  # not qmaxinst
    assert obs.qmin == pytest.approx(0.6)
    assert obs.wavelength == pytest.approx(0.1839)
    assert obs.radiation == "xray"
    assert obs.meta["header_composition"] == "CdSe"
    assert obs.composition == {}  # header composition is not trusted


def test_gr_pdfgui_fit_header_with_dg(tmp_path):
    text = ("# PDFgui fit result\n# qdamp = 0.0412\n# qbroad = 0.011\n# Qmax = 26.0\n"
            "# type = N\n" + "".join(f"{a:.2f} {np.sin(a):.5f} 0.0 0.01\n" for a in np.arange(1, 2, 0.01)))
    obs = read_observation(_write(tmp_path / "fit.fgr", text, crlf=True))
    assert obs.qdamp == pytest.approx(0.0412) and obs.qbroad == pytest.approx(0.011)
    assert obs.qmax == pytest.approx(26.0)
    assert obs.radiation == "neutron"
    np.testing.assert_allclose(obs.sigma, 0.01)


def test_gr_user_radiation_contradicting_header_is_an_error(tmp_path):
    # issue 18: a G(r) transformed from neutron data is not refined with x-ray weights without a word
    text = "# type = N\n" + "".join(f"{a:.2f} {np.sin(a):.5f}\n" for a in np.arange(1, 2, 0.01))
    with pytest.raises(InputFileError, match="a.gr: the header says neutron data but --radiation xray"):
        read_observation(_write(tmp_path / "a.gr", text), radiation="xray")
    assert read_observation(tmp_path / "a.gr", radiation="neutron").radiation == "neutron"


def test_gr_x_option_must_be_r(tmp_path):
    text = "".join(f"{a:.2f} {np.sin(a):.5f}\n" for a in np.arange(1, 2, 0.01))
    with pytest.raises(InputFileError, match="PDF"):
        read_observation(_write(tmp_path / "a.gr", text), x_kind="q")


def test_parse_header_pdfgetx2_style():
    head = "## S(q)  qmin=0.010000    qmax=27.000000    qgrid=0.0\noptqmin=20.0000    optqmax=40.0000\n" \
           "lambda=0.142773    energy=86.8406\n"
    h = parse_header(head)
    assert h["qmax"] == pytest.approx(27.0)
    assert h["wavelength"] == pytest.approx(0.142773)


def test_parse_header_tube_doublet():
    h = parse_header("# 2theta_deg intensity ; Cu Kalpha1/Kalpha2 1.540560/1.544390 A")
    assert (h["wavelength"], h["wavelength2"]) == (pytest.approx(1.54056), pytest.approx(1.54439))
    h = parse_header("# measured with Mo K-alpha")
    assert h["wavelength"] == pytest.approx(0.709319)


# ------------------------------------------------------------------ real files in $DIFFPY_DIFFUSION_DATA


def test_real_pdfgetx2_file_matches_loadtxt(shared_data):
    path = shared_data / "measured/ni_xray_2008/ni-q27r60-xray.gr"
    lines = path.read_text().splitlines()
    skip = max(i for i, s in enumerate(lines) if s.startswith("#L")) + 1
    ref = np.loadtxt(path, skiprows=skip)  # the README's independent recipe
    obs = read_observation(path)
    np.testing.assert_array_equal(obs.x, ref[:, 0])
    np.testing.assert_array_equal(obs.y, ref[:, 1])
    np.testing.assert_array_equal(obs.sigma, ref[:, 3])
    assert obs.qmax == pytest.approx(27.0)
    assert obs.wavelength == pytest.approx(0.142773)
    assert obs.radiation == "xray"


@pytest.mark.parametrize("rel,qmax,wavelength,radiation", [
    ("measured/ni_xray_xpdfsuite/Ni.gr", 25.0, 0.1836, "xray"),
    ("measured/pt_nanoparticles_xray/Pt-nanoparticles.gr", 25.0, 0.1863, "xray"),
    ("measured/ni_neutron_npdf/ni-q27r100-neutron.gr", 27.0, None, "neutron"),
    ("measured/si_xray_2008/si-q27r60-xray.gr", 27.0, 0.142773, "xray"),
    ("calculated_pdf/srreal_testdata/CdSe_cadmoselite_N.fgr", 40.0, None, "neutron"),
    ("measured/cds_zns_coreshell_nano/CdS_ZnS_nano.gr", None, None, "xray"),
    ("measured/c60/C60.gr", None, None, "xray"),
])
def test_real_gr_headers(shared_data, rel, qmax, wavelength, radiation):
    obs = read_observation(shared_data / rel)
    assert obs.kind == "pdf" and len(obs.x) > 100
    assert obs.qmax == (pytest.approx(qmax) if qmax else None)
    assert obs.wavelength == (pytest.approx(wavelength) if wavelength else None)
    assert obs.radiation == radiation
    assert np.all(np.diff(obs.x) > 0)


def test_real_xrd_files(shared_data):
    d = shared_data / "measured_xrd/tacr2o6_mattergen"
    a = read_observation(d / "xrd_measurement_TaCr2O6.dat")  # start/step/end + one column, CRLF
    b = read_observation(d / "xrd_measurement_TaCr2O6.xy")
    np.testing.assert_allclose(a.x, b.x, atol=1e-9)
    np.testing.assert_array_equal(a.y, b.y)
    assert b.wavelength == pytest.approx(1.54056) and b.wavelength2 == pytest.approx(1.54439)
    s = shared_data / "measured_xrd/li_mn_ti_o_f_xrd_autoanalyzer/spectra/MnO.xy"
    with pytest.raises(InputFileError, match="--x"):
        read_observation(s)
    assert read_observation(s, x_kind="2theta").x[0] == pytest.approx(10.0)


def test_real_iq_file(shared_data):
    obs = read_observation(shared_data / "measured/ni_xray_2008/ni.iq")
    assert obs.kind == "xrd" and obs.x_kind == "q"


# ------------------------------------------------------------------ errors: file + line, for every reader

BAD = {
    "empty": (b"", 1, "empty"),
    "blank": (b"\n\n   \n", 1, "empty"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), 3, "binary"),
    "text": (b"# 2theta I\n10 1\n10.5 2\n11 x3\n11.5 4\n", 4, "column 2"),
    "nan": (b"# 2theta I\n10 1\n10.5 nan\n11 3\n", 3, "non-finite"),
    "single": (b"# 2theta\n10\n10.5\n11\n11.5\n", 2, "one column"),
    "ragged": (b"# 2theta I\n10 1\n10.5 2 3\n11 3\n", 3, "2 numbers"),
    "unsorted": (b"# 2theta I\n10 1\n12 2\n11 3\n13 4\n", 4, "increase"),
}


@pytest.mark.parametrize("ext", [".xy", ".xye", ".dat", ".csv", ".chi", ".gr", ".txt"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_give_file_and_line(tmp_path, ext, case):
    content, line, what = BAD[case]
    if ext == ".csv":
        content = content.replace(b" ", b",")
    path = tmp_path / f"bad_{case}{ext}"
    path.write_bytes(content)
    with pytest.raises(InputFileError) as ei:
        read_observation(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert ei.value.line == line, msg
    assert what in msg, msg


def test_fullprof_free_format_step_scan(tmp_path):
    # FullProf INSTRM=0: "start step end" then counts, several per line
    counts = [f"{y:.1f}" for y in Y]
    body = "\n".join(" ".join(counts[i:i + 8]) for i in range(0, len(counts), 8))
    obs = read_observation(_write(tmp_path / "fp.dat", "10.0 0.5 19.5\n" + body + "\n"))
    np.testing.assert_allclose(obs.x, X)
    np.testing.assert_allclose(obs.y, np.round(Y, 1))


def test_fullprof_xydata_header(tmp_path):
    text = "XYDATA\nINTER:   1.00000   1.00000   0\nTEMP 300\nTITLE NaCl 2theta scan\n" + _rows()
    obs = read_observation(_write(tmp_path / "fp.dat", text), wavelength=1.5406)
    assert obs.x_kind == "2theta" and len(obs.x) == len(X)


def test_json_observation_roundtrip(tmp_path):
    import dataclasses

    from diffpy_diffusion.io import write_json
    from diffpy_diffusion.types import Observation

    obs = Observation(kind="pdf", x=np.arange(1, 5, 0.5), y=np.arange(8.0), x_kind="r", composition="Ni",
                      qmax=25.0, qdamp=0.04)
    p = write_json(dataclasses.asdict(obs), tmp_path / "obs.json")
    back = read_observation(p)
    np.testing.assert_allclose(back.y, obs.y)
    assert back.qmax == 25.0 and back.composition == {"Ni": 1.0} and back.kind == "pdf"
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": [1, 2,\n 3], "y": [1, 2 3]}')
    with pytest.raises(InputFileError) as ei:
        read_observation(bad)
    assert ei.value.line == 2


def test_pyfai_q_nm_header(tmp_path):
    q_nm = np.linspace(5.0, 80.0, 40)
    text = ("# == pyFAI calibration ==\n# Distance Sample to Detector: 0.2 m\n# Wavelength: 1.5406e-10\n"
            "# --> nacl.edf\n#  q_nm^-1             I \n" + "".join(f"{a:.6f} {1 + a:.3f}\n" for a in q_nm))
    obs = read_observation(_write(tmp_path / "nacl.dat", text))
    assert obs.x_kind == "q"
    np.testing.assert_allclose(obs.x, q_nm / 10.0)
    assert obs.wavelength == pytest.approx(1.5406)


def test_pyfai_2th_deg_header(tmp_path):
    text = "# pyFAI\n#  2th_deg             I \n" + _rows()
    assert read_observation(_write(tmp_path / "a.xy", text)).x_kind == "2theta"


def test_read_observation_takes_wavelength_text_like_the_cli(tmp_path):
    """``wavelength="CuKa"`` in the API means what ``--wavelength CuKa`` means (Kα1 + Kα2 from the tube table)."""
    import pytest

    from diffpy_diffusion.io import read_observation

    f = tmp_path / "p.xy"
    f.write_text("".join(f"{20 + 0.1 * i:.2f} {1 + (i % 7)}\n" for i in range(50)))
    obs = read_observation(f, wavelength="CuKa")
    assert obs.wavelength == pytest.approx(1.5406, abs=1e-4) and obs.wavelength2 == pytest.approx(1.5444, abs=1e-4)
    mono = read_observation(f, wavelength="CuKa1")
    assert mono.wavelength == pytest.approx(1.5406, abs=1e-4) and mono.wavelength2 is None
    assert read_observation(f, wavelength="0.7093").wavelength == pytest.approx(0.7093)
    with pytest.raises(ValueError, match="unknown wavelength 'Kryptonite'.*CuKa"):
        read_observation(f, wavelength="Kryptonite")
