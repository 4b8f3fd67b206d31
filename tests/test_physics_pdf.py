"""PDF forward model against diffpy.pdffit2, gradients, the cluster/periodic consistency, bad input."""

import functools
import os

import numpy as np
import pytest
import torch

from diffpy_diffusion.physics import reference
from diffpy_diffusion.physics.crystal import CrystalBatch
from diffpy_diffusion.physics.pdf import pdf_gr

pdffit2 = pytest.importorskip("diffpy.pdffit2")


def _pdffit2_gr(s, stype, *, qmax, qdamp, delta2, spdiameter, u, rmin=1.0, rmax=30.0, n=2901):
    from diffpy.pdffit2 import PdfFit, redirect_stdout
    from diffpy.structure import Atom, Lattice as DL, Structure as DS

    redirect_stdout(open(os.devnull, "w"))
    L = s.lattice
    ds = DS(lattice=DL(L.a, L.b, L.c, L.alpha, L.beta, L.gamma))
    for site in s:
        a = Atom(site.specie.symbol, xyz=site.frac_coords)
        a.Uisoequiv = u
        ds.append(a)
    p = PdfFit()
    p.add_structure(ds)
    p.alloc(stype, qmax, qdamp, rmin, rmax, n)
    p.setvar("delta2", delta2)
    p.setvar("spdiameter", spdiameter)
    p.calc()
    return np.array(p.getR()), np.array(p.getpdf_fit())


@functools.cache
def _cell_20_atoms():
    data = reference.shared_data_dir()
    if data is not None and (data / "mp20" / "test.csv.gz").exists():
        import warnings

        import pandas as pd
        from pymatgen.core import Structure

        df = pd.read_csv(data / "mp20" / "test.csv.gz", nrows=300)
        for cif in df["cif"]:
            if cif.count("\n") < 40:  # cheap pre-filter: short CIFs have few sites
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_str(cif, fmt="cif")
            if len(s) >= 20:
                return s
    # fallback: a 2x2x1 perovskite-like supercell (20 atoms)
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    s.make_supercell([2, 2, 1])
    s.perturb(0.05, min_distance=0.01)  # break symmetry a little
    return s


@pytest.mark.parametrize("name", ["Ni", "cell20"])
@pytest.mark.parametrize("method", ["binned", "exact"])
def test_pdf_matches_pdffit2(name, method):
    s = reference.ni_fcc() if name == "Ni" else _cell_20_atoms()
    assert name == "Ni" or len(s) >= 20
    kw = dict(qmax=25.0, qdamp=0.04, delta2=2.0, spdiameter=40.0)
    r, g = _pdffit2_gr(s, "X", u=0.005, **kw)
    b = CrystalBatch.from_structures([s], uiso=0.005)
    ours = pdf_gr(b, torch.tensor(r), method=method, **kw)[0].numpy()
    assert np.abs(ours - g).max() <= 1e-3 * np.abs(g).max()


def test_pdf_matches_pdffit2_neutron_no_qmax():
    s = _cell_20_atoms()
    r, g = _pdffit2_gr(s, "N", qmax=0.0, qdamp=0.02, delta2=1.0, spdiameter=0.0, u=0.008)
    b = CrystalBatch.from_structures([s], uiso=0.008)
    ours = pdf_gr(b, torch.tensor(r), qdamp=0.02, delta2=1.0, radiation="neutron")[0].numpy()
    # neutron lengths differ from pdffit2's table by < 0.5 %
    assert np.abs(ours - g).max() <= 5e-3 * np.abs(g).max()


def test_batch_and_float32():
    ss = [reference.ni_fcc(), reference.cdse_zincblende()]
    r = torch.arange(1.0, 20.0, 0.01, dtype=torch.float64)
    both = pdf_gr(CrystalBatch.from_structures(ss, uiso=0.006), r, qmax=20.0, qdamp=0.03)
    for i, s in enumerate(ss):
        one = pdf_gr(CrystalBatch.from_structures([s], uiso=0.006), r, qmax=20.0, qdamp=0.03)[0]
        assert torch.allclose(both[i], one, atol=1e-9)
    y32 = pdf_gr(CrystalBatch.from_structures(ss, uiso=0.006, dtype=torch.float32), r.float(), qmax=20.0, qdamp=0.03)
    assert float((y32.double() - both).abs().max()) <= 1e-3 * float(both.abs().max())


