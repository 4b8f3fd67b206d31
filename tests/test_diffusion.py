"""Tests of the diffusion backend (issue 6): maths, training, checkpoints, sampling, DDP.

All run on CPU in well under two minutes together.  Tests that train need the staged
training data (``shared_data`` fixture) and skip with a reason without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpy_diffusion.backends.diffusion import checkpoint as ckpt
from diffpy_diffusion.backends.diffusion.process import (
    Process,
    ProcessConfig,
    score_norm,
    wrapped_normal_score,
)
from diffpy_diffusion.errors import CheckpointError, ResourceLimitError

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "diffpy_diffusion" / "backends" / "diffusion" / "weights" / "diffusion.pt"
TINY = dict(hidden=32, layers=1, n_freq=4, batch_size=16, warmup=5, lr=3e-3, amp=False, val_fraction=0.0,
            progress="none", ckpt_every=1e9, log_every=10, threads=1)


# ----------------------------------------------------------------------------- maths
def _log_wn(x, mu, sig, terms=10):
    k = torch.arange(-terms, terms + 1, dtype=torch.float64)
    return torch.logsumexp(-((x - mu)[..., None] + k) ** 2 / (2 * sig**2), dim=-1)


@pytest.mark.parametrize("sig", [0.01, 0.1, 0.3, 0.5])
def test_wrapped_normal_score_matches_finite_differences(sig):
    x = torch.linspace(0.0, 0.999, 37, dtype=torch.float64)
    mu = torch.full_like(x, 0.31)
    s = torch.full_like(x, sig)
    h = 1e-6
    fd = (_log_wn(x + h, mu, sig) - _log_wn(x - h, mu, sig)) / (2 * h)
    an = wrapped_normal_score(x, mu, s, terms=3)
    assert torch.allclose(an, fd, rtol=1e-5, atol=1e-4 / sig**2 * 1e-3)


def test_score_norm_small_sigma_is_gaussian():
    # for small σ the wrapped normal is a normal: E[score²] = 1/σ²
    sig = torch.tensor([0.01, 0.02])
    lam = score_norm(sig)
    assert torch.allclose(lam * sig**2, torch.ones(2), rtol=2e-2)


def test_process_lambda_table_equals_quadrature_everywhere():
    # the table takes 1/σ² below UNWRAPPED_SIGMA instead of the quadrature: same values at float32
    cfg = ProcessConfig()
    t = torch.linspace(0, 1, 1001)
    quad = score_norm((cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** t).double(), cfg.wn_terms)
    table = Process(cfg).lam(t).double()
    assert torch.allclose(table, quad, rtol=1e-6, atol=0)


def test_noise_targets_are_unit_scale():
    proc = Process(ProcessConfig())
    g = torch.Generator().manual_seed(0)
    frac = torch.rand(256, 8, 3, generator=g)
    lat = torch.eye(3).repeat(256, 1, 1)
    mask = torch.ones(256, 8, dtype=torch.bool)
    t = torch.rand(256, generator=g)
    _, _, eps, target = proc.noise(lat, frac, mask, t, g)
    assert abs(float(target.pow(2).mean()) - 1.0) < 0.15  # normalised score has unit RMS


# ----------------------------------------------------------------------------- data split
def test_training_pool_excludes_evaluation_set(shared_data):
    from diffpy_diffusion.datasets import eval_material_ids, training_pool

    recs = training_pool(data=shared_data)
    ids = [r.material_id for r in recs]
    ev = eval_material_ids(data=shared_data)
    assert len(ev) == 1000
    assert not set(ids) & ev, "training pool contains evaluation-set material_ids"
    assert len(ids) == len(set(ids)) > 20000
    assert any(i.startswith("perov_5:") for i in ids)


@pytest.fixture(scope="module")
def tiny_pool(shared_data, tmp_path_factory):
    from diffpy_diffusion.backends.diffusion.data import build_pool_arrays

    out = tmp_path_factory.mktemp("pool") / "pool64.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_pool_arrays(shared_data, out, limit=64, progress=False, max_refl=48)  # few peaks: fast CPU test
    return out


# ----------------------------------------------------------------------------- training
def _fixed_loss(state, cfg_kw, pool_path):
    from diffpy_diffusion.backends.diffusion.model import CrystalDiffusionModel, ModelConfig
    from diffpy_diffusion.backends.diffusion.train import PoolTensors, TrainConfig, compute_loss

    cfg = TrainConfig(**cfg_kw)
    model = CrystalDiffusionModel(ModelConfig(hidden=cfg.hidden, layers=cfg.layers, n_freq=cfg.n_freq,
                                              cond_dim=cfg.hidden))
    if state is not None:
        model.load_state_dict(state)
    pool = PoolTensors(pool_path, "cpu")
    proc = Process()
    total = 0.0
    with torch.no_grad():
        for s in range(0, 64, 32):
            idx = torch.arange(s, s + 32)
            b = pool.batch(idx)
            g = torch.Generator().manual_seed(s)
            t = (torch.arange(32).float() + 0.5) / 32
            l1, l2 = compute_loss(model, proc, b, cfg, g, t=t, drop=torch.zeros(32, dtype=torch.bool))
            total += float(l1 + l2)
    return total / 2


def test_sampling_forward_equals_the_training_forward():
    """The message layer's in-place sampling path (no autograd) computes the same function as
    the plain one training differentiates, on cells of mixed sizes (padded atoms masked out)."""
    from diffpy_diffusion.backends.diffusion.model import Denoiser, ModelConfig

    torch.manual_seed(0)
    net = Denoiser(ModelConfig(hidden=32, layers=2, n_freq=3, time_dim=16, cond_dim=8)).eval()
    B, N = 5, 7
    numbers = torch.randint(1, 90, (B, N))
    frac, lattice = torch.rand(B, N, 3), torch.randn(B, 3, 3)
    t, cond = torch.rand(B), torch.randn(B, 8)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    train_l, train_f = net(numbers, frac, lattice, t, cond, mask)
    with torch.no_grad():
        sample_l, sample_f = net(numbers, frac, lattice, t, cond, mask)
        # padding must not leak into real atoms: the same cell alone, unpadded
        alone_l, alone_f = net(numbers[3:4, :2], frac[3:4, :2], lattice[3:4], t[3:4], cond[3:4], mask[3:4, :2])
    assert torch.allclose(sample_l, train_l.detach(), atol=1e-5)
    assert torch.allclose(sample_f, train_f.detach(), atol=1e-5)
    assert torch.allclose(alone_f, sample_f[3:4, :2], atol=1e-5) and torch.allclose(alone_l, sample_l[3:4], atol=1e-5)
    assert train_f.requires_grad  # the training path still builds its graph


def test_tiny_model_trains_and_loss_falls(tiny_pool, tmp_path):
    from diffpy_diffusion.backends.diffusion.train import main

    kw = dict(TINY, data=str(tiny_pool), out=str(tmp_path / "run"), steps=50, seed=3)
    torch.manual_seed(3)
    from diffpy_diffusion.backends.diffusion.model import CrystalDiffusionModel, ModelConfig

    init = CrystalDiffusionModel(ModelConfig(hidden=32, layers=1, n_freq=4, cond_dim=32)).state_dict()
    before = _fixed_loss(init, kw, tiny_pool)
    summary = main(**kw)
    assert summary["step"] == 50
    ck = ckpt.load_checkpoint(tmp_path / "run" / "last.pt", with_training_state=True)
    after = _fixed_loss(ck["model"], kw, tiny_pool)
    assert after < 0.85 * before, (before, after)
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss") and len(log) > 3


def test_checkpoint_round_trip_resumes_at_same_step(tiny_pool, tmp_path):
    from diffpy_diffusion.backends.diffusion.train import main

    kw = dict(TINY, data=str(tiny_pool), out=str(tmp_path / "run"), seed=1, log_every=1)
    main(steps=3, **kw)
    ck = ckpt.load_checkpoint(tmp_path / "run" / "last.pt", with_training_state=True)
    assert ck["step"] == 3 and ck["config"]["model"]["hidden"] == 32
    assert set(ck["model"]) == set(ck["ema"]) and ck["optim"] is not None
    summary = main(steps=5, resume=True, **kw)
    assert summary["step"] == 5
    steps = [int(r.split(",")[0]) for r in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
             if r.split(",")[2]]
    assert steps == [1, 2, 3, 4, 5]  # continued at step 4, nothing repeated
    ck2 = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck2["step"] == 5


def test_resume_keeps_a_fine_tuned_pdf_encoder_frozen(tiny_pool, tmp_path):
    """train --resume of weights that carry a PDF encoder (pdf_adapter.py) trains the rest and keeps it."""
    from diffpy_diffusion.backends.diffusion.model import CrystalDiffusionModel, ModelConfig
    from diffpy_diffusion.backends.diffusion.train import main

    kw = dict(TINY, data=str(tiny_pool), out=str(tmp_path / "run"), seed=1)
    main(steps=2, **kw)
    last = tmp_path / "run" / "last.pt"
    ck = ckpt.load_checkpoint(last, with_training_state=True)
    torch.manual_seed(5)
    pdf = CrystalDiffusionModel(ModelConfig(hidden=32, layers=1, n_freq=4, cond_dim=32, pdf_encoder=True)).pdf_encoder
    enc = {f"pdf_encoder.{k}": v for k, v in pdf.state_dict().items()}
    cfg = ck["config"]
    cfg["model"]["pdf_encoder"] = True
    ckpt.save_checkpoint(last, config=cfg, step=ck["step"], epoch=ck["epoch"], ema={**ck["ema"], **enc},
                         model=ck["model"], optim=ck["optim"], rng=ck["rng"], meta=ck["meta"])
    main(steps=4, resume=True, **kw)
    out = ckpt.load_checkpoint(last)
    assert out["step"] == 4 and out["config"]["model"]["pdf_encoder"] is True
    for k, v in enc.items():
        assert torch.equal(out["ema"][k], v), k
    assert not torch.equal(out["ema"]["denoiser.inp.weight"], ck["ema"]["denoiser.inp.weight"])


def test_resume_without_checkpoint_is_clear(tmp_path, tiny_pool):
    from diffpy_diffusion.backends.diffusion.train import main

    with pytest.raises(CheckpointError, match="nothing to resume"):
        main(steps=1, resume=True, **dict(TINY, data=str(tiny_pool), out=str(tmp_path / "none")))


def test_ddp_two_processes_gloo_keep_replicas_equal(tiny_pool, tmp_path):
    code = (
        "import json,sys; from diffpy_diffusion.backends.diffusion.train import main; "
        f"s=main(data={str(tiny_pool)!r}, out={str(tmp_path / 'ddp')!r}, steps=4, hidden=32, layers=1, n_freq=4, "
        "batch_size=8, amp=False, val_fraction=0.0, progress='none', ckpt_every=1e9, threads=1, device='cpu'); "
        # one file per rank: two processes printing to one pipe interleave their lines
        "import os,pathlib; pathlib.Path(f\"result_{os.environ['RANK']}.txt\").write_text("
        "f\"{s['world']} {s['replica_max_abs_diff']}\")"
    )
    script = tmp_path / "ddp_run.py"
    script.write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [p.read_text().split() for p in sorted(tmp_path.glob("result_*.txt"))]
    assert len(res) == 2, r.stdout[-2000:]
    for world, diff in res:
        assert world == "2" and float(diff) == 0.0


# ----------------------------------------------------------------------------- checkpoint safety
def test_corrupt_and_foreign_checkpoints_raise(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(CheckpointError, match="bad.pt"):
        ckpt.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign"):
        ckpt.load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_MARKER",))


def test_malicious_pickle_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "payload": _Evil()}, evil)
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(evil)
    assert not (tmp_path / "EVIL_MARKER").exists()


# ----------------------------------------------------------------------------- sampling
def _obs(composition, **kw):
    from diffpy_diffusion.types import Observation

    q = np.linspace(0.5, 5.7, 600)
    y = np.exp(-((q - 2.0) ** 2) / 0.002) + 0.6 * np.exp(-((q - 2.9) ** 2) / 0.002) + 0.01
    return Observation(kind="xrd", x=q, y=y, x_kind="q", composition=composition, wavelength=1.5406, size_nm=5, **kw)


def _check_structures(props, composition_formula, per_fu):
    from pymatgen.core import Composition

    target = Composition(composition_formula).reduced_composition
    for p in props:
        s = p.structure
        assert s.composition.reduced_composition == target
        assert len(s) % per_fu == 0 and len(s) <= 20
        assert np.isfinite(s.lattice.matrix).all() and s.volume > 0
        d = s.distance_matrix + np.eye(len(s)) * 1e9
        assert d.min() >= 0.5 - 1e-9


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
@pytest.mark.parametrize("guided", [False, True])
def test_sampling_gives_exact_composition_and_sane_cells(guided):
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    be = DiffusionBackend(steps=5, physics_guidance=guided, guide_frac=0.5)
    props = be.sample(_obs("SrTiO3"), 4, seed=0)
    assert len(props) == 4
    _check_structures(props, "SrTiO3", 5)
    again = be.sample(_obs("SrTiO3"), 4, seed=0)
    assert np.allclose(props[0].structure.lattice.matrix, again[0].structure.lattice.matrix)  # seeded


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
def test_network_chunks_leave_the_samples_unchanged(monkeypatch):
    """Large cells go through the network a few at a time (speed); the sampler's batch, its random
    numbers and so its samples are those of one pass (to float32 rounding)."""
    from diffpy_diffusion.backends.diffusion import backend as B

    def sample():
        return B.DiffusionBackend(steps=5).sample(_obs("SrTiO3", z=2), 5, seed=3)

    monkeypatch.setattr(B, "CHUNK_ABOVE_ATOMS", 1000)
    whole = sample()
    monkeypatch.setattr(B, "CHUNK_ABOVE_ATOMS", 0)
    monkeypatch.setattr(B, "CHUNK_CELLS", 2)
    chunked = sample()
    for a, b in zip(whole, chunked, strict=True):
        assert len(a.structure) == len(b.structure) == 10
        np.testing.assert_allclose(a.structure.lattice.matrix, b.structure.lattice.matrix, atol=1e-3)
        d = a.structure.frac_coords - b.structure.frac_coords
        assert np.abs(d - np.round(d)).max() < 1e-4  # on the torus


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
def test_unseen_element_warns_and_atom_cap_is_clear():
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    be = DiffusionBackend(steps=3, physics_guidance=False)
    be._load()
    unseen = next(z for z in range(3, 90) if z not in be._elements)
    from pymatgen.core import Element

    el = Element.from_Z(unseen).symbol
    with pytest.warns(UserWarning, match=f"{el}.*never occur in the training data"):
        props = be.sample(_obs(f"{el}O"), 2, seed=1)
    assert len(props) == 2
    with pytest.raises(ResourceLimitError, match="max-atoms"):
        be.sample(_obs("Ca11O10"), 2, seed=1)


def test_backend_registered_through_hook():
    from diffpy_diffusion.plugins import list_backends

    names = [b["name"] for b in list_backends()]
    assert "diffusion" in names


from diffpy_diffusion.testing import BackendContract  # noqa: E402


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
class TestDiffusionContract(BackendContract):
    """The plugin contract every backend passes; a short schedule keeps it to seconds."""

    backend_name = "diffusion"
    n = 2
    options = {"steps": 3, "corrector_steps": 0, "adapt_z": 0.0}


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
def test_pdf_observation_samples_with_null_condition():
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend
    from diffpy_diffusion.types import Observation

    r = np.linspace(1, 20, 400)
    obs = Observation(kind="pdf", x=r, y=np.sin(2.5 * r) * np.exp(-r / 10), x_kind="r", composition="NaCl")
    props = DiffusionBackend(steps=3).sample(obs, 2, seed=0)
    _check_structures(props, "NaCl", 2)


# ----------------------------------------------------------------------------- Z allocation
def test_allocate_follows_weights_and_keeps_the_total():
    from diffpy_diffusion.backends.diffusion.backend import allocate, z_prior

    zs = [1, 2, 3, 4]
    prior = z_prior(zs, 2)
    assert prior.sum() == pytest.approx(1.0) and (prior > 0).all()
    for n in (1, 7, 64, 129):
        assert sum(k for _, k in allocate(n, zs, 2)) == n
        assert sum(k for _, k in allocate(n, zs, 2, weights=[0.0, 1.0, 0.0, 3.0])) == n
    got = dict(allocate(40, zs, 2, weights=[0.0, 1.0, 0.0, 3.0]))
    assert got == {2: 10, 4: 30}


def _rocksalt_pattern(a=5.64):
    """PXRD of rock-salt NaCl (pymatgen's calculator: an independent forward model)."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.types import Observation

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    pat = XRDCalculator(wavelength=1.54184).get_pattern(s, two_theta_range=(10, 90))
    tt = np.linspace(10, 90, 1600)
    y = np.zeros_like(tt)
    for x0, h in zip(pat.x, pat.y):
        y += h * np.exp(-0.5 * ((tt - x0) / 0.15) ** 2)
    obs = Observation(kind="xrd", x=tt, y=y / y.max() + 0.01, x_kind="2theta", composition={"Na": 1, "Cl": 1},
                      wavelength=1.54184, size_nm=10)
    return s, obs


def test_z_evidence_prefers_the_cell_size_that_fits_the_pattern():
    """A pilot holding the true primitive cell (Z = 1) and wrong-size cells: Z = 1 wins, the others are damped."""
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend
    from diffpy_diffusion.types import Proposal

    s, obs = _rocksalt_pattern()
    prim = s.get_primitive_structure()
    wrong2 = Structure(Lattice.tetragonal(3.1, 9.0), ["Na", "Na", "Cl", "Cl"],
                       [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0.25], [0.5, 0.5, 0.75]])
    # (a hexagonal Z = 3 cell would not do: ABC stacking along [111] *is* rock salt)
    wrong3 = Structure(Lattice.orthorhombic(3.3, 4.4, 14.0), ["Na"] * 3 + ["Cl"] * 3,
                       [[0, 0, i / 6] if i % 2 == 0 else [0.5, 0.5, i / 6] for i in range(6)])
    pilot = [Proposal(structure=st, backend="diffusion", provenance={"z": z})
             for st, z in ((prim, 1), (wrong2, 2), (wrong3, 3))]
    ev, _ = DiffusionBackend(adapt_z_temperature=0.05)._z_evidence(obs, pilot, [1, 2, 3, 4])
    assert ev[0] == pytest.approx(1.0)
    assert ev[1] < 0.5 and ev[2] < 0.5
    assert ev[3] == 1.0  # not sampled by the pilot: no evidence either way
    assert pilot[0].structure == prim  # the pilot's own structures are not strained by the screen


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
def test_adaptive_z_round_keeps_count_composition_and_seed():
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    _s, obs = _rocksalt_pattern()
    be = DiffusionBackend(steps=4, adapt_z=0.5)
    props = be.sample(obs, 12, seed=3)
    assert len(props) == 12
    _check_structures(props, "NaCl", 2)
    assert all("z_evidence" in p.provenance for p in props[:6])  # the pilot records what steered round two
    again = be.sample(obs, 12, seed=3)
    assert [p.provenance["z"] for p in props] == [p.provenance["z"] for p in again]
    with pytest.raises(ValueError, match="adapt_z"):
        DiffusionBackend(adapt_z=1.5)


