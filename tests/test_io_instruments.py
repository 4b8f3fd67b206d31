"""Instrument-file readers (issue 15): pdCIF, XRDML, GSAS, Rigaku RAS, Bruker BRML.

The reference files in ``tests/data/instruments/`` were written by hand after the published
formats and hold one and the same measurement -- the Si 111 reflection in Cu Kα, 51 steps of
0.05° from 27° (``si_111.xy``, read by the column reader, is the reference) -- so every
reader must give back the same points, plus the radiation its file states.  The peak must
sit where Bragg's law puts Si 111 (a = 5.4309 Å, NIST SRM 640) for the file's Kα1.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from diffpy_diffusion.errors import InputFileError, ResourceLimitError
from diffpy_diffusion.io import read_observation
from diffpy_diffusion.io.instruments import read_brml, read_gsas, read_pdcif, read_rigaku_ras, read_xrdml
from diffpy_diffusion.testing import ReaderContract

DATA = Path(__file__).parent / "data" / "instruments"
SI_A = 5.4309  # Å, NIST SRM 640 silicon
D_111 = SI_A / math.sqrt(3)


def make_brml(src: Path, dst: Path) -> Path:
    """Zip a folder of Bruker XML files into a ``.brml`` (the format is a plain zip)."""
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(src).as_posix())
    return dst


@pytest.fixture(scope="module")
def reference():
    return read_observation(DATA / "si_111.xy")


@pytest.fixture
def brml(tmp_path):
    return make_brml(DATA / "si_111_brml", tmp_path / "si_111.brml")


# file, reader, Kα1 (Å), Kα2 (Å) or None, Kα2/Kα1 ratio or None, σ of the first point or None
CASES = [
    ("si_meas_counts.cif", read_pdcif, 1.540562, 1.544390, 0.5, math.sqrt(53)),   # weights 1.0 / 0.5 / dummy 0
    ("si_proc_su.cif", read_pdcif, 1.54056, None, None, 7.0),                     # s.u. in parentheses
    ("si_111.xrdml", read_xrdml, 1.540562, 1.544390, 0.5, None),                  # intended="K-Alpha"
    ("si_111_counts.xrdml", read_xrdml, 1.540598, None, None, None),              # intended="K-Alpha 1"
    ("si_111.gsa", read_gsas, 1.540598, 1.544426, None, math.sqrt(53)),            # STD: σ = √(I/NC); title "Cu Ka"
    ("si_111_esd.gsa", read_gsas, 1.540562, None, None, 7.28),                    # ESD pairs
    ("si_111.fxye", read_gsas, 1.540598, 1.544426, None, 7.2801),                 # FXYE, x in centidegrees
    ("si_111.ras", read_rigaku_ras, 1.540593, 1.544414, None, None),              # attenuator column applied
    ("si_111.brml", read_brml, 1.5406, 1.54439, 0.5, None),
]


@pytest.mark.parametrize(("name", "reader", "l1", "l2", "ratio", "sigma0"), CASES, ids=[c[0] for c in CASES])
def test_reference_files(name, reader, l1, l2, ratio, sigma0, reference, brml):
    path = brml if name.endswith(".brml") else DATA / name
    obs = reader(path)
    assert obs.kind == "xrd" and obs.x_kind == "2theta"
    np.testing.assert_allclose(obs.x, reference.x, atol=1e-9)
    np.testing.assert_allclose(obs.y, reference.y, rtol=1e-9)
    assert obs.wavelength == pytest.approx(l1, abs=1e-9)
    assert obs.wavelength2 == (None if l2 is None else pytest.approx(l2, abs=1e-9))
    if l2 is not None:
        # the ratio the file states, else 0.5 and a note saying it was not in the file
        assert obs.ka2_ratio == pytest.approx(ratio if ratio is not None else 0.5)
        assert ("ka2_ratio_from" in obs.meta) == (ratio is None)
    if sigma0 is None:
        assert obs.sigma is None
    else:
        assert obs.sigma[0] == pytest.approx(sigma0, rel=1e-3)
    assert obs.meta["wavelength_from"] and obs.source == str(path)
    # physics: the strongest point is the Si 111 Kα1 peak of Bragg's law for the file's wavelength
    two_theta = 2 * math.degrees(math.asin(obs.wavelength / (2 * D_111)))
    assert abs(obs.x[np.argmax(obs.y)] - two_theta) <= 0.05


def test_read_observation_dispatches_by_extension(brml, reference):
    """The built-in plugin registers every reader for its extensions."""
    for path in (DATA / "si_111.xrdml", DATA / "si_111.ras", DATA / "si_111.fxye", DATA / "si_meas_counts.cif", brml):
        obs = read_observation(path, composition="Si")
        assert obs.formula == "Si" and np.array_equal(obs.y, reference.y), path.name


def test_user_wavelength_overrides_and_file_value_is_kept():
    from diffpy_diffusion.io import parse_wavelength

    obs = read_xrdml(DATA / "si_111.xrdml", wavelength=parse_wavelength("MoKa"))
    assert obs.wavelength == pytest.approx(0.709319) and obs.wavelength2 == pytest.approx(0.713609)
    assert obs.meta["wavelength_from"] == "user" and obs.meta["file_wavelength"] == pytest.approx(1.540562)


def test_xrdml_counts_are_multiplied_by_attenuation_factors():
    text = (DATA / "si_111_counts.xrdml").read_text()
    att = np.array(text.split("<beamAttenuationFactors>")[1].split("<")[0].split(), float)
    raw = np.array(text.split('<counts unit="counts">')[1].split("<")[0].split(), float)
    obs = read_xrdml(DATA / "si_111_counts.xrdml")
    assert np.any(att != 1)
    np.testing.assert_allclose(obs.y, raw * att)


def test_pdcif_zero_weight_points_are_dropped(tmp_path):
    rows = "\n".join(f"{10 + 0.1 * i:.1f} {100 + i} {0 if i == 2 else 0.01}" for i in range(6))
    f = tmp_path / "w.cif"
    f.write_text("data_w\n_diffrn_radiation_wavelength 0.7093\nloop_\n_pd_proc_2theta_corrected\n"
                 f"_pd_proc_intensity_total\n_pd_proc_ls_weight\n{rows}\n")
    obs = read_pdcif(f)
    assert len(obs.x) == 5 and 10.2 not in np.round(obs.x, 3) and obs.meta["excluded_points"] == 1
    np.testing.assert_allclose(obs.sigma, 10.0)  # 1/√0.01


def test_pdcif_empty_wavelength_loop_is_a_clear_error(tmp_path):
    """A wavelength loop header with no rows (found by the fuzz test) names the file and line."""
    from diffpy_diffusion.errors import InputFileError

    rows = "".join(f"{10 + 0.1 * i:.1f} {100 + i}\n" for i in range(6))
    f = tmp_path / "e.cif"
    f.write_text("data_e\nloop_\n_diffrn_radiation_wavelength\nloop_\n_pd_proc_2theta_corrected\n"
                 f"_pd_proc_intensity_total\n{rows}")
    with pytest.raises(InputFileError, match="no values") as err:
        read_pdcif(f)
    assert "e.cif:2:" in str(err.value)  # file and line of the loop


def test_pdcif_d_spacing_is_read_as_q(tmp_path):
    f = tmp_path / "d.cif"
    d = [3.0, 2.5, 2.0, 1.5]
    f.write_text("data_d\nloop_\n_pd_proc_d_spacing\n_pd_proc_intensity_net\n"
                 + "".join(f"{v} {10 * k + 1}\n" for k, v in enumerate(d)))
    obs = read_pdcif(f)  # Q needs no wavelength
    assert obs.x_kind == "q"
    np.testing.assert_allclose(obs.x, 2 * np.pi / np.array(d))


# --------------------------------------------------------------------------- errors: one line, file and line


def _no_wavelength_files(tmp_path):
    gsa = tmp_path / "plain.gsa"
    gsa.write_text((DATA / "si_111.gsa").read_text().replace("Cu Ka1/Ka2 ", ""))
    cif = tmp_path / "plain.cif"
    xy = np.loadtxt(DATA / "si_111.xy")
    cif.write_text("data_plain\nloop_\n_pd_meas_2theta_scan\n_pd_meas_counts_total\n"
                   + "".join(f"{a:.2f} {int(b)}\n" for a, b in xy))
    xrdml = tmp_path / "plain.xrdml"
    t = (DATA / "si_111.xrdml").read_text()
    t = t[:t.index("<usedWavelength")] + t[t.index("</usedWavelength>") + 17:]
    xrdml.write_text(t.replace("<anodeMaterial>Cu</anodeMaterial>", ""))
    ras = tmp_path / "plain.ras"
    ras.write_text("\n".join(s for s in (DATA / "si_111.ras").read_text().splitlines()
                             if not s.startswith(("*HW_XG_WAVE", "*HW_XG_TARGET"))))
    return [(gsa, read_gsas), (cif, read_pdcif), (xrdml, read_xrdml), (ras, read_rigaku_ras)]


def test_no_wavelength_is_an_error_never_a_silent_cu_kalpha(tmp_path):
    for path, reader in _no_wavelength_files(tmp_path):
        with pytest.raises(InputFileError, match="no wavelength in the file; give --wavelength") as e:
            reader(path)
        assert str(path) in str(e.value), path.name
        assert reader(path, wavelength=1.5406).meta["wavelength_from"] == "user"


@pytest.mark.parametrize(("name", "edit", "message", "line"), [
    ("si_meas_counts.cif", lambda t: t.rsplit("\n", 3)[0] + "\n", "not a multiple|declares|number_of_points", None),
    ("si_meas_counts.cif", lambda t: t.replace("_pd_meas_number_of_points     51", "_pd_meas_number_of_points 52"),
     "_pd_meas_number_of_points is 52", 19),
    ("si_proc_su.cif", lambda t: t.replace("27.100", "27.1x0"), "expected a number, found '27.1x0'", 20),
    ("si_111.gsa", lambda t: "\n".join(t.splitlines()[:6]) + "\n", "declares 51 points, found 30", 6),
    ("si_111.gsa", lambda t: t.replace("CONST", "TIME_MAP"), "time-of-flight", 3),
    ("si_111.ras", lambda t: t.split("*RAS_INT_END")[0], "without \\*RAS_INT_END", None),
    ("si_111.ras", lambda t: t.replace("TwoThetaTheta", "Omega"), "scan axis 'Omega' is not 2θ", 12),
    ("si_111.xrdml", lambda t: t.replace("</intensities>", ""), "not well-formed XML", None),
    ("si_111.xrdml", lambda t: t.replace("<endPosition>29.5000", "<endPosition>29.5x"), "endPosition", 33),
])
def test_bad_files_give_one_line_with_file_and_line(tmp_path, name, edit, message, line):
    path = tmp_path / name
    path.write_text(edit((DATA / name).read_text()))
    reader = {".cif": read_pdcif, ".gsa": read_gsas, ".ras": read_rigaku_ras, ".xrdml": read_xrdml}[path.suffix]
    with pytest.raises(InputFileError, match=message) as e:
        reader(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(path))
    if line is not None:
        assert e.value.line == line, text


def test_xml_entity_declarations_are_refused(tmp_path):
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
            ' <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n]>\n'
            "<xrdMeasurements>&lol2;</xrdMeasurements>\n")
    f = tmp_path / "bomb.xrdml"
    f.write_text(bomb)
    with pytest.raises(InputFileError, match="DOCTYPE/ENTITY declaration") as e:
        read_xrdml(f)
    assert e.value.line == 2


def test_unknown_xml_encoding_is_a_one_line_error(tmp_path):
    """Found by the fuzzer: an encoding name Python has no codec for raised LookupError."""
    f = tmp_path / "odd.xrdml"
    f.write_bytes(b'<?xml version="1.0" encoding="u-tf-8"?>\n<xrdMeasurements/>\n')
    with pytest.raises(InputFileError, match="unknown text encoding") as e:
        read_xrdml(f)
    assert e.value.line == 1


def test_brml_zip_bomb_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPY_DIFFUSION_MAX_PATTERN_POINTS", "1000")  # member cap 256 kB
    f = tmp_path / "bomb.brml"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Experiment0/RawData0.xml", b"<RawData>" + b" " * 4_000_000 + b"</RawData>")
    assert f.stat().st_size < 100_000
    with pytest.raises(ResourceLimitError, match="inflates to more than"):
        read_brml(f)


def test_brml_not_a_zip_and_unknown_datum_layout(tmp_path, brml):
    junk = tmp_path / "junk.brml"
    junk.write_text("<RawData/>")
    with pytest.raises(InputFileError, match="not a zip archive"):
        read_brml(junk)
    src = tmp_path / "src"
    (src / "Experiment0").mkdir(parents=True)
    xml = (DATA / "si_111_brml" / "Experiment0" / "RawData0.xml").read_text()
    # counts and 2θ swapped: field 3 no longer runs inside the TwoTheta axis
    xml = xml.replace("<Datum>2,1,27.0000,13.5000,53</Datum>", "<Datum>2,1,53,13.5000,27.0000</Datum>")
    (src / "Experiment0" / "RawData0.xml").write_text(xml)
    with pytest.raises(InputFileError, match=r"unknown <Datum> layout") as e:
        read_brml(make_brml(src, tmp_path / "swapped.brml"))
    assert "swapped.brml[Experiment0/RawData0.xml]" in str(e.value)


def test_cli_one_line_exit_2(tmp_path):
    from diffpy_diffusion.cli import cli

    gsa, _ = _no_wavelength_files(tmp_path)[0]
    broken = tmp_path / "broken.ras"
    broken.write_text((DATA / "si_111.ras").read_text().replace("27.1000", "27.1.0"))
    for path, message in ((gsa, "no wavelength in the file; give --wavelength"),
                          (broken, f"{broken}:24: expected 'angle intensity")):
        res = CliRunner().invoke(cli, ["propose", str(path), "-c", "Si", "--backend", "random", "--n", "2",
                                       "--no-refine", "-q"])
        assert res.exit_code == 2, res.output
        lines = [s for s in res.stderr.splitlines() if s.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr, res.stderr


def test_crystalyze_pdcifs_hold_the_published_patterns(shared_data):
    """TOPAS-written pdCIFs of the crystalyze_8 set: the CIF's pattern is the .xy file's (on the fitted range)."""
    folders = sorted((shared_data / "measured_xrd" / "crystalyze_8").glob("*/"))
    assert len(folders) == 8
    for folder in folders:
        obs = read_pdcif(next(folder.glob("*.cif")))
        ref = read_observation(next(folder.glob("*.xy")), x_kind="2theta")
        k = np.clip(np.searchsorted(ref.x, obs.x), 1, len(ref.x) - 1)
        k -= (obs.x - ref.x[k - 1]) < (ref.x[k] - obs.x)  # the nearer neighbour
        np.testing.assert_allclose(obs.x, ref.x[k], atol=1e-5, err_msg=folder.name)
        np.testing.assert_allclose(obs.y, ref.y[k], rtol=1e-6, err_msg=folder.name)
        assert obs.wavelength in (1.54056, 1.540562, 0.406626), folder.name
        assert obs.sigma is not None and obs.meta["sigma_from"] == "_pd_proc_ls_weight"


# --------------------------------------------------------------------------- contract kits (round trip)


def _grid(obs):
    return obs.x, obs.y


class TestPdCifReader(ReaderContract):
    reader_name = "pdcif"

    def write_sample(self, observation, directory):
        x, y = _grid(observation)
        rows = "".join(f"{a:.4f} {b:.6f}\n" for a, b in zip(x, y))
        path = directory / "sample.cif"
        path.write_text(f"data_sample\n_diffrn_radiation_wavelength {observation.wavelength}\n"
                        f"loop_\n_pd_meas_2theta_scan\n_pd_meas_intensity_total\n{rows}")
        return path


class TestXrdmlReader(ReaderContract):
    reader_name = "xrdml"

    def write_sample(self, observation, directory):
        x, y = _grid(observation)
        path = directory / "sample.xrdml"
        path.write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<xrdMeasurements xmlns="http://www.xrdml.com/XRDMeasurement/1.5">'
            f'<xrdMeasurement><usedWavelength intended="K-Alpha 1"><kAlpha1 unit="Angstrom">{observation.wavelength}'
            '</kAlpha1></usedWavelength><scan scanAxis="Gonio"><dataPoints><positions axis="2Theta" unit="deg">'
            f"<startPosition>{float(x[0])!r}</startPosition><endPosition>{float(x[-1])!r}</endPosition></positions>"
            f'<intensities unit="counts">{" ".join(repr(float(v)) for v in y)}</intensities>'
            "</dataPoints></scan></xrdMeasurement></xrdMeasurements>\n")
        return path


class TestGsasReader(ReaderContract):
    reader_name = "gsas"

    def write_sample(self, observation, directory):
        x, y = _grid(observation)
        path = directory / "sample.fxye"
        path.write_text(f"sample, wavelength = {observation.wavelength}\n"
                        f"BANK 1 {len(x)} {len(x)} CONS {100 * x[0]:.6f} {100 * (x[1] - x[0]):.6f} 0 0 FXYE\n"
                        + "".join(f"{100 * a:.6f} {b:.6f} {math.sqrt(b):.6f}\n" for a, b in zip(x, y)))
        return path


class TestRigakuRasReader(ReaderContract):
    reader_name = "rigaku-ras"

    def write_sample(self, observation, directory):
        x, y = _grid(observation)
        path = directory / "sample.ras"
        path.write_text("*RAS_DATA_START\n*RAS_HEADER_START\n*HW_XG_WAVE_LENGTH_ALPHA1 "
                        f'"{observation.wavelength}"\n*MEAS_SCAN_AXIS_X "TwoThetaTheta"\n*MEAS_DATA_COUNT "{len(x)}"\n'
                        "*RAS_HEADER_END\n*RAS_INT_START\n" + "".join(f"{a:.4f} {b:.6f} 1.0000\n" for a, b in zip(x, y))
                        + "*RAS_INT_END\n*RAS_DATA_END\n")
        return path


class TestBrukerBrmlReader(ReaderContract):
    reader_name = "bruker-brml"

    def write_sample(self, observation, directory):
        x, y = _grid(observation)
        src = directory / "brml_src" / "Experiment0"
        src.mkdir(parents=True)
        datums = "".join(f"<Datum>1,1,{a:.4f},{a / 2:.4f},{b:.6f}</Datum>\n" for a, b in zip(x, y))
        (src / "RawData0.xml").write_text(
            "<RawData><DataRoutes><DataRoute><ScanInformation><ScanAxes><ScanAxisInfo AxisName=\"TwoTheta\">"
            f"<Start>{x[0]}</Start><Stop>{x[-1]}</Stop><Increment>{x[1] - x[0]}</Increment></ScanAxisInfo>"
            f"</ScanAxes></ScanInformation>\n{datums}</DataRoute></DataRoutes><FixedInformation><Tube>"
            f'<WaveLengthAlpha1 Value="{observation.wavelength}"/></Tube></FixedInformation></RawData>\n')
        return make_brml(directory / "brml_src", directory / "sample.brml")
