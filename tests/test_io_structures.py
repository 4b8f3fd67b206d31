"""CIF and .stru round trips, checked against pymatgen and diffpy.structure themselves."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.errors import InputFileError, OutputExistsError
from diffpy_diffusion.io import (
    diffpy_to_pymatgen,
    pymatgen_to_diffpy,
    read_structure,
    write_cif,
    write_stru,
)


@pytest.fixture
def wurtzite():
    """CdSe wurtzite, P6_3mc (a = 4.30, c = 7.01 Å)."""
    return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(4.30, 7.01), ["Cd", "Se"],
                                     [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.375]])


@pytest.fixture
def triclinic():
    lat = Lattice.from_parameters(4.1, 5.3, 6.2, 81.0, 97.5, 103.0)
    s = Structure(lat, ["Ba", "Ti", "O", "O"], [[0.1, 0.2, 0.3], [0.5, 0.45, 0.7], [0.8, 0.1, 0.05],
                                                [0.33, 0.9, 0.52]])
    s.add_site_property("uiso", [0.004, 0.006, 0.01, 0.012])
    return s


def test_cif_roundtrip(tmp_path, wurtzite):
    p = write_cif(wurtzite, tmp_path / "cdse.cif")
    back = read_structure(p)
    assert StructureMatcher().fit(wurtzite, back)
    np.testing.assert_allclose(back.lattice.abc, wurtzite.lattice.abc, rtol=1e-6)
    # independent reader: pymatgen's own parser agrees
    ref = Structure.from_file(str(p))
    assert StructureMatcher().fit(ref, back)


def test_cif_symmetrised_roundtrip(tmp_path, wurtzite):
    p = write_cif(wurtzite, tmp_path / "cdse_sym.cif", symprec=0.01)
    assert "P6_3mc" in p.read_text()
    assert StructureMatcher().fit(wurtzite, read_structure(p))


def test_stru_roundtrip_against_diffpy(tmp_path, triclinic):
    from diffpy.structure import loadStructure

    p = write_stru(triclinic, tmp_path / "t.stru")
    ref = loadStructure(str(p))  # diffpy.structure reads what we wrote
    assert len(ref) == 4
    np.testing.assert_allclose(ref.lattice.abcABG(), [4.1, 5.3, 6.2, 81.0, 97.5, 103.0], rtol=1e-6)
    np.testing.assert_allclose(ref.xyz, triclinic.frac_coords, atol=1e-6)
    np.testing.assert_allclose(ref.Uisoequiv, [0.004, 0.006, 0.01, 0.012], atol=1e-7)
    back = read_structure(p)
    assert StructureMatcher().fit(triclinic, back)
    np.testing.assert_allclose(back.site_properties["uiso"], [0.004, 0.006, 0.01, 0.012], atol=1e-7)


def test_conversion_preserves_cartesian_distances(triclinic):
    ds = pymatgen_to_diffpy(triclinic)
    # diffpy computes distances in its own lattice orientation: they must agree with pymatgen's
    for i in range(4):
        for j in range(i + 1, 4):
            d_diffpy = ds.distance(i, j)
            d_pmg = np.linalg.norm(triclinic.lattice.get_cartesian_coords(
                triclinic[i].frac_coords - triclinic[j].frac_coords))
            assert d_diffpy == pytest.approx(d_pmg, rel=1e-9)
    back = diffpy_to_pymatgen(ds)
    np.testing.assert_allclose(back.frac_coords, triclinic.frac_coords, atol=1e-12)


def test_partial_occupancy_roundtrip(tmp_path):
    s = Structure(Lattice.cubic(4.2), [{"Mn": 0.5, "Fe": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ds = pymatgen_to_diffpy(s)
    assert len(ds) == 3 and sorted(ds.occupancy) == [0.5, 0.5, 1.0]
    back = diffpy_to_pymatgen(ds)
    assert len(back) == 2 and back.composition.almost_equals(s.composition)
    p = write_stru(s, tmp_path / "mix.stru")
    assert read_structure(p).composition.almost_equals(s.composition)


def test_charged_labels():
    from diffpy.structure import Atom, Lattice as DLattice, Structure as DStructure

    ds = DStructure([Atom("Fe3+", [0, 0, 0]), Atom("O2-", [0.5, 0.5, 0.5])], lattice=DLattice(4, 4, 4, 90, 90, 90))
    assert diffpy_to_pymatgen(ds).composition.formula == "Fe1 O1"


def test_real_structures(shared_data):
    ni = read_structure(shared_data / "measured/ni_xray_2008/ni.cif")
    assert ni.composition.formula == "Ni4" and ni.lattice.a == pytest.approx(3.52, abs=0.01)
    stru = read_structure(shared_data / "calculated_pdf/srreal_testdata/Ni.stru")
    assert StructureMatcher().fit(ni, stru)
    from diffpy.structure import loadStructure

    ref = loadStructure(str(shared_data / "calculated_pdf/srreal_testdata/TiO2_rutile-fit.stru"))
    got = read_structure(shared_data / "calculated_pdf/srreal_testdata/TiO2_rutile-fit.stru")
    np.testing.assert_allclose(got.lattice.abc, ref.lattice.abcABG()[:3], rtol=1e-9)
    np.testing.assert_allclose(sorted(got.site_properties["uiso"]), sorted(ref.Uisoequiv), atol=1e-9)


def test_structure_errors(tmp_path):
    for name, content, what in [("e.cif", b"", "empty"), ("b.cif", b"\x00\x01\x02" * 50, "binary"),
                                ("t.cif", b"data_x\n_cell_length_a abc\n", "cannot read"),
                                ("t.stru", b"title x\nformat pdffit\ncell 1, 2\natoms\nNi 0 0 zz 1\n", "cannot read")]:
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(InputFileError) as ei:
            read_structure(p)
        assert str(p) in str(ei.value) and what in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(InputFileError, match="no such file"):
        read_structure(tmp_path / "missing.cif")


def test_writers_refuse_overwrite(tmp_path, wurtzite):
    p = write_cif(wurtzite, tmp_path / "x.cif")
    with pytest.raises(OutputExistsError, match="--force"):
        write_cif(wurtzite, p)
    with pytest.raises(OutputExistsError):
        write_stru(wurtzite, p)
    write_stru(wurtzite, p, force=True)
    assert "format pdffit" in p.read_text()
