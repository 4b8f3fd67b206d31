"""The PDF encoder: the diffusion model conditioned on a G(r), fine-tuned on simulated nanoparticle PDFs.

The shipped network's pattern encoder was trained on PXRD only.  A PDF reaches it as the powder
pattern its G(r) implies (:func:`conditioning.pdf_as_powder`), which differs from every training
pattern: Lorch-window peak shapes, termination at Qmax, a particle envelope, an r range that sets
the peak width, the removed baseline.  This module trains a second encoder of the same
architecture, ``pdf_encoder``, initialised from the PXRD encoder, on the implied patterns of random
PDFs simulated from the training cells, with the denoiser frozen (the gradient of the DiffCSP loss
flows through it into the encoder only).  PXRD observations keep the PXRD encoder: their samples
are bit-identical with and without the PDF encoder in the checkpoint.

Two steps, each resumable from its output file::

    python -m diffpy_diffusion.backends.diffusion.pdf_adapter build --out runs/pdf/set.npz --structures 8000
    python -m diffpy_diffusion.backends.diffusion.pdf_adapter train --set runs/pdf/set.npz --out runs/pdf/ckpt.pt

``build`` draws training cells from the training pool (never its validation split, never an
evaluation ``material_id``), simulates ``--per-structure`` random PDFs of each
(:func:`random_pdf_settings`, :func:`simulate_pdf`) and stores their implied powder patterns;
the validation split's first ``--val`` cells get one each.  ``train`` fine-tunes and writes a
checkpoint holding the whole model (the PXRD part unchanged) with ``config["model"]["pdf_encoder"]``
set.  The validation loss is printed for the PDF encoder and, as references, for the PXRD encoder
on the same implied patterns and for the "no pattern" embedding.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Particle diameters of the training PDFs, Å (1.5–10 nm, the issue's range), log-uniform.
DIAMETER_RANGE_A = (15.0, 100.0)
#: Fraction of training PDFs without a particle envelope (bulk crystals, long r ranges).
P_BULK = 0.15
#: Qmax of the training PDFs, Å⁻¹ (lab Ag/Mo sources to synchrotron rapid-acquisition PDF).
QMAX_RANGE = (14.0, 30.0)
#: Instrumental damping (PDFgui's qdamp, Å⁻¹): laboratory and synchrotron values.
QDAMP_RANGE = (0.01, 0.07)
#: Instrumental broadening qbroad, Å⁻¹, on half the PDFs.
QBROAD_MAX = 0.03
#: Isotropic displacement of every atom, Å².
UISO_RANGE = (0.003, 0.02)
#: Lower and upper end of the r range, Å, and the r steps real files use.
RMIN_RANGE = (0.5, 2.0)
RMAX_RANGE = (20.0, 50.0)
R_STEPS = (0.01, 0.02, 0.05)
#: Noise: band-limited Gaussian, standard deviation up to this fraction of max |G(r)|.
NOISE_MAX = 0.03
#: On this fraction of PDFs the r grid is off by a relative error of standard deviation R_STRETCH_SD
#: (a calibration error of the sample-detector distance shows up as a stretched r axis).
P_R_STRETCH = 0.2
R_STRETCH_SD = 0.005
#: Fraction of neutron PDFs (b_c weights instead of Z).
P_NEUTRON = 0.15


@dataclass
class PdfSettings:
    """Measurement settings of one simulated PDF (Å, Å⁻¹, Å²)."""

    diameter: float | None
    qmax: float
    qdamp: float
    qbroad: float
    uiso: float
    rmin: float
    rmax: float
    rstep: float
    noise: float
    r_stretch: float
    radiation: str


def random_pdf_settings(rng: np.random.Generator) -> PdfSettings:
    """One draw of the randomisation policy of the training PDFs (the module constants)."""
    lo, hi = DIAMETER_RANGE_A
    diameter = None if rng.random() < P_BULK else float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return PdfSettings(
        diameter=diameter,
        qmax=float(rng.uniform(*QMAX_RANGE)),
        qdamp=float(rng.uniform(*QDAMP_RANGE)),
        qbroad=float(rng.uniform(0.0, QBROAD_MAX)) if rng.random() < 0.5 else 0.0,
        uiso=float(rng.uniform(*UISO_RANGE)),
        rmin=float(rng.uniform(*RMIN_RANGE)),
        rmax=float(rng.uniform(*RMAX_RANGE)),
        rstep=float(rng.choice(R_STEPS)),
        noise=float(rng.uniform(0.0, NOISE_MAX)),
        r_stretch=float(rng.normal(0.0, R_STRETCH_SD)) if rng.random() < P_R_STRETCH else 0.0,
        radiation="neutron" if rng.random() < P_NEUTRON else "xray",
    )


def _composition(numbers) -> dict[str, float]:
    from pymatgen.core import Element

    comp: dict[str, float] = {}
    for z in numbers:
        el = Element.from_Z(int(z)).symbol
        comp[el] = comp.get(el, 0.0) + 1.0
    return comp


def simulate_pdf(lattice, frac, numbers, settings: PdfSettings, rng: np.random.Generator):
    """A G(r) of a crystal (periodic, times a sphere envelope) as a measured ``.gr`` would give it.

    :func:`physics.pdf.pdf_gr` with the settings' Qmax, qdamp, qbroad, Uiso and ``spdiameter``; then
    band-limited noise and, when ``settings.r_stretch`` is set, the r axis relabelled as
    ``r (1 + r_stretch)`` (what a miscalibrated distance does).  Returns an
    :class:`~diffpy_diffusion.types.Observation` (``kind="pdf"``).
    """
    import torch

    from ...physics.crystal import CrystalBatch
    from ...physics.pdf import band_limit, pdf_gr
    from ...types import Observation

    st = settings
    r = np.arange(st.rmin, st.rmax + 0.5 * st.rstep, st.rstep)
    batch = CrystalBatch.from_arrays([lattice], [frac], [numbers], uisos=st.uiso)
    with torch.no_grad():
        g = pdf_gr(batch, r, qmax=st.qmax, qdamp=st.qdamp, qbroad=st.qbroad, spdiameter=st.diameter,
                   radiation=st.radiation)[0].numpy()
    if st.noise > 0:
        white = band_limit(rng.normal(0.0, 1.0, size=r.shape), st.rstep, st.qmax)
        g = g + white * (st.noise * float(np.max(np.abs(g)) or 1.0) / (float(np.std(white)) or 1.0))
    return Observation(kind="pdf", x=r * (1.0 + st.r_stretch), y=g, x_kind="r", composition=_composition(numbers),
                       radiation=st.radiation, qmax=st.qmax, qdamp=st.qdamp,
                       size_nm=st.diameter / 10.0 if st.diameter else None)


# ----------------------------------------------------------------------------- training set
MAX_ATOMS = 20


def build_training_set(out: str | os.PathLike, *, n_structures: int = 8000, per_structure: int = 2,
                       n_val: int = 256, seed: int = 0, data=None, progress: bool = True) -> Path:
    """Simulate the fine-tuning set and save it as ``.npz`` (see the module docstring).

    Keys: ``lattice`` (S,3,3) Å, ``frac`` (S,20,3), ``numbers`` (S,20) (0 = padding), ``natoms`` (S,),
    ``pattern`` (S, K, 512) float16 (the implied powder pattern, channel y), and the same with a
    ``val_`` prefix for the validation cells (K = 1), plus ``ids``/``val_ids``.
    """
    from ...datasets import iter_training_pool, split_ids
    from .conditioning import canonical_pattern
    from .data import canonical_arrays

    rng = np.random.default_rng(seed)
    pool = [e for e in iter_training_pool(data=data)]
    is_val = split_ids([e.material_id for e in pool])
    train = [e for e, v in zip(pool, is_val) if not v]
    val = [e for e, v in zip(pool, is_val) if v][:n_val]
    pick = rng.permutation(len(train))[:n_structures]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def run(entries, k, label):
        lat = np.zeros((len(entries), 3, 3), np.float32)
        fr = np.zeros((len(entries), MAX_ATOMS, 3), np.float32)
        nu = np.zeros((len(entries), MAX_ATOMS), np.int16)
        na = np.zeros(len(entries), np.int16)
        pat = np.zeros((len(entries), k, 512), np.float16)
        ids, keep = [], []
        t0 = time.time()
        for i, e in enumerate(entries):
            try:
                # the frozen denoiser was trained on Niggli-reduced cells in one canonical orientation
                # (data.canonical_arrays); a raw CIF cell here teaches the encoder to undo that instead
                la, f, z = canonical_arrays(e.structure())
                if len(z) > MAX_ATOMS:
                    continue
                for j in range(k):
                    obs = simulate_pdf(la, f, z, random_pdf_settings(rng), rng)
                    pat[i, j] = canonical_pattern(obs)[0]
            except Exception as exc:  # noqa: BLE001 - a cell the physics rejects is skipped, and said
                print(f"skip {e.material_id}: {exc}", flush=True)
                continue
            lat[i], fr[i, : len(z)], nu[i, : len(z)], na[i] = la, f, z, len(z)
            ids.append(e.material_id)
            keep.append(i)
            if progress and (i + 1) % 250 == 0:
                rate = (i + 1) / (time.time() - t0)
                print(f"{label} {i + 1}/{len(entries)} ({rate:.1f} cells/s, "
                      f"{(len(entries) - i - 1) / rate / 60:.1f} min left)", flush=True)
        keep = np.array(keep, int)
        return lat[keep], fr[keep], nu[keep], na[keep], pat[keep], np.array(ids)

    v = run(val, 1, "val")
    t = run([train[i] for i in pick], per_structure, "train")
    names = ("lattice", "frac", "numbers", "natoms", "pattern", "ids")
    arrays = {**dict(zip(names, t)), **{f"val_{k}": a for k, a in zip(names, v)}, "seed": np.int64(seed)}
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- fine-tuning
def _inputs(y):
    """Encoder input (B, 3, 512) from stored implied patterns y (B, 512): y, √y, no G(r) channel."""
    import torch

    y = y.float().clamp(min=0)
    return torch.stack([y, y.sqrt(), torch.zeros_like(y)], dim=1)


def _batch(z, idx, k=None):
    import torch

    n = int(z["natoms"][idx].max())
    j = torch.zeros(len(idx), dtype=torch.long) if k is None else k
    return dict(numbers=z["numbers"][idx, :n].long(), frac=z["frac"][idx, :n], lattice=z["lattice"][idx],
                natoms=z["natoms"][idx].long(), mask=torch.arange(n)[None] < z["natoms"][idx, None],
                pattern=_inputs(z["pattern"][idx, j]))


def _loss(model, process, b, cond, generator):
    """The training loss (:func:`train.compute_loss`) with ``cond`` as the condition, in fp32."""
    from .train import TrainConfig, compute_loss

    l_lat, l_f = compute_loss(model, process, b, TrainConfig(amp=False), generator, cond=cond)
    return l_lat + l_f


def validation_losses(model, process, val, *, batch_size: int = 64, seed: int = 1234) -> dict[str, float]:
    """Mean DiffCSP loss on the validation cells with fixed noise, for three conditions.

    ``pdf``: the PDF encoder on the implied patterns; ``xrd_encoder``: the PXRD encoder on the same
    inputs (what sampling did before); ``null``: the "no pattern" embedding (``--no-condition``).
    """
    import torch

    out = {}
    order = np.argsort(val["natoms"].numpy(), kind="stable")
    for name in ("pdf", "xrd_encoder", "null"):
        if name == "pdf" and getattr(model, "pdf_encoder", None) is None:
            continue
        g = torch.Generator().manual_seed(seed)
        tot, n = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                idx = torch.as_tensor(order[s : s + batch_size])
                b = _batch(val, idx)
                drop = torch.full((len(idx),), name == "null")
                cond = model.encode(b["pattern"], drop, kind="pdf" if name == "pdf" else "xrd")
                tot += float(_loss(model, process, b, cond, g)) * len(idx)
                n += len(idx)
        out[name] = tot / max(n, 1)
    return out


def _load_set(path):
    import torch

    with np.load(path, allow_pickle=False) as zf:
        z = {k: zf[k] for k in zf.files}

    def tens(prefix):
        floats = ("lattice", "frac", "pattern")
        return {k: torch.as_tensor(z[prefix + k].astype(np.float32 if k in floats else np.int64))
                for k in ("lattice", "frac", "numbers", "natoms", "pattern")}

    return tens(""), tens("val_")


def finetune(set_path, out, *, base=None, minutes: float = 30.0, batch_size: int = 64, lr: float = 3e-4,
             ema_decay: float = 0.995, val_every: float = 300.0, seed: int = 0, resume: bool = False,
             threads: int = 0) -> dict:
    """Fine-tune the PDF encoder (denoiser and PXRD encoder frozen); write ``out`` (a full checkpoint).

    ``base`` is the checkpoint to start from (default: the shipped weights).  Every ``val_every``
    seconds the validation losses are printed and the checkpoint (EMA of the PDF encoder) is saved
    when its validation loss is the best so far.  ``resume`` continues from ``out``.
    Returns the final validation losses and the compute spent.
    """
    import copy

    import torch

    from .backend import DEFAULT_WEIGHTS
    from .checkpoint import load_checkpoint, save_checkpoint
    from .model import CrystalDiffusionModel, ModelConfig
    from .process import Process, ProcessConfig
    from .train import EMA, epoch_batches

    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    src = out if resume and out.is_file() else Path(base or DEFAULT_WEIGHTS)
    ck = load_checkpoint(src)
    cfg = copy.deepcopy(ck["config"])
    mcfg = dict(cfg["model"])
    had_pdf = bool(mcfg.get("pdf_encoder"))
    mcfg["pdf_encoder"] = True
    model = CrystalDiffusionModel(ModelConfig(**mcfg))
    state = dict(ck["ema"])
    if not had_pdf:  # start from the PXRD encoder
        state.update({f"pdf_encoder.{k[len('encoder.'):]}": v.clone() for k, v in ck["ema"].items()
                      if k.startswith("encoder.")})
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.pdf_encoder.parameters())
    for p in params:
        p.requires_grad_(True)
    model.eval()  # no dropout/batch statistics anywhere; eval keeps the frozen parts as they are
    process = Process(ProcessConfig(**cfg["process"]))
    train, val = _load_set(set_path)
    meta = dict(ck.get("meta") or {})
    spent = float(meta.get("pdf_encoder_cpu_s", 0.0)) if resume and had_pdf else 0.0
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema = EMA(model.pdf_encoder, ema_decay)
    g = torch.Generator().manual_seed(seed + int(spent))
    rng = np.random.default_rng(seed + int(spent))
    K = train["pattern"].shape[1]
    nat = train["natoms"].numpy()
    base_losses = validation_losses(model, process, val)
    print("validation loss at start:", {k: round(v, 4) for k, v in base_losses.items()}, flush=True)
    best = base_losses.get("pdf", math.inf)
    cfg["model"] = mcfg

    def save(step_now, vals, cpu):
        meta.update(pdf_encoder_cpu_s=round(cpu, 1), pdf_encoder_steps=step_now, pdf_encoder_val=vals,
                    pdf_encoder_set=str(Path(set_path).name),
                    pdf_encoder_base_val={k: round(v, 5) for k, v in base_losses.items()})
        save_checkpoint(out, config=cfg, step=int(ck["step"]), epoch=int(ck.get("epoch", 0)),
                        ema=model.state_dict(), meta=meta)

    if not (resume and had_pdf):  # the starting point (the PXRD encoder's copy) is the first "best"
        save(0, {k: round(v, 5) for k, v in base_losses.items()}, spent)
    t_start, c_start, last_val, step = time.time(), time.process_time(), time.time(), 0
    budget = 60.0 * minutes
    history = []
    done = False
    while not done:
        # shuffled batches of similar atom counts (the cost grows as atoms²), as train.py draws them
        for bi in epoch_batches(nat, batch_size, rng, chunk=16):
            idx = torch.as_tensor(bi)
            b = _batch(train, idx, torch.as_tensor(rng.integers(0, K, len(idx))))
            frac_done = min(1.0, (time.time() - t_start) / budget)
            for grp in opt.param_groups:  # warm-up, then cosine to 5 %
                grp["lr"] = lr * min(1.0, (step + 1) / 100) * (0.05 + 0.475 * (1 + math.cos(math.pi * frac_done)))
            loss = _loss(model, process, b, model.pdf_encoder(b["pattern"]), g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.update(model.pdf_encoder, step)
            step += 1
            if step % 50 == 0:
                print(f"step {step} loss {float(loss.detach()):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                      f"{time.time() - t_start:.0f}s", flush=True)
            now = time.time()
            done = now - t_start >= budget
            if now - last_val >= val_every or done:
                last_val = now
                live = {k: v.detach().clone() for k, v in model.pdf_encoder.state_dict().items()}
                model.pdf_encoder.load_state_dict(ema.state)
                vl = validation_losses(model, process, val)
                cpu = spent + time.process_time() - c_start
                history.append({"step": step, "cpu_s": round(cpu, 1), **{k: round(v, 5) for k, v in vl.items()}})
                print("validation:", history[-1], flush=True)
                if vl["pdf"] < best:
                    best = vl["pdf"]
                    save(step, history[-1], cpu)
                    print(f"saved {out} (validation loss {best:.4f})", flush=True)
                model.pdf_encoder.load_state_dict(live)
            if done:
                break
    return {"steps": step, "best_val": best, "start_val": base_losses, "history": history,
            "cpu_s": spent + time.process_time() - c_start}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m diffpy_diffusion.backends.diffusion.pdf_adapter",
                                 description="Fine-tune the diffusion model's PDF encoder (see the module docstring).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="simulate the fine-tuning set (needs $DIFFPY_DIFFUSION_DATA)")
    b.add_argument("--out", required=True)
    b.add_argument("--structures", type=int, default=8000, help="training cells (default 8000)")
    b.add_argument("--per-structure", type=int, default=2, help="random PDFs per cell (default 2)")
    b.add_argument("--val", type=int, default=256, help="validation-split cells (default 256)")
    b.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="fine-tune the PDF encoder on a built set")
    t.add_argument("--set", required=True, dest="set_path")
    t.add_argument("--out", required=True, help="checkpoint to write (the best by validation loss)")
    t.add_argument("--base", default=None, help="checkpoint to start from (default: the shipped weights)")
    t.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (default 30)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--val-every", type=float, default=300.0, help="seconds between validations (default 300)")
    t.add_argument("--resume", action="store_true", help="continue from --out")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        print(build_training_set(a.out, n_structures=a.structures, per_structure=a.per_structure, n_val=a.val,
                                 seed=a.seed))
    else:
        r = finetune(a.set_path, a.out, base=a.base, minutes=a.minutes, batch_size=a.batch_size, lr=a.lr,
                     val_every=a.val_every, resume=a.resume, threads=a.threads)
        print({k: v for k, v in r.items() if k != "history"})


if __name__ == "__main__":
    main()