def test_physics_guidance_option_text_is_parsed_not_truthy():
    """``-O diffusion.physics_guidance=false`` arrives as text; bool("false") would switch it on."""
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    assert DiffusionBackend(physics_guidance="false").physics_guidance is False
    assert DiffusionBackend(physics_guidance="true").physics_guidance is True
    with pytest.raises(ValueError, match="physics_guidance"):
        DiffusionBackend(physics_guidance="sometimes")


# --------------------------------------------------------------------------- template seeds (issue 17 lever 2)
@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
def test_a_seed_started_near_t0_comes_back_as_the_template():
    """The forward process vanishes as t → 0: a rock-salt seed started at t = 0.02 is denoised in one
    step and stays rock salt (StructureMatcher against the analytic structure), while the same seed
    started at t = 1 forgets it (no coordinates or cell carried over beyond what noise leaves)."""
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend
    from diffpy_diffusion.backends.diffusion.data import canonical_arrays
    from diffpy_diffusion.backends.diffusion.process import normalise_lattice

    rs = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    lat, frac, numbers = canonical_arrays(rs.get_primitive_structure())
    be = DiffusionBackend(steps=50, corrector_steps=0)
    be._load()
    c = be._model.encode(torch.zeros(1, *_pattern_shape()), torch.tensor([True]))
    init = (normalise_lattice(torch.as_tensor(lat)[None], torch.tensor([len(numbers)])), torch.as_tensor(frac)[None])
    gen = torch.Generator().manual_seed(0)
    out_lat, out_frac = be._reverse([[int(z) for z in numbers]], c, None, None, gen, init=init, t_start=0.02)
    back = Structure(out_lat[0].numpy(), [int(z) for z in numbers], out_frac[0].numpy())
    assert StructureMatcher().fit(back, rs)
    assert np.allclose(back.lattice.abc, rs.get_primitive_structure().lattice.abc, rtol=0.02)


