"""Scattering tables: Waasmaier–Kirfel and pymatgen X-ray form factors, neutron lengths."""

import pytest
import torch

from diffpy_diffusion.physics.scattering import (
    MAX_Z,
    forward_weight,
    neutron_length,
    scattering_factor,
    xray_form_factor,
)


def test_wk_covers_z_1_to_98_and_f0_is_z():
    assert MAX_Z >= 94
    z = torch.arange(1, MAX_Z + 1)
    f0 = xray_form_factor(z, torch.zeros(1, dtype=torch.float64))[:, 0]
    # a neutral atom scatters Z electrons forward
    assert torch.allclose(f0, z.double(), rtol=2e-3)


def test_wk_and_pymatgen_tables_agree_at_low_q():
    # both fit the International Tables Vol. C values; pymatgen's 4-term fit is poorer at high Q
    z = torch.arange(1, 95)
    q = torch.linspace(0, 2, 9, dtype=torch.float64)
    wk = xray_form_factor(z, q)
    pm = xray_form_factor(z, q, table="pymatgen")
    assert ((wk - pm).abs() / z[:, None]).max() < 0.025


def test_form_factor_decreases_and_is_differentiable():
    q = torch.linspace(0, 10, 50, dtype=torch.float64, requires_grad=True)
    f = xray_form_factor(torch.tensor([8, 26]), q)
    assert f.shape == (2, 50)
    assert (f[:, 1:] <= f[:, :-1] + 1e-12).all()
    f.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_per_atom_q_rows():
    q = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    f = xray_form_factor(torch.tensor([8, 26]), q)
    ref0 = xray_form_factor(torch.tensor([8]), q[0])
    assert torch.allclose(f[0], ref0[0])


def test_neutron_lengths_match_pdffit2():
    pytest.importorskip("diffpy.pdffit2")
    import io
    import os

    from diffpy.pdffit2 import PdfFit, redirect_stdout

    redirect_stdout(open(os.devnull, "w"))
    p = PdfFit()
    elements = {"H": 1, "O": 8, "Si": 14, "Ni": 28, "Se": 34, "Cd": 48, "Pb": 82, "U": 92}
    b = neutron_length(torch.tensor(list(elements.values())), dtype=torch.float64)
    for (el, _), val in zip(elements.items(), b):
        assert float(val) == pytest.approx(p.get_scat("N", el), rel=0.01, abs=0.01), el
    redirect_stdout(io.StringIO())


def test_scattering_factor_neutron_is_q_independent():
    f = scattering_factor(torch.tensor([28, 8]), torch.linspace(0, 20, 5), "neutron")
    assert f.shape == (2, 5)
    assert torch.allclose(f[:, 0:1].expand(-1, 5), f)


def test_forward_weight():
    assert forward_weight(torch.tensor([28]), "xray", dtype=torch.float64).item() == 28
    assert forward_weight(torch.tensor([28]), "neutron", dtype=torch.float64).item() == pytest.approx(10.3, rel=0.01)


@pytest.mark.parametrize("call", [
    lambda: xray_form_factor(torch.tensor([0]), torch.zeros(1)),
    lambda: xray_form_factor(torch.tensor([150]), torch.zeros(1)),
    lambda: neutron_length(torch.tensor([200])),
])
def test_unknown_element_names_numbers(call):
    with pytest.raises(ValueError, match="numbers"):
        call()


def test_bad_radiation_and_table():
    with pytest.raises(ValueError, match="radiation"):
        scattering_factor(torch.tensor([8]), torch.zeros(1), "electron")
    with pytest.raises(ValueError, match="table"):
        xray_form_factor(torch.tensor([8]), torch.zeros(1), table="foo")
