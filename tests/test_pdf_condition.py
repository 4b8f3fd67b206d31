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


# --------------------------------------------------------------------------- the PDF encoder (pdf_adapter)
def _tiny_checkpoint(path, pdf_encoder=False):
    import torch

    from diffpy_diffusion.backends.diffusion.checkpoint import save_checkpoint
    from diffpy_diffusion.backends.diffusion.model import CrystalDiffusionModel, ModelConfig
    from diffpy_diffusion.backends.diffusion.process import ProcessConfig

    torch.manual_seed(0)
    mcfg = ModelConfig(hidden=32, layers=1, n_freq=4, cond_dim=32, pdf_encoder=pdf_encoder)
    model = CrystalDiffusionModel(mcfg)
    save_checkpoint(path, config={"model": mcfg.to_dict(), "process": ProcessConfig().__dict__, "elements": [11, 17]},
                    step=1, epoch=0, ema=model.state_dict())
    return model


def test_pxrd_condition_ignores_the_pdf_encoder():
    """A PXRD pattern is encoded by the PXRD encoder whether or not the model has a PDF encoder."""
    import torch

    from diffpy_diffusion.backends.diffusion.model import CrystalDiffusionModel, ModelConfig

    torch.manual_seed(0)
    plain = CrystalDiffusionModel(ModelConfig(hidden=32, layers=1, n_freq=4, cond_dim=32))
    both = CrystalDiffusionModel(ModelConfig(hidden=32, layers=1, n_freq=4, cond_dim=32, pdf_encoder=True))
    both.load_state_dict({**both.state_dict(), **plain.state_dict()})  # the PDF encoder keeps its own init
    x = torch.rand(3, 3, 512)
    drop = torch.tensor([False, True, False])
    assert torch.equal(plain.encode(x, drop), both.encode(x, drop))
    assert torch.equal(plain.encode(x, drop), both.encode(x, drop, kind="xrd"))
    pdf = both.encode(x, drop, kind="pdf")
    assert not torch.allclose(pdf[0], plain.encode(x)[0])  # the PDF encoder is used for PDFs...
    assert torch.equal(pdf[1], both.encoder.null)  # ...and a dropped row is the PXRD encoder's null embedding
    assert torch.equal(plain.encode(x, drop, kind="pdf"), plain.encode(x, drop))  # no PDF encoder: as before