def _pattern_shape():
    from diffpy_diffusion.backends.diffusion.conditioning import N_CHANNELS, Q_GRID_POINTS

    return N_CHANNELS, Q_GRID_POINTS


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
def test_seeded_sampling_keeps_count_composition_provenance_and_exclusions():
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    _s, obs = _rocksalt_pattern()
    be = DiffusionBackend(steps=4, seed_fraction=0.5, seed_t="0.3,0.5", seed_templates=2, library="pool")
    props = be.sample(obs, 8, seed=3)
    assert len(props) == 8
    _check_structures(props, "NaCl", 2)
    seeded = [p for p in props if "seeded_from" in p.provenance]
    assert len(seeded) == 4
    assert sorted({p.provenance["seed_t"] for p in seeded}) == [0.3, 0.5]
    used = {p.provenance["seeded_from"] for p in seeded}
    assert len(used) == 2
    again = be.sample(obs, 8, seed=3)
    assert [p.provenance.get("seeded_from") for p in props] == [p.provenance.get("seeded_from") for p in again]
    assert np.allclose(props[0].structure.lattice.matrix, again[0].structure.lattice.matrix)
    # what evaluate leaves out (the target's own id) never seeds
    other = DiffusionBackend(steps=4, seed_fraction=0.5, seed_templates=2, library="pool", exclude=",".join(used))
    assert not used & {p.provenance.get("seeded_from") for p in other.sample(obs, 8, seed=3)}


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped weights not present")
def test_seeding_without_a_template_samples_everything_from_noise():
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    be = DiffusionBackend(steps=3, corrector_steps=0, adapt_z=0.0, seed_fraction=0.5, library="pool")
    props = be.sample(_obs("Na3Cl14"), 3, seed=0)  # no 3:14 type in the library
    assert len(props) == 3 and not any("seeded_from" in p.provenance for p in props)


def test_seed_options_are_checked():
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    assert DiffusionBackend(seed_t="0.2, 0.4").seed_t == [0.2, 0.4]
    assert DiffusionBackend(seed_t=0.7).seed_t == [0.7]
    with pytest.raises(ValueError, match="seed_t"):
        DiffusionBackend(seed_t="0,0.5")
    with pytest.raises(ValueError, match="seed_fraction"):
        DiffusionBackend(seed_fraction=2)
