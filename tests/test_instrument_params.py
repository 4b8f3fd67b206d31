"""Instrument parameter files (``--instrument`` / ``--save-instrument``) and the peaks no phase explains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffpy_diffusion.errors import InputFileError
from diffpy_diffusion.io.instrument_params import InstrumentParameters, read_instrument, write_instrument
from diffpy_diffusion.physics.crystal import CrystalBatch
from diffpy_diffusion.physics.xrd import xrd_pattern

CU1, CU2 = 1.540596, 1.544493  # Cu Kα1, Kα2 (Å)
_ROCKSALT = [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]
_FCC = _ROCKSALT[:4]
_DIAMOND = _FCC + [[.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]]

#: A lab diffractometer's profile (values of the order TOPAS refines for the crystalyze_8 Cu patterns).
TRUE = InstrumentParameters(wavelength=CU1, wavelength2=CU2, ka2_ratio=0.5, U=0.004, V=-0.002, W=0.0015,
                            X=0.02, Y=0.015, axial_deg=0.05, zero_deg=-0.012)


def _cubic(a, species, coords):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(a), species, coords)


def _simulate(structure, x, ip: InstrumentParameters, size_nm=None, scale=1.0, background=200.0):
    """The pattern ``ip`` and ``size_nm`` give (our forward model: what the fit must invert), no noise."""
    b = CrystalBatch.from_arrays([structure.lattice.matrix], [structure.frac_coords],
                                 [[site.specie.Z for site in structure]], uisos=[np.full(len(structure), 0.005)],
                                 dtype=torch.float64)
    y = xrd_pattern(b, torch.as_tensor(x), wavelength=ip.wavelength, wavelength2=ip.wavelength2,
                    ka2_ratio=ip.ka2_ratio, size_nm=size_nm, U=ip.U, V=ip.V, W=ip.W, X=ip.X, Y=ip.Y,
                    axial_deg=ip.axial_deg, zero_deg=ip.zero_deg, peak_shape="tch", method="window",
                    scale=scale)[0].numpy()
    return y / y.max() * 10000.0 + background


def _observation(x, y, formula):
    from diffpy_diffusion.types import Observation

    return Observation(kind="xrd", x=x, y=y, x_kind="2theta", sigma=np.sqrt(np.maximum(y, 1.0)),
                       wavelength=CU1, wavelength2=CU2, ka2_ratio=0.5, composition=formula)


def _tch_fwhm(ip: InstrumentParameters, tt_deg):
    """Total FWHM (deg) of the TCH pseudo-Voigt: Thompson, Cox & Hastings, J. Appl. Cryst. 20, 79 (1987), eq. 3."""
    th = np.radians(np.asarray(tt_deg) / 2)
    hg = np.sqrt(np.maximum(ip.U * np.tan(th) ** 2 + ip.V * np.tan(th) + ip.W, 0))
    hl = ip.X / np.cos(th) + ip.Y * np.tan(th)
    return (hg**5 + 2.69269 * hg**4 * hl + 2.42843 * hg**3 * hl**2 + 4.47163 * hg**2 * hl**3
            + 0.07842 * hg * hl**4 + hl**5) ** 0.2


# --------------------------------------------------------------------------- the file format


def test_round_trip_exact(tmp_path):
    ip = InstrumentParameters(wavelength=0.4066, wavelength2=None, U=0.0123456789, V=-1e-4, W=3.3e-5, X=0.0071,
                              Y=0.0, axial_deg=0.0125, zero_deg=-0.00321, monochromator_2theta_deg=26.6)
    p = write_instrument(ip, tmp_path / "lab.instr", comments=["refined on LaB6"])
    assert read_instrument(p) == ip
    text = p.read_text(encoding="utf-8")
    assert "wavelength2" not in text  # monochromatic: the line is left out
    assert "# refined on LaB6" in text
    with pytest.raises(Exception, match="exists"):
        write_instrument(ip, p)


def test_hand_written_file_with_tube_name(tmp_path):
    p = tmp_path / "i.txt"
    p.write_text("# my diffractometer\n\nwavelength = CuKa   # Cu tube\nW = 0.002\nka2_ratio = 0.48\n",
                 encoding="utf-8")
    ip = read_instrument(p)
    assert ip.wavelength == pytest.approx(1.5406, abs=1e-3) and ip.wavelength2 == pytest.approx(1.5444, abs=1e-3)
    assert ip.ka2_ratio == 0.48 and ip.W == 0.002 and ip.U == 0.0 and ip.monochromator_2theta_deg is None


@pytest.mark.parametrize("text, match", [
    ("wavelength = 1.54\nU = abc\n", r"i\.instr:2: U: expected a number, found 'abc'"),
    ("wavelength = 1.54\nUu = 0.1\n", r"i\.instr:2: unknown key 'Uu'"),
    ("wavelength = 1.54\nW = 0.1\nW = 0.2\n", r"i\.instr:3: W given twice \(first on line 2\)"),
    ("wavelength 1.54\n", r"i\.instr:1: expected 'key = value'"),
    ("U = 0.1\n", r"i\.instr:1: no 'wavelength"),
    ("wavelength = 1.54\nW = -0.1\n", r"i\.instr:2: W = -0.1 is outside 0\.\.10"),
    ("wavelength = 1.54\nzero_deg = nan\n", r"i\.instr:2: zero_deg: expected a finite number"),
    ("wavelength = Xx\n", r"i\.instr:1: unknown wavelength 'Xx'"),
    ("wavelength = 1.54\nwavelength2 = 1.50\n", r"i\.instr:2: wavelength2 = 1\.5 Å must be longer"),
    ("wavelength = 1.54\nradiation = electrons\n", r"i\.instr:2: radiation: expected xray or neutron"),
    ("wavelength = 1.54\nU =\n", r"i\.instr:2: expected 'key = value'"),
])
def test_bad_file_names_file_and_line(tmp_path, text, match):
    p = tmp_path / "i.instr"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(InputFileError, match=match):
        read_instrument(p)


def test_binary_and_empty_files(tmp_path):
    p = tmp_path / "i.instr"
    p.write_bytes(b"wavelength = 1.54\n\xff\xfe\x00\x01")
    with pytest.raises(InputFileError, match=r"i\.instr:2: not a UTF-8 text file"):
        read_instrument(p)
    p.write_bytes(b"")
    with pytest.raises(InputFileError, match="no 'wavelength"):
        read_instrument(p)


def test_cli_bad_instrument_file_is_one_line_exit_2(tmp_path):
    from diffpy_diffusion.cli import cli

    x = np.arange(20.0, 60.0, 0.02)
    data = tmp_path / "d.xy"
    np.savetxt(data, np.column_stack([x, 100 + 0 * x]))
    cif = tmp_path / "si.cif"
    _cubic(5.431, ["Si"] * 8, _DIAMOND).to(filename=str(cif))
    bad = tmp_path / "bad.instr"
    bad.write_text("wavelength = 1.54\nU = 0.1 0.2\n", encoding="utf-8")
    res = CliRunner().invoke(cli, ["refine", str(data), str(cif), "--instrument", str(bad)])
    assert res.exit_code == 2
    out = res.output.strip()
    assert out.count("\n") == 0 and "bad.instr:2: U: expected a number" in out and "Traceback" not in out
    res = CliRunner().invoke(cli, ["refine", str(data), str(cif), "--instrument", str(bad), "--peak-model", "basic"])
    assert res.exit_code == 2 and "--peak-model basic" in res.output


# --------------------------------------------------------------------------- fits


def test_fixed_instrument_reproduces_simulated_sample():
    """A sample simulated with a known instrument and 80 nm crystallites: with that instrument held fixed
    the fit recovers the cell and the size, and the instrument parameters stay exactly as given."""
    from diffpy_diffusion.refine import refine_structure

    x = np.arange(25.0, 100.0, 0.02)
    truth = _cubic(4.2112, ["Mg"] * 4 + ["O"] * 4, _ROCKSALT)
    obs = _observation(x, _simulate(truth, x, TRUE, size_nm=80.0), "MgO")
    start = _cubic(4.2050, ["Mg"] * 4 + ["O"] * 4, _ROCKSALT)
    res = refine_structure(obs, start, instrument_params=TRUE, nbkg=3,
                           stages=[["scale", "bkg"], ["lat", "size"], ["lorentz", "displacement"]])
    assert res.params["a"]["value"] == pytest.approx(4.2112, abs=5e-4)
    assert res.params["size_nm"]["value"] == pytest.approx(80.0, rel=0.1)
    assert res.params["Y"]["value"] == pytest.approx(TRUE.Y, abs=5e-3)  # no strain was simulated
    assert not {"U", "V", "W", "X", "axial_deg", "zero_deg"} & set(res.params)  # held fixed
    for k, v in TRUE.profile_values().items():
        if k != "Y":
            assert res.instrument[k] == v
    assert res.instrument["instrument_file"] is True
    assert res.rw < 0.01


def test_fixed_instrument_wavelength_mismatch_is_an_error():
    from diffpy_diffusion.errors import DiffpyDiffusionError
    from diffpy_diffusion.refine import build_recipe
    from diffpy_diffusion.types import Observation

    x = np.arange(20.0, 60.0, 0.05)
    obs = Observation(kind="xrd", x=x, y=np.ones_like(x), x_kind="2theta", wavelength=0.7093, composition="Si")
    with pytest.raises(DiffpyDiffusionError, match="differs from the instrument file's 1.54060 Å"):
        build_recipe(obs, _cubic(5.431, ["Si"] * 8, _DIAMOND), instrument_params=TRUE)


def test_save_instrument_on_a_standard_then_use_it(tmp_path):
    """refine --save-instrument on a simulated Si standard writes a file whose profile matches the one used
    to simulate (total FWHM within 1 % from 25 to 120° 2θ by TCH's published formula, zero within 0.001°);
    refine --instrument with it on a simulated sample recovers the sample's cell."""
    from diffpy_diffusion.cli import cli

    x = np.arange(25.0, 120.0, 0.02)
    si = _cubic(5.43102, ["Si"] * 8, _DIAMOND)
    std = tmp_path / "si_std.xy"
    np.savetxt(std, np.column_stack([x, _simulate(si, x, TRUE)]),
               header="wavelength = 1.540596\nwavelength2 = 1.544493")
    cif = tmp_path / "si.cif"
    si.to(filename=str(cif))
    instr = tmp_path / "lab.instr"
    res = CliRunner().invoke(cli, ["refine", str(std), str(cif), "--x", "2theta", "--save-instrument", str(instr),
                                   "--json"])
    assert res.exit_code == 0, res.output
    got = read_instrument(instr)
    assert got.wavelength == pytest.approx(CU1, abs=1e-4) and got.wavelength2 == pytest.approx(CU2, abs=1e-4)
    tt = np.linspace(25, 120, 20)
    np.testing.assert_allclose(_tch_fwhm(got, tt), _tch_fwhm(TRUE, tt), rtol=0.01)
    assert got.zero_deg == pytest.approx(TRUE.zero_deg, abs=1e-3)
    assert got.axial_deg == pytest.approx(TRUE.axial_deg, abs=2e-3)
    # the same file is refused as an output without --force
    res = CliRunner().invoke(cli, ["refine", str(std), str(cif), "--x", "2theta", "--save-instrument", str(instr)])
    assert res.exit_code == 2 and "exists" in res.output

    sample = tmp_path / "mgo.xy"
    mgo = _cubic(4.2112, ["Mg"] * 4 + ["O"] * 4, _ROCKSALT)
    np.savetxt(sample, np.column_stack([x, _simulate(mgo, x, TRUE, size_nm=150.0)]))  # no wavelength in the file
    start = tmp_path / "mgo.cif"
    _cubic(4.208, ["Mg"] * 4 + ["O"] * 4, _ROCKSALT).to(filename=str(start))
    res = CliRunner().invoke(cli, ["refine", str(sample), str(start), "--x", "2theta", "--instrument", str(instr),
                                   "--json"])
    assert res.exit_code == 0, res.output
    import json

    cand = json.JSONDecoder().raw_decode(res.output)[0]["candidates"][0]  # (stderr warnings may follow)
    assert cand["lattice"]["a"] == pytest.approx(4.2112, abs=1e-3)
    assert cand["provenance"]["instrument"]["instrument_file"] is True
    assert cand["rw"] < 0.03


# --------------------------------------------------------------------------- unexplained peaks


def test_unexplained_peaks_show_the_missing_phase():
    """MgO with 20 % Cu (by scale), refined with MgO alone: the strongest peaks no phase explains are Cu's
    (111) and (200), at the d-spacings of Cu's cell (a = 3.6149 Å, independent of our model); refined with
    both phases, none is left."""
    from diffpy_diffusion.refine import refine_structure

    x = np.arange(30.0, 100.0, 0.02)
    mgo = _cubic(4.2112, ["Mg"] * 4 + ["O"] * 4, _ROCKSALT)
    cu = _cubic(3.6149, ["Cu"] * 4, _FCC)
    ip = InstrumentParameters(wavelength=CU1, W=0.004)
    y = _simulate(mgo, x, ip, size_nm=60.0, background=0) + 0.2 * _simulate(cu, x, ip, size_nm=60.0, background=0)
    y = np.random.default_rng(0).poisson(y / y.max() * 5000 + 100).astype(float)
    from diffpy_diffusion.types import Observation

    obs = Observation(kind="xrd", x=x, y=y, x_kind="2theta", sigma=np.sqrt(np.maximum(y, 1)), wavelength=CU1,
                      composition="MgO")
    stages = [["scale", "bkg", "phase_scale"], ["lat", "phase_lat", "size", "phase_size", "profile"]]
    alone = refine_structure(obs, mgo, instrument="rietveld", nbkg=3, stages=stages)
    peaks = alone.unexplained_peaks
    d_cu = [3.6149 / math.sqrt(3), 3.6149 / 2]  # (111), (200)
    assert len(peaks) >= 2
    assert sorted(p["d_A"] for p in peaks[:2]) == pytest.approx(sorted(d_cu), abs=3e-3)
    assert peaks[0]["rel_intensity"] > 0.05 and peaks[0]["two_theta_deg"] == pytest.approx(43.3, abs=0.1)
    both = refine_structure(obs, mgo, phases=[cu], instrument="rietveld", nbkg=3, stages=stages)
    assert both.unexplained_peaks == []
    assert both.to_dict()["unexplained_peaks"] == [] and alone.to_dict()["unexplained_peaks"] == peaks


def test_unexplained_peaks_are_peaks_the_model_lacks_not_misfits_of_its_own():
    """Synthetic Gaussians (σ 0.05°, step 0.02°): the model has the peaks at 30° and 40° but 40° at 40 % of
    its observed height (an intensity misfit, as preferred orientation leaves), a peak at 60° without
    the observed low-angle shoulder 0.1° from it (a flank residual), and a broad peak (σ 1°) at 25° with
    a narrow wiggle on its flank (noise on a nanocrystal's peak); only the impurity at 50° is listed."""
    from diffpy_diffusion.refine.peaks import unexplained_peaks

    x = np.arange(20.0, 70.0, 0.02)

    def g(c, h):
        return h * np.exp(-0.5 * ((x - c) / 0.05) ** 2)

    rng = np.random.default_rng(1)
    broad = 60 * np.exp(-0.5 * ((x - 25) / 1.0) ** 2)
    obs = (10 + g(30, 100) + g(40, 50) + g(50, 20) + g(60, 100) + g(59.9, 15) + broad + g(24, 8)
           + rng.normal(0, 0.3, x.size))
    calc = 10 + g(30, 100) + g(40, 20) + g(60, 100) + broad
    found = unexplained_peaks(x, obs, calc, np.full_like(x, 10.0), wavelength=1.540598)
    assert [round(p["two_theta_deg"], 1) for p in found] == [50.0]
    assert found[0]["rel_intensity"] == pytest.approx(0.2, abs=0.03)


# --------------------------------------------------------------------------- propose's options


def test_propose_refine_options(tmp_path):
    """--phase/--instrument/--peak-model reach the refinement: auto is the Rietveld profile for a measured
    pattern (an instrument file or impurity phases given), the basic one otherwise; a PDF refuses them."""
    from diffpy_diffusion.errors import DiffpyDiffusionError
    from diffpy_diffusion.pipeline import pxrd_refine_options
    from diffpy_diffusion.types import Observation

    x = np.arange(20.0, 60.0, 0.05)
    xrd = Observation(kind="xrd", x=x, y=np.ones_like(x), x_kind="2theta", wavelength=CU1, composition="MgO")
    cif = tmp_path / "cu.cif"
    _cubic(3.6149, ["Cu"] * 4, _FCC).to(filename=str(cif))
    assert pxrd_refine_options(xrd) is None
    assert pxrd_refine_options(xrd, peak_model="rietveld") == {"instrument": "rietveld"}
    opts = pxrd_refine_options(xrd, [cif])
    assert opts["instrument"] == "rietveld" and opts["phases"][0].composition.reduced_formula == "Cu"
    assert pxrd_refine_options(xrd, instrument_params=TRUE)["instrument_params"] is TRUE
    pdf = Observation(kind="pdf", x=np.linspace(1, 20, 200), y=np.zeros(200), x_kind="r", composition="Ni")
    assert pxrd_refine_options(pdf) is None
    with pytest.raises(DiffpyDiffusionError, match="PXRD"):
        pxrd_refine_options(pdf, [cif])


def test_propose_bad_instrument_file_is_one_line_exit_2(tmp_path):
    from diffpy_diffusion.cli import cli

    x = np.arange(20.0, 60.0, 0.02)
    data = tmp_path / "d.xy"
    np.savetxt(data, np.column_stack([x, 100 + 0 * x]))
    bad = tmp_path / "bad.instr"
    bad.write_text("wavelength = 1.54\nzero = 0.1\n", encoding="utf-8")
    res = CliRunner().invoke(cli, ["propose", str(data), "-c", "MgO", "--instrument", str(bad)])
    assert res.exit_code == 2
    assert "bad.instr:2: unknown key 'zero'" in res.output and "Traceback" not in res.output