def test_simulated_training_pdf_peaks_where_pymatgen_puts_the_reflections():
    """A random training PDF of rock salt (pdf_adapter.simulate_pdf) implies peaks at the Bragg positions."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.backends.diffusion.conditioning import Q_GRID_MAX, Q_GRID_POINTS, pdf_as_powder
    from diffpy_diffusion.backends.diffusion.pdf_adapter import PdfSettings, random_pdf_settings, simulate_pdf

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    st = PdfSettings(diameter=40.0, qmax=22.0, qdamp=0.03, qbroad=0.0, uiso=0.008, rmin=1.0, rmax=30.0, rstep=0.01,
                     noise=0.01, r_stretch=0.0, radiation="xray")
    rng = np.random.default_rng(0)
    obs = simulate_pdf(nacl.lattice.matrix, nacl.frac_coords, nacl.atomic_numbers, st, rng)
    assert obs.kind == "pdf" and obs.composition == {"Na": 4.0, "Cl": 4.0} and obs.size_nm == pytest.approx(4.0)
    y = pdf_as_powder(obs)
    grid = np.linspace(0, Q_GRID_MAX, Q_GRID_POINTS)
    lam = 0.7093
    pat = XRDCalculator(wavelength=lam).get_pattern(nacl, two_theta_range=(5, 60))
    q_ref = 4 * math.pi * np.sin(np.radians(pat.x[np.argsort(-pat.y)[:2]] / 2)) / lam
    peaks = [i for i in range(1, len(y) - 1) if y[i] >= y[i - 1] and y[i] > y[i + 1]]
    top2 = sorted(grid[sorted(peaks, key=lambda i: -y[i])[:2]])
    np.testing.assert_allclose(top2, sorted(q_ref), atol=0.04)
    # the policy's draws stay in their documented ranges
    from diffpy_diffusion.backends.diffusion import pdf_adapter as pa

    for _ in range(200):
        s = random_pdf_settings(rng)
        assert s.diameter is None or pa.DIAMETER_RANGE_A[0] <= s.diameter <= pa.DIAMETER_RANGE_A[1]
        assert pa.QMAX_RANGE[0] <= s.qmax <= pa.QMAX_RANGE[1] and s.rstep in pa.R_STEPS
        assert s.radiation in ("xray", "neutron")


def test_finetune_trains_only_the_pdf_encoder_and_the_checkpoint_loads_safely(tmp_path):
    """Fine-tuning leaves every PXRD weight bit-identical and writes a weights_only checkpoint the backend samples."""
    import torch
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.backends.diffusion import pdf_adapter as pa
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend
    from diffpy_diffusion.backends.diffusion.checkpoint import load_checkpoint
    from diffpy_diffusion.backends.diffusion.conditioning import canonical_pattern

    base = tmp_path / "base.pt"
    _tiny_checkpoint(base)
    rng = np.random.default_rng(1)
    cells = [Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
             for a in (5.4, 5.64, 5.9, 6.1)]
    S = len(cells)
    arr = {"lattice": np.zeros((S, 3, 3), np.float32), "frac": np.zeros((S, 20, 3), np.float32),
           "numbers": np.zeros((S, 20), np.int16), "natoms": np.zeros(S, np.int16),
           "pattern": np.zeros((S, 1, 512), np.float16), "ids": np.array([f"t{i}" for i in range(S)])}
    for i, s in enumerate(cells):
        n = len(s)
        arr["lattice"][i], arr["frac"][i, :n], arr["numbers"][i, :n], arr["natoms"][i] = (
            s.lattice.matrix, s.frac_coords, s.atomic_numbers, n)
        arr["pattern"][i, 0] = canonical_pattern(
            pa.simulate_pdf(s.lattice.matrix, s.frac_coords, s.atomic_numbers, pa.random_pdf_settings(rng), rng))[0]
    np.savez(tmp_path / "set.npz", **arr, **{f"val_{k}": v for k, v in arr.items()})
    out = tmp_path / "pdf.pt"
    res = pa.finetune(tmp_path / "set.npz", out, base=base, minutes=0.05, batch_size=2, lr=1e-2, val_every=0.0)
    assert res["steps"] > 0 and out.is_file()
    old, new = load_checkpoint(base), load_checkpoint(out)
    assert new["config"]["model"]["pdf_encoder"] is True and "pdf_encoder_cpu_s" in new["meta"]
    for k, v in old["ema"].items():  # the PXRD encoder and the denoiser are untouched
        assert torch.equal(v, new["ema"][k]), k
    obs = pa.simulate_pdf(cells[1].lattice.matrix, cells[1].frac_coords, cells[1].atomic_numbers,
                          pa.random_pdf_settings(rng), rng)
    props = DiffusionBackend(checkpoint=str(out), steps=3, corrector_steps=0, adapt_z=0).sample(obs, 2, seed=0)
    assert len(props) == 2 and all(p.structure.composition.reduced_formula == "NaCl" for p in props)


def test_fine_tuning_set_holds_canonical_cells_and_no_validation_or_evaluation_ids(shared_data, tmp_path):
    """The set's cells are in the frozen denoiser's training representation (Niggli, canonical orientation).

    A raw CIF cell there made the fine-tuned encoder learn to undo the representation: better on its
    own validation loss, worse on the evaluation's PDFs (benchmarks/pdf_condition.md).
    """
    from diffpy_diffusion.backends.diffusion.data import canonical_arrays
    from diffpy_diffusion.backends.diffusion.pdf_adapter import build_training_set
    from diffpy_diffusion.datasets import eval_material_ids, iter_training_pool, split_ids

    out = build_training_set(tmp_path / "set.npz", n_structures=4, per_structure=1, n_val=2, data=shared_data,
                             progress=False)
    z = dict(np.load(out))
    assert z["pattern"].shape[:2] == (len(z["ids"]), 1) and z["val_pattern"].shape[:2] == (2, 1)
    assert not split_ids(z["ids"]).any() and split_ids(z["val_ids"]).all()
    assert not set(z["ids"]) & eval_material_ids(data=shared_data)
    pool = {e.material_id: e for e in iter_training_pool(data=shared_data)}
    for i, mid in enumerate(z["ids"]):
        lat, frac, nums = canonical_arrays(pool[str(mid)].structure())
        np.testing.assert_allclose(z["lattice"][i], lat, atol=1e-5)
        n = int(z["natoms"][i])
        np.testing.assert_array_equal(z["numbers"][i, :n], nums)