def test_gradcheck_pdf_float64():
    base = CrystalBatch.from_structures([reference.cdse_zincblende()], uiso=0.01)
    lat0 = base.lattice.clone() * 0.75
    lat0[0, 1, 0] += 0.1
    frac0 = base.frac[[0, 4]].clone() + torch.tensor([[0.01, 0.0, 0.02], [0.0, 0.03, 0.0]], dtype=torch.float64)
    numbers = base.numbers[[0, 4]]
    r = torch.arange(2.0, 5.0, 0.1, dtype=torch.float64)

    def f(lat, frac, uiso, spd, delta2):
        b = CrystalBatch(lat, frac, numbers, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.float64), uiso)
        return pdf_gr(b, r, qdamp=0.05, delta2=delta2, spdiameter=spd)

    args = (
        lat0.requires_grad_(),
        frac0.requires_grad_(),
        torch.tensor([0.01, 0.015], dtype=torch.float64, requires_grad=True),
        torch.tensor([30.0], dtype=torch.float64, requires_grad=True),
        torch.tensor([0.5], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_large_debye_cluster_agrees_with_periodic_times_envelope():
    """Stated tolerance: max |ΔG| ≤ 3 % of max |G| (surface atoms of a cut sphere)."""
    from diffpy_diffusion.physics.debye import cut_sphere, debye_gr

    s = reference.cdse_zincblende()
    pos, z = cut_sphere(s, 4.0)
    r = torch.arange(1.0, 30.0, 0.01, dtype=torch.float64)
    gc = debye_gr(pos, z, r, diameter=40.0, uiso=0.005)
    gp = pdf_gr(CrystalBatch.from_structures([s], uiso=0.005), r, spdiameter=40.0)[0]
    assert float((gc - gp).abs().max()) <= 0.03 * float(gp.abs().max())


@pytest.mark.parametrize("kw, param", [
    (dict(r=torch.zeros(0)), "r"),
    (dict(r=torch.arange(10.0, 1.0, -0.1)), "r"),
    (dict(r=torch.tensor([1.0, 1.1, 1.5, 2.0]), qmax=20.0), "r"),
    (dict(spdiameter=0.0), "spdiameter"),
    (dict(spdiameter=-5.0), "spdiameter"),
    (dict(qmax=-1.0), "qmax"),
    (dict(radiation="electron"), "radiation"),
])
def test_bad_input_names_parameter(kw, param):
    b = CrystalBatch.from_structures([reference.ni_fcc()], uiso=0.005)
    kw = dict(kw)
    r = kw.pop("r", torch.arange(1.0, 10.0, 0.01))
    with pytest.raises(ValueError, match=param):
        pdf_gr(b, r, **kw)


def test_bad_lattice_names_lattice():
    b = CrystalBatch.from_structures([reference.ni_fcc()], uiso=0.005)
    with pytest.raises(ValueError, match="lattice"):
        pdf_gr(b.replace(lattice=torch.zeros(1, 3, 3, dtype=torch.float64)), torch.arange(1.0, 10.0, 0.01))


def test_anisotropic_uij_matches_pdffit2():
    """Anisotropic ADPs (crystal-axis Uij with off-diagonal terms, monoclinic cell) vs pdffit2."""
    from diffpy.pdffit2 import PdfFit, redirect_stdout
    from diffpy.structure import Atom, Lattice as DL, Structure as DS
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.physics.crystal import uij_cif_to_cartesian

    lat = Lattice.from_parameters(4.1, 5.3, 6.2, 90, 103.0, 90)
    s = Structure(lat, ["Zn", "O", "O"], [[0.1, 0.2, 0.3], [0.6, 0.7, 0.15], [0.35, 0.05, 0.8]])
    u_cif = [np.array([[0.010, 0.002, 0.001], [0.002, 0.006, -0.0015], [0.001, -0.0015, 0.014]]),
             np.array([[0.008, 0.0, 0.003], [0.0, 0.012, 0.0], [0.003, 0.0, 0.007]]),
             np.array([[0.005, -0.001, 0.0], [-0.001, 0.009, 0.002], [0.0, 0.002, 0.011]])]
    redirect_stdout(open(os.devnull, "w"))
    ds = DS(lattice=DL(lat.a, lat.b, lat.c, lat.alpha, lat.beta, lat.gamma))
    for site, u in zip(s, u_cif):
        ds.append(Atom(site.specie.symbol, xyz=site.frac_coords, U=u, anisotropy=True))
    p = PdfFit()
    p.add_structure(ds)
    p.alloc("X", 25.0, 0.03, 1.0, 20.0, 1901)
    p.calc()
    r_ref, g_ref = np.array(p.getR()), np.array(p.getpdf_fit())

    b = CrystalBatch.from_structures([s], uiso=0.01, dtype=torch.float64)
    uc = torch.stack([uij_cif_to_cartesian(torch.tensor(lat.matrix), torch.as_tensor(u)) for u in u_cif])
    g = pdf_gr(b.replace(uij=uc), r_ref, qmax=25.0, qdamp=0.03)[0].numpy()
    assert np.abs(g - g_ref).max() <= 1e-3 * np.abs(g_ref).max()
    # and the anisotropy matters: the isotropic equivalent is visibly different
    g_iso = pdf_gr(b, r_ref, qmax=25.0, qdamp=0.03)[0].numpy()
    assert np.abs(g_iso - g_ref).max() > 2e-2 * np.abs(g_ref).max()


def test_anisotropic_uij_gradcheck():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.from_parameters(3.0, 3.4, 3.8, 90, 95, 90), ["Ni", "Ni"], [[0, 0, 0], [0.5, 0.4, 0.5]])
    b = CrystalBatch.from_structures([s], uiso=0.01, dtype=torch.float64)
    u = torch.tensor([[[0.010, 0.001, 0.0], [0.001, 0.008, 0.0], [0.0, 0.0, 0.012]]] * 2,
                     dtype=torch.float64, requires_grad=True)
    r = torch.linspace(2.0, 5.0, 61, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda uu: pdf_gr(b.replace(uij=(uu + uu.transpose(1, 2)) / 2), r), (u,),
                                    eps=1e-7, atol=1e-5)
